//! `berth agent publish`: a `berth-agent` build signed as the TUF target
//! `agent/berth-agent-<arch>`, with new snapshot and timestamp, and the
//! fleets notified. Devices with `[self_update]` install it into their
//! inactive slot, start it on trial, and keep it only if it reconnects,
//! reconciles and reports healthy in time.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_agent::release::document::Arch;
use berth_agent::selfupdate::{agent_target, check_agent_file};
use berth_trust::repo::{self, Repo};
use clap::{Args, Subcommand};

use crate::fleet::publish_retained;
use crate::publish::Announce;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Sign a berth-agent build for one architecture; devices try it and
    /// keep it only when it reports healthy.
    Publish(PublishArgs),
}

#[derive(Args)]
pub struct PublishArgs {
    /// The agent executable (built for --arch).
    file: PathBuf,
    /// The devices' architecture it is for.
    #[arg(long, value_parser = ["amd64", "arm64", "arm"])]
    arch: String,
    /// The TUF repository directory (`berth repo init`).
    #[arg(long)]
    repo: PathBuf,
    /// Private keys for the targets, snapshot and timestamp roles.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// The build's semantic version (X.Y.Z[-PRE][+BUILD]), signed in the
    /// target's metadata: devices install only a build newer than the one
    /// they run.
    #[arg(long)]
    version: String,
    /// Let devices install this build even over a newer (or the same)
    /// version: an explicit, signed downgrade.
    #[arg(long = "allow-downgrade")]
    allow_downgrade: bool,
    /// Notify this fleet (repeatable; needs --broker), else devices find
    /// the agent at their next periodic refresh.
    #[arg(long = "notify")]
    fleets: Vec<String>,
    #[command(flatten)]
    announce: Announce,
}

pub fn run(cmd: AgentCmd) -> Result<ExitCode> {
    match cmd {
        AgentCmd::Publish(a) => publish(a),
    }
}

fn publish(a: PublishArgs) -> Result<ExitCode> {
    let arch = match a.arch.as_str() {
        "amd64" => Arch::Amd64,
        "arm64" => Arch::Arm64,
        _ => Arch::Arm,
    };
    if !a.fleets.is_empty() && a.announce.broker.is_none() {
        bail!("--notify needs --broker (and --ca, --cert, --mqtt-key for TLS)");
    }
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(&a.file)
        .and_then(|f| f.take(64).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    if let Err(why) = check_agent_file(&head, arch) {
        bail!("{} is not an agent for {arch}: {why}", a.file.display());
    }
    let target = agent_target(arch);
    let repo_dir = Repo::open(&a.repo);
    if let Err(e) = semver::Version::parse(&a.version) {
        bail!(
            "--version {:?} is not a semantic version ({e}): give the build's version as X.Y.Z,              e.g. the workspace version it was built from",
            a.version
        );
    }
    let mut custom = serde_json::json!({ "version": a.version });
    if a.allow_downgrade {
        custom["allow_downgrade"] = serde_json::Value::Bool(true);
    }
    let sha = repo_dir.add_target("targets", &target, &a.file, Some(custom))?;
    let keys = crate::trust::private_keys(&a.keys)?;
    for r in repo::publish(&repo_dir, &keys, a.announce.expiries())? {
        println!("signed: {r}");
    }
    println!(
        "agent: {target} (sha256 {sha}) version {}{}",
        a.version,
        if a.allow_downgrade {
            ", downgrade allowed"
        } else {
            ""
        }
    );
    if let Some(b) = a.announce.broker() {
        let version = repo_dir
            .published("timestamp")?
            .context("the repository has no timestamp after publishing")?
            .signed["version"]
            .as_u64()
            .unwrap_or(0);
        for fleet in &a.fleets {
            let topic = a.announce.topic(fleet);
            let payload = serde_json::to_vec(&serde_json::json!({
                "timestamp_version": version,
                "agent": target,
            }))?;
            publish_retained(&b, &topic, payload)?;
            println!("notified: {topic} (timestamp version {version})");
        }
    }
    Ok(ExitCode::SUCCESS)
}
