//! Fleet simulation: N `berth-agent` processes against one Mosquitto, one
//! registry and one TUF metadata server (the rig's own lab). The first
//! `real` devices start real containers (`berth-runtime`); the rest use the
//! agent's recording runtime, so what is measured is the control plane:
//! the notification over MQTT, TUF metadata, the image pull, the update
//! state machine and the report. A release is published and the time until
//! every device reports the new generation (idle, all workloads running) is
//! measured, with the load on the broker, the registry and the metadata
//! server and the cost of one device.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::lab::images::{build_sensor, Image};
use crate::lab::peers::{cpu_ticks, pss_kib, rss_kib};
use crate::lab::{publish, Environment, Lab, LabError, Tools};
use crate::runner::release_toml;
use crate::scenario::{ReleaseSpec, WorkloadSpec};
use crate::sim::{SimDevice, SimError, SimOptions};
use crate::watch::{FleetWatch, WatchError};

/// What a fleet simulation could not do.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("{0}")]
    Setup(String),
    #[error("{missing} of {devices} devices did not report generation {generation} within {secs} s (e.g. {example}); see their agent.log under {work}")]
    Bringup {
        missing: usize,
        devices: usize,
        generation: u64,
        secs: u64,
        example: String,
        work: PathBuf,
    },
}

/// How to run a fleet simulation.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub devices: usize,
    /// Devices (the first ones) that start real containers.
    pub real: usize,
    /// Size of the new layer the measured release carries (KiB).
    pub payload_kib: u64,
    /// How long to wait for bring-up and for convergence, each.
    pub timeout: Duration,
    pub work: PathBuf,
    pub tools: Tools,
}

/// CPU and memory of one process over the measured update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    pub cpu_s: f64,
    pub rss_peak_kib: u64,
}

/// What a fleet simulation measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetReport {
    pub devices: usize,
    pub real: usize,
    pub enroll: Duration,
    pub bring_up: Duration,
    /// `berth release publish`: sign, push the new image, notify.
    pub publish: Duration,
    /// From the notification to each device's report of the new generation.
    pub converged: Vec<Duration>,
    pub missing: Vec<String>,
    pub peers: BTreeMap<String, Load>,
    /// Over the update: every agent's CPU, and their mean proportional
    /// memory (PSS) once updated.
    pub agents_cpu_s: f64,
    pub agent_pss_kib: u64,
    /// MQTT messages (states, events) and payload bytes the rig received.
    pub mqtt: (u64, u64, u64),
    /// Registry and metadata server: (connections, bytes served).
    pub registry: (u64, u64),
    pub metadata: (u64, u64),
}

impl FleetReport {
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.converged.len() == self.devices
    }

    /// The time until the last device converged.
    pub fn all_converged(&self) -> Option<Duration> {
        self.passed()
            .then(|| self.converged.iter().max().copied())
            .flatten()
    }

    /// The readable summary.
    pub fn summary(&self) -> String {
        let n = self.devices.max(1) as f64;
        let mut v = self.converged.clone();
        v.sort();
        let at = |q: f64| {
            v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(f64::NAN, Duration::as_secs_f64)
        };
        let mut s = format!(
            "fleet of {} devices ({} with real containers, {} recording): {}\n",
            self.devices,
            self.real,
            self.devices - self.real,
            if self.passed() {
                "CONVERGED"
            } else {
                "NOT CONVERGED"
            }
        );
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<24} {v}");
        };
        line("enroll", format!("{:.1} s", self.enroll.as_secs_f64()));
        line("bring-up", format!("{:.1} s", self.bring_up.as_secs_f64()));
        line(
            "publish",
            format!("{:.2} s (sign, push, notify)", self.publish.as_secs_f64()),
        );
        line(
            "converged",
            format!(
                "{} of {} after the notification: median {:.2} s, p95 {:.2} s, all {:.2} s",
                self.converged.len(),
                self.devices,
                at(0.5),
                at(0.95),
                at(1.0)
            ),
        );
        if !self.missing.is_empty() {
            let shown: Vec<&str> = self.missing.iter().take(5).map(String::as_str).collect();
            line(
                "missing",
                format!("{} ({} …)", self.missing.len(), shown.join(", ")),
            );
        }
        for (name, l) in &self.peers {
            line(
                name,
                format!(
                    "cpu {:.2} s ({:.1} ms/device), rss peak {:.1} MiB",
                    l.cpu_s,
                    l.cpu_s * 1000.0 / n,
                    l.rss_peak_kib as f64 / 1024.0
                ),
            );
        }
        line(
            "mqtt to the rig",
            format!(
                "{} states, {} events, {} KiB",
                self.mqtt.0,
                self.mqtt.1,
                self.mqtt.2 / 1024
            ),
        );
        for (k, (c, b)) in [("registry", self.registry), ("metadata", self.metadata)] {
            line(
                &format!("{k} traffic"),
                format!(
                    "{c} new connections, {} KiB ({:.1} KiB/device)",
                    b / 1024,
                    b as f64 / 1024.0 / n
                ),
            );
        }
        line(
            "agents",
            format!(
                "cpu {:.1} s ({:.0} ms/device), pss {:.1} MiB/device",
                self.agents_cpu_s,
                self.agents_cpu_s * 1000.0 / n,
                self.agent_pss_kib as f64 / 1024.0
            ),
        );
        s
    }
}

fn ticks_per_s() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// The single-workload release of the simulation.
fn spec(payload_kib: u64) -> ReleaseSpec {
    ReleaseSpec {
        workloads: vec![WorkloadSpec {
            name: "sensor".into(),
            changes: true,
            interval_ms: 1000,
        }],
        payload_kib,
    }
}

fn publish_generation(
    env: &Environment,
    tools: &Tools,
    work: &Path,
    g: u64,
    image: &Image,
    payload_kib: u64,
) -> Result<(), FleetError> {
    let file = work.join(format!("release-{g}.toml"));
    std::fs::write(&file, release_toml(env, &spec(payload_kib), g, image))
        .map_err(|e| LabError::io(&file, e))?;
    publish(env, tools, &file, std::slice::from_ref(&image.layout), true)?;
    Ok(())
}

/// Whether a state document is generation `g`, idle, every workload running.
fn at_generation(s: &serde_json::Value, g: u64) -> bool {
    let ws = s["workloads"].as_array();
    s["current"].as_u64() == Some(g)
        && s["phase"] == "idle"
        && ws.is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["status"] == "running"))
}

/// Devices (by id) not yet at generation `g`.
fn behind(watch: &FleetWatch, ids: &[String], g: u64) -> Vec<String> {
    let states = watch.states();
    ids.iter()
        .filter(|id| !states.get(*id).is_some_and(|s| at_generation(s, g)))
        .cloned()
        .collect()
}

/// Runs the simulation; `progress` sees a line per stage.
pub fn run(opts: &FleetOptions, progress: &mut dyn FnMut(&str)) -> Result<FleetReport, FleetError> {
    if opts.devices == 0 {
        return Err(FleetError::Setup("--devices must be at least 1".into()));
    }
    let work = &opts.work;
    for sub in ["lab", "devices", "images"] {
        let p = work.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| LabError::io(&p, e))?;
        }
    }
    std::fs::create_dir_all(work).map_err(|e| LabError::io(work, e))?;
    // Containers' user namespaces must traverse to the volumes.
    std::fs::set_permissions(work, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| LabError::io(work, e))?;
    let lab = Lab::start(&work.join("lab"), "fleet", &opts.tools)?;
    let env = lab.env.clone();
    let images = work.join("images");
    let base = build_sensor(&images, &opts.tools.berth, 0, 0)?;
    publish_generation(&env, &opts.tools, work, 1, &base, 0)?;
    progress("lab up, generation 1 published");

    let mut report = FleetReport {
        devices: opts.devices,
        real: opts.real.min(opts.devices),
        ..FleetReport::default()
    };
    let t = Instant::now();
    let mut devices = Vec::with_capacity(opts.devices);
    for i in 0..opts.devices {
        let id = format!("sim-{i:05}");
        let o = SimOptions {
            // Straight to the broker: its load is what is measured.
            broker_port: env.broker.port,
            refresh_s: 3600,
            tmpfs_state_mib: None,
            record_runtime: i >= report.real,
            // The control plane is measured: no LED thread per device.
            led: false,
        };
        devices.push(SimDevice::create(
            &env,
            &opts.tools,
            &work.join("devices").join(&id),
            &id,
            &o,
        )?);
    }
    report.enroll = t.elapsed();
    progress(&format!("{} devices enrolled", opts.devices));
    let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let watch = FleetWatch::connect(&env.broker, "berth-hil-fleet")?;

    let t = Instant::now();
    for d in &mut devices {
        d.power_on()?;
    }
    let secs = opts.timeout.as_secs();
    let deadline = Instant::now() + opts.timeout;
    loop {
        let b = behind(&watch, &ids, 1);
        if b.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(FleetError::Bringup {
                missing: b.len(),
                devices: ids.len(),
                generation: 1,
                secs,
                example: b[0].clone(),
                work: work.join("devices"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    report.bring_up = t.elapsed();
    progress(&format!(
        "all {} devices at generation 1 ({:.1} s)",
        opts.devices,
        report.bring_up.as_secs_f64()
    ));

    // The measured update: a new image layer, a new generation.
    let next = build_sensor(&images, &opts.tools.berth, opts.payload_kib, 2)?;
    let peers: Vec<(String, u32)> = lab
        .peers
        .iter()
        .filter_map(|p| Some((p.name.to_string(), p.pid()?)))
        .collect();
    let agents: Vec<u32> = devices.iter().filter_map(SimDevice::pid).collect();
    let cpu0: Vec<u64> = peers
        .iter()
        .map(|(_, p)| cpu_ticks(*p).unwrap_or(0))
        .collect();
    let agents0: u64 = agents.iter().filter_map(|p| cpu_ticks(*p)).sum();
    let mqtt0 = watch.totals();
    let (reg0, meta0) = (lab.links.registry.traffic(), lab.links.metadata.traffic());
    let mut rss_peak = vec![0u64; peers.len()];

    let t = Instant::now();
    publish_generation(&env, &opts.tools, work, 2, &next, opts.payload_kib)?;
    report.publish = t.elapsed();
    let notified = Instant::now();
    let mut first: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = notified + opts.timeout;
    loop {
        for (i, (_, pid)) in peers.iter().enumerate() {
            rss_peak[i] = rss_peak[i].max(rss_kib(*pid).unwrap_or(0));
        }
        let now = notified.elapsed();
        for (id, s) in watch.states() {
            if at_generation(&s, 2) {
                first.entry(id).or_insert(now);
            }
        }
        if first.len() >= ids.len() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    report.converged = ids.iter().filter_map(|id| first.get(id).copied()).collect();
    report.missing = ids
        .iter()
        .filter(|id| !first.contains_key(*id))
        .cloned()
        .collect();
    let hz = ticks_per_s();
    for (i, (name, pid)) in peers.iter().enumerate() {
        let cpu = cpu_ticks(*pid).unwrap_or(0).saturating_sub(cpu0[i]);
        report.peers.insert(
            name.clone(),
            Load {
                cpu_s: cpu as f64 / hz,
                rss_peak_kib: rss_peak[i],
            },
        );
    }
    let agents1: u64 = agents.iter().filter_map(|p| cpu_ticks(*p)).sum();
    report.agents_cpu_s = agents1.saturating_sub(agents0) as f64 / hz;
    let pss: Vec<u64> = agents.iter().filter_map(|p| pss_kib(*p)).collect();
    report.agent_pss_kib = pss.iter().sum::<u64>() / pss.len().max(1) as u64;
    let mqtt1 = watch.totals();
    report.mqtt = (mqtt1.0 - mqtt0.0, mqtt1.1 - mqtt0.1, mqtt1.2 - mqtt0.2);
    let (reg1, meta1) = (lab.links.registry.traffic(), lab.links.metadata.traffic());
    report.registry = (reg1.2 - reg0.2, reg1.1 - reg0.1);
    report.metadata = (meta1.2 - meta0.2, meta1.1 - meta0.1);

    // What the devices report is what their runtimes hold.
    for d in devices.iter().filter(|d| first.contains_key(&d.id)) {
        let held = d.containers()?;
        if held != ["sensor"] {
            return Err(FleetError::Setup(format!(
                "device {} reports generation 2 running, but its runtime holds {held:?}",
                d.id
            )));
        }
    }
    progress("measured; powering the fleet off");
    drop(watch);
    drop(devices);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_device_is_at_a_generation_only_idle_with_every_workload_running() {
        let run = |st: &str| json!([{ "name": "sensor", "status": st }]);
        let ok = json!({ "current": 2, "phase": "idle", "workloads": run("running") });
        assert!(at_generation(&ok, 2));
        assert!(!at_generation(&ok, 1));
        let busy = json!({ "current": 2, "phase": "verifying", "workloads": run("running") });
        assert!(!at_generation(&busy, 2));
        let down = json!({ "current": 2, "phase": "idle", "workloads": run("stopped") });
        assert!(!at_generation(&down, 2));
        let empty = json!({ "current": 2, "phase": "idle", "workloads": [] });
        assert!(!at_generation(&empty, 2));
    }

    #[test]
    fn a_fleet_converged_only_when_every_device_did() {
        let mut r = FleetReport {
            devices: 3,
            real: 1,
            converged: vec![Duration::from_millis(900), Duration::from_millis(1500)],
            missing: vec!["sim-00002".into()],
            ..FleetReport::default()
        };
        assert!(!r.passed());
        assert_eq!(r.all_converged(), None);
        assert!(r.summary().contains("NOT CONVERGED") && r.summary().contains("sim-00002"));
        r.missing.clear();
        r.converged.push(Duration::from_millis(1200));
        assert!(r.passed());
        assert_eq!(r.all_converged(), Some(Duration::from_millis(1500)));
        let s = r.summary();
        assert!(s.contains("3 of 3") && s.contains("all 1.50 s"), "{s}");
    }
}
