//! `berth fleet status`: every device's generation, phase and liveness, from
//! the retained messages on the broker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};

#[derive(Subcommand)]
pub enum FleetCmd {
    /// A table of every device that reported (retained state and liveness).
    Status(StatusArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    /// Broker host[:port] (TLS; default port 8883).
    #[arg(long)]
    broker: String,
    /// CA of the broker's certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The operator's client certificate and key (PEM).
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "berth")]
    prefix: String,
    /// Only devices of this fleet.
    #[arg(long)]
    fleet: Option<String>,
    /// Print JSON (device id -> state) instead of a table.
    #[arg(long)]
    json: bool,
    /// How long to collect retained messages.
    #[arg(long, default_value = "2", value_name = "SECONDS")]
    wait: u64,
}

pub fn run(cmd: FleetCmd) -> Result<ExitCode> {
    match cmd {
        FleetCmd::Status(a) => status(a),
    }
}

#[derive(Default, serde::Serialize)]
struct Device {
    status: Option<String>,
    state: Option<serde_json::Value>,
}

fn status(a: StatusArgs) -> Result<ExitCode> {
    let (host, port) = match a.broker.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse().context("--broker port is not a number")?,
        ),
        None => (a.broker.clone(), 8883),
    };
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut opts = MqttOptions::new(format!("berth-fleet-{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(256 * 1024, 64 * 1024)
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(
            berth_agent::link::client_config(&read(&a.ca)?, &read(&a.cert)?, &read(&a.key)?)
                .map_err(anyhow::Error::msg)?,
        )));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let devices = rt.block_on(collect(opts, &a.prefix, Duration::from_secs(a.wait)))?;
    let devices: BTreeMap<String, Device> = devices
        .into_iter()
        .filter(|(_, d)| match (&a.fleet, &d.state) {
            (None, _) => true,
            (Some(f), Some(s)) => s["fleet"].as_str() == Some(f),
            (Some(_), None) => false,
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<12} {:<8} {:>10} {:<13} {:>7} WORKLOADS",
        "DEVICE", "FLEET", "LINK", "GENERATION", "PHASE", "FAILED"
    );
    for (id, d) in &devices {
        let s = d.state.clone().unwrap_or_default();
        let n = |k: &str| s[k].as_u64().map_or("-".to_string(), |v| v.to_string());
        let workloads: Vec<String> = s["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                format!(
                    "{}:{}",
                    w["name"].as_str().unwrap_or("?"),
                    w["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "{:<20} {:<12} {:<8} {:>10} {:<13} {:>7} {}",
            id,
            s["fleet"].as_str().unwrap_or("-"),
            d.status.as_deref().unwrap_or("unknown"),
            n("current"),
            s["phase"].as_str().unwrap_or("-"),
            n("failed"),
            workloads.join(" ")
        );
    }
    if devices.is_empty() {
        println!("(no device has reported under {}/devices/)", a.prefix);
    }
    Ok(ExitCode::SUCCESS)
}

async fn collect(
    opts: MqttOptions,
    prefix: &str,
    wait: Duration,
) -> Result<BTreeMap<String, Device>> {
    let (client, mut events) = AsyncClient::new(opts, 16);
    let mut out: BTreeMap<String, Device> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                for t in ["state", "status"] {
                    client
                        .subscribe(format!("{prefix}/devices/+/{t}"), QoS::AtLeastOnce)
                        .await?;
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let rest = p.topic.strip_prefix(&format!("{prefix}/devices/"));
                let Some((id, kind)) = rest.and_then(|r| r.split_once('/')) else {
                    continue;
                };
                let d = out.entry(id.to_string()).or_default();
                match kind {
                    "state" => d.state = serde_json::from_slice(&p.payload).ok(),
                    "status" => d.status = Some(String::from_utf8_lossy(&p.payload).into_owned()),
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(e) => bail!("cannot read the fleet from the broker: {e}; check --broker, --ca, --cert and --key"),
        }
    }
    let _ = client.try_disconnect();
    Ok(out)
}
