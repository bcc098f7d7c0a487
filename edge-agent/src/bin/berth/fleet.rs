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

/// How to reach the broker as an operator.
#[derive(Args)]
pub struct BrokerArgs {
    /// Broker host[:port] (TLS; default port 8883).
    #[arg(long)]
    pub broker: String,
    /// CA of the broker's certificate (PEM). Without --ca, --cert and
    /// --key: plain MQTT, only to a broker on loopback.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The operator's client certificate and key (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[arg(long, default_value = "berth")]
    pub prefix: String,
}

impl BrokerArgs {
    /// MQTT options for a short operator session named `who`.
    pub fn options(&self, who: &str) -> Result<MqttOptions> {
        let (host, port) = match self.broker.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().context("--broker port is not a number")?,
            ),
            None => (self.broker.clone(), 8883),
        };
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let loopback = matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1");
        let mut opts = MqttOptions::new(format!("berth-{who}-{}", std::process::id()), host, port);
        opts.set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(256 * 1024, 64 * 1024);
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => {
                opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(
                    berth_agent::link::client_config(&read(ca)?, &read(cert)?, &read(key)?)
                        .map_err(anyhow::Error::msg)?,
                )));
            }
            (None, None, None) if loopback => {}
            _ => bail!(
                "--ca, --cert and --key are all needed to reach {} (TLS with a client certificate)",
                self.broker
            ),
        }
        Ok(opts)
    }
}

/// Publishes one retained message and waits for the broker's
/// acknowledgement.
pub fn publish_retained(b: &BrokerArgs, topic: &str, payload: Vec<u8>) -> Result<()> {
    let opts = b.options("publish")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (client, mut events) = AsyncClient::new(opts, 4);
        client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ev = tokio::select! {
                () = tokio::time::sleep_until(deadline) => bail!("the broker {} did not acknowledge the notification within 10 s", b.broker),
                ev = events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Incoming::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => bail!(
                    "cannot notify the fleet through {}: {e}; check --broker, --ca, --cert and --key",
                    b.broker
                ),
            }
        }
        let _ = client.disconnect().await;
        Ok(())
    })
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    broker: BrokerArgs,
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
    let opts = a.broker.options("fleet")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let devices = rt.block_on(collect(opts, &a.broker.prefix, Duration::from_secs(a.wait)))?;
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
        println!(
            "(no device has reported under {}/devices/)",
            a.broker.prefix
        );
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
