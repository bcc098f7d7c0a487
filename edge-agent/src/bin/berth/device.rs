//! Device-side admin commands over the agent's local API, and the
//! operator's attestation check.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_agent::api::{request, Request};
use berth_agent::attest::{verify, Attestation};
use clap::Args;

#[derive(Args)]
pub struct ApiArgs {
    /// The agent's API socket.
    #[arg(long, default_value = "/run/berth/agent.sock")]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn status(a: ApiArgs) -> Result<ExitCode> {
    let v = request(&a.socket, &Request::Status)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let gen = |k: &str| v[k].as_u64().map_or("-".to_string(), |n| n.to_string());
    println!(
        "device {}  fleet {}  arch {}",
        v["device"].as_str().unwrap_or("?"),
        v["fleet"].as_str().unwrap_or("?"),
        v["arch"].as_str().unwrap_or("?")
    );
    println!(
        "generation {} (previous {}, last failed {})  phase {}{}",
        gen("current"),
        gen("previous"),
        gen("failed"),
        v["phase"].as_str().unwrap_or("?"),
        v["target"]
            .as_u64()
            .map_or(String::new(), |t| format!(" -> {t}"))
    );
    if let Some(why) = v["failure"].as_str() {
        println!("generation {} failed: {why}", gen("failed"));
    }
    println!();
    println!("{:<24} {:<10} {:>8}", "WORKLOAD", "STATUS", "PID");
    for w in v["workloads"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<10} {:>8}{}",
            w["name"].as_str().unwrap_or("?"),
            w["status"].as_str().unwrap_or("?"),
            w["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
            w["exit"]
                .as_str()
                .map_or(String::new(), |e| format!("  ({e})"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn history(a: ApiArgs) -> Result<ExitCode> {
    let v = request(&a.socket, &Request::History)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<26} {:>10}  {:<13} REASON",
        "TIME (UTC)", "GENERATION", "RESULT"
    );
    for h in v.as_array().into_iter().flatten() {
        let ms = h["time_ms"].as_u64().unwrap_or(0);
        println!(
            "{:<26} {:>10}  {:<13} {}",
            utc(ms),
            h["generation"].as_u64().unwrap_or(0),
            h["result"].as_str().unwrap_or("?"),
            h["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    api: ApiArgs,
    workload: String,
}

pub fn logs(a: LogsArgs) -> Result<ExitCode> {
    let v = request(
        &a.api.socket,
        &Request::Logs {
            workload: a.workload,
        },
    )?;
    print!("{}", v.as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct AttestArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// A fresh value from the verifier, answered in the signed attestation.
    #[arg(long)]
    nonce: String,
}

pub fn attest(a: AttestArgs) -> Result<ExitCode> {
    let v = request(&a.api.socket, &Request::Attest { nonce: a.nonce })?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The attestation JSON a device returned (`berth attest`).
    attestation: PathBuf,
    /// The device's enrolled ed25519 public key (64 hex digits).
    #[arg(long)]
    key: String,
    /// The nonce that was asked.
    #[arg(long)]
    nonce: String,
}

pub fn verify_attestation(a: VerifyArgs) -> Result<ExitCode> {
    let text = std::fs::read(&a.attestation)
        .with_context(|| format!("cannot read {}", a.attestation.display()))?;
    let att: Attestation = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an attestation", a.attestation.display()))?;
    let key: [u8; 32] = hex::decode(a.key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("--key must be 64 hex digits (the device's ed25519 public key)")?;
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        bail!("--key is not a valid ed25519 public key");
    };
    let records = verify(&att, &key, &a.nonce)?;
    println!(
        "attestation from {} verified: {} launches, chain head {}",
        att.device,
        records.len(),
        att.head
    );
    println!(
        "{:<26} {:>4}  {:<20} {:<20} MEASUREMENT",
        "TIME (UTC)", "GEN", "WORKLOAD", "IMAGE"
    );
    for r in records {
        println!(
            "{:<26} {:>4}  {:<20} {:<20} {}",
            utc(r.time_ms),
            r.generation,
            r.workload,
            short(&r.image),
            r.measurement
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn short(d: &str) -> String {
    d.chars().take(19).collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from milliseconds since the epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_civil_time() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_426_244_123), "2026-11-23 09:30:44");
    }
}
