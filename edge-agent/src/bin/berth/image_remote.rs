//! `berth image push`, `berth image pull`: talking to registries.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum RemoteCmd {}

pub fn run(cmd: RemoteCmd) -> Result<ExitCode> {
    match cmd {}
}
