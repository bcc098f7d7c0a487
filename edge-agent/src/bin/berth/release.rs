//! `berth release …`: release documents.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_agent::release::{from_json, from_toml};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ReleaseCmd {
    /// Check a release document (TOML or JSON) and explain every problem with its field path.
    Validate {
        file: PathBuf,
        /// Also print the canonical JSON form that is signed and published.
        #[arg(long)]
        json: bool,
    },
    /// Sign a release for a fleet, push its images, and notify the devices.
    Publish(Box<crate::publish::PublishArgs>),
}

pub fn run(cmd: ReleaseCmd) -> Result<ExitCode> {
    match cmd {
        ReleaseCmd::Publish(a) => crate::publish::run(*a),
        ReleaseCmd::Validate { file, json } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = file.display().to_string();
            let release = if file.extension().is_some_and(|e| e == "json") {
                from_json(&name, &bytes)?
            } else {
                from_toml(&name, &String::from_utf8_lossy(&bytes))?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&release)?);
            } else {
                println!(
                    "{name}: valid release for fleet {} generation {} with {} workload(s)",
                    release.fleet,
                    release.generation,
                    release.workloads.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
