//! `berth key …`, `berth repo …`, `berth tuf …`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum KeyCmd {}

#[derive(Subcommand)]
pub enum RepoCmd {}

#[derive(Args)]
pub struct TufArgs {}

pub fn key(cmd: KeyCmd) -> Result<ExitCode> {
    match cmd {}
}

pub fn repo(cmd: RepoCmd) -> Result<ExitCode> {
    match cmd {}
}

pub fn tuf(_args: TufArgs) -> Result<ExitCode> {
    bail!("the TUF client is not built yet")
}
