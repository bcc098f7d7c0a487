//! `berth device …`: enrollment on the device (`enroll`, `install-cert`)
//! and approval by the operator (`approve`, `list`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_agent::device::approve;
use berth_agent::device::directory::{Directory, Entry};
use berth_agent::device::enroll::{self, Files, Pinned, Request};
use clap::{Args, Subcommand};
use sha2::{Digest as _, Sha256};

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// On the device: create its identity and secrets keys (0600, in the
    /// state directory), pin the fleet's root.json, and write the signed
    /// enrollment request (with a CSR for the MQTT client certificate).
    Enroll(EnrollArgs),
    /// On the device: install the certificate `approve` issued (checked
    /// against the device's id and identity key).
    InstallCert(InstallArgs),
    /// On the operator's side: check an enrollment request, issue the
    /// device's MQTT client certificate with the fleet CA, record the device.
    Approve(ApproveArgs),
    /// The approved devices of a fleet directory.
    List(ListArgs),
}

#[derive(Args)]
pub struct ConfigArg {
    /// The agent's configuration (device id, fleet, state directory, root).
    #[arg(long, default_value = "/etc/berth/agent.toml")]
    config: PathBuf,
}

#[derive(Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The fleet's root.json to pin (default: trust.root of the configuration).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Where to write the request (give it to the operator).
    #[arg(short, long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The certificate (PEM) `berth device approve` issued.
    certificate: PathBuf,
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The device's enrollment request (`berth device enroll` output).
    request: PathBuf,
    /// The device id you approve (checked against the request).
    #[arg(long)]
    device: String,
    /// The fleet CA certificate and key (PEM) that the broker trusts.
    #[arg(long)]
    ca_cert: PathBuf,
    #[arg(long)]
    ca_key: PathBuf,
    /// The fleet directory: `devices.json` records approved devices.
    #[arg(long)]
    fleet_dir: PathBuf,
    /// Validity of the certificate in days.
    #[arg(long, default_value_t = 825)]
    days: u32,
    /// Where to write the certificate (default: DEVICE.pem).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Approve a new identity key for a device already approved.
    #[arg(long)]
    replace: bool,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    fleet_dir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: DeviceCmd) -> Result<ExitCode> {
    match cmd {
        DeviceCmd::Enroll(a) => enroll_cmd(a),
        DeviceCmd::InstallCert(a) => install(a),
        DeviceCmd::Approve(a) => approve_cmd(a),
        DeviceCmd::List(a) => list(a),
    }
}

fn config(c: &ConfigArg) -> Result<berth_agent::config::AgentConfig> {
    Ok(berth_agent::config::load(&c.config, std::env::vars(), &[])?)
}

fn enroll_cmd(a: EnrollArgs) -> Result<ExitCode> {
    let cfg = config(&a.config)?;
    let state = &cfg.paths.state;
    let root = a.root.unwrap_or_else(|| cfg.trust.root.clone());
    let pinned = enroll::pin_root(state, &root)?;
    let e = enroll::enroll(state, &cfg.device.id, &cfg.device.fleet)?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.enroll.json", cfg.device.id)));
    let json = serde_json::to_vec_pretty(&e.request)?;
    std::fs::write(&out, json).with_context(|| format!("cannot write {}", out.display()))?;
    let files = Files::in_state(state);
    let how = |reused: bool| if reused { "kept" } else { "created" };
    println!(
        "identity key {} ({}): {}",
        files.identity.display(),
        how(e.reused_identity),
        e.request.identity
    );
    println!(
        "secrets key {} ({}): recipient {}",
        files.secrets.display(),
        how(e.reused_secrets_key),
        e.request.recipient
    );
    match pinned {
        Pinned::Now => println!("root of trust pinned: {}", root.display()),
        Pinned::Already => println!("root of trust: already pinned (kept)"),
    }
    println!(
        "request: {} — the operator approves it (berth device approve {} --device {}), then \
         install the certificate here (berth device install-cert CERT)",
        out.display(),
        out.display(),
        cfg.device.id
    );
    Ok(ExitCode::SUCCESS)
}

fn install(a: InstallArgs) -> Result<ExitCode> {
    let cfg = config(&a.config)?;
    let pem = std::fs::read(&a.certificate)
        .with_context(|| format!("cannot read {}", a.certificate.display()))?;
    let subject = enroll::install_certificate(&cfg.paths.state, &cfg.device.id, &pem)
        .with_context(|| format!("{}", a.certificate.display()))?;
    let files = Files::in_state(&cfg.paths.state);
    println!(
        "installed the certificate of {subject} as {}; the agent's [mqtt] uses cert = \"{}\" and key = \"{}\"",
        files.certificate.display(),
        files.certificate.display(),
        files.identity.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_text(p: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read the {what} {}", p.display()))
}

fn approve_cmd(a: ApproveArgs) -> Result<ExitCode> {
    let text = read_text(&a.request, "enrollment request")?;
    let req: Request = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an enrollment request (berth device enroll writes one)",
            a.request.display()
        )
    })?;
    approve::check(&req, &a.device).with_context(|| a.request.display().to_string())?;
    let mut dir = Directory::load(&a.fleet_dir)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let issued = approve::issue(
        &req,
        &read_text(&a.ca_cert, "CA certificate")?,
        &read_text(&a.ca_key, "CA key")?,
        a.days,
        (now_ms / 1000) as i64,
    )?;
    dir.record(
        &req.device,
        Entry {
            fleet: req.fleet.clone(),
            identity: req.identity.clone(),
            recipient: req.recipient.clone(),
            certificate_sha256: hex::encode(Sha256::digest(issued.certificate_pem.as_bytes())),
            not_after: issued.not_after,
            approved_ms: now_ms,
        },
        a.replace,
    )?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.pem", req.device)));
    std::fs::write(&out, &issued.certificate_pem)
        .with_context(|| format!("cannot write {}", out.display()))?;
    dir.save(&a.fleet_dir)?;
    println!(
        "approved {} (fleet {}): certificate {}, identity {}, recipient {}",
        req.device,
        req.fleet,
        out.display(),
        req.identity,
        req.recipient
    );
    Ok(ExitCode::SUCCESS)
}

fn list(a: ListArgs) -> Result<ExitCode> {
    let dir = Directory::load(&a.fleet_dir)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&dir)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<16} {:<66} RECIPIENT",
        "DEVICE", "FLEET", "IDENTITY"
    );
    for (id, e) in &dir.devices {
        println!(
            "{id:<20} {:<16} {:<66} {}",
            e.fleet, e.identity, e.recipient
        );
    }
    Ok(ExitCode::SUCCESS)
}
