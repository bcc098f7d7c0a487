//! `berth image unpack`, `berth image build`: local image work.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum LocalCmd {}

pub fn run(cmd: LocalCmd) -> Result<ExitCode> {
    match cmd {}
}
