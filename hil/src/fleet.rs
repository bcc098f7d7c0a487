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
use crate::lab::peers::{
    cpu_ticks, load_average, machine_ticks, own_ticks, pss_kib, rss_kib, ticks_per_s,
    written_bytes, METADATA, REGISTRY,
};
use crate::lab::{publish, Environment, Lab, LabError, Tools};
use crate::runner::release_toml;
use crate::scenario::{ReleaseSpec, WorkloadSpec};
use crate::sim::{SimDevice, SimError, SimOptions};
use crate::watch::{DeviceView, FleetWatch, WatchError};

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
    /// Bytes the registry and the metadata server wrote (TLS included).
    pub registry_bytes: u64,
    pub metadata_bytes: u64,
    /// Before the publish: how long the fleet took to settle after
    /// bring-up, and the CPU (cores) its agents and peers then used idle.
    pub settle: Duration,
    pub idle_cores: f64,
    /// The machine's 1-minute load average at the publish, and the cores
    /// it was busy on (every process, the other users' too) over the update.
    pub load_at_publish: f64,
    pub machine_cores: f64,
    /// The rig's own CPU over the update (its MQTT subscription and the
    /// device links), and that of `berth release publish`.
    pub rig_cpu_s: f64,
    pub publish_cpu_s: f64,
    /// The measured window (publish to the last report), seconds.
    pub window_s: f64,
    /// What the measured release changed: `Some(kib)`, a new image with a
    /// new layer of that size; `None`, the configuration only (its image
    /// is already on every device).
    pub new_layer_kib: Option<u64>,
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
        line(
            "release",
            match self.new_layer_kib {
                Some(k) => format!("generation 2: a new image, with a new {k} KiB layer"),
                None => "generation 2: a configuration change (its image is on the devices)".into(),
            },
        );
        line("enroll", format!("{:.1} s", self.enroll.as_secs_f64()));
        line("bring-up", format!("{:.1} s", self.bring_up.as_secs_f64()));
        line(
            "settled",
            format!(
                "after {:.1} s more; idle fleet then {:.0} ms CPU/s ({:.2} ms/s per device)",
                self.settle.as_secs_f64(),
                self.idle_cores * 1000.0,
                self.idle_cores * 1000.0 / n
            ),
        );
        line(
            "machine",
            format!(
                "load {:.1} at the publish; {:.2} of its cores busy over the {:.1} s update",
                self.load_at_publish, self.machine_cores, self.window_s
            ),
        );
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
        for (k, b) in [
            ("registry", self.registry_bytes),
            ("metadata server", self.metadata_bytes),
        ] {
            line(
                &format!("{k} sent"),
                format!(
                    "{} KiB ({:.1} KiB/device, TLS included)",
                    b / 1024,
                    b as f64 / 1024.0 / n
                ),
            );
        }
        line(
            "agents",
            format!(
                "cpu {:.1} s ({:.1} ms/device), pss {:.1} MiB/device",
                self.agents_cpu_s,
                self.agents_cpu_s * 1000.0 / n,
                self.agent_pss_kib as f64 / 1024.0
            ),
        );
        line(
            "rig",
            format!(
                "cpu {:.2} s (watch and links), berth release publish {:.2} s",
                self.rig_cpu_s, self.publish_cpu_s
            ),
        );
        let total = self.agents_cpu_s
            + self.peers.values().map(|l| l.cpu_s).sum::<f64>()
            + self.rig_cpu_s
            + self.publish_cpu_s;
        line(
            "per device",
            format!(
                "{:.1} ms CPU (agents, peers, rig and publish: {total:.1} s)",
                total * 1000.0 / n
            ),
        );
        s
    }
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

/// Whether the device's view shows generation `g`.
fn view_at(v: Option<&DeviceView>, g: u64) -> bool {
    v.and_then(|v| v.state.as_ref())
        .is_some_and(|s| at_generation(s, g))
}

/// Devices (by id) not yet at generation `g`.
fn behind(watch: &FleetWatch, ids: &[String], g: u64) -> Vec<String> {
    watch.with_devices(|d| {
        ids.iter()
            .filter(|id| !view_at(d.get(*id), g))
            .cloned()
            .collect()
    })
}

/// The CPU (ticks) of `pids` so far.
fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p)).sum()
}

/// With devices missing and no new report for this long, the rig asks the
/// broker for the retained states again.
const RESYNC_AFTER: Duration = Duration::from_secs(10);

/// Below this many cores, an idle fleet has settled.
const SETTLED_CORES: f64 = 0.05;
/// The longest wait for the fleet to settle.
const SETTLE_MAX: Duration = Duration::from_secs(120);

/// Waits until the processes `pids` (agents and peers) are idle after
/// bring-up: their CPU over one second below [`SETTLED_CORES`], or no
/// longer falling (within 10 %) over three seconds, or [`SETTLE_MAX`].
/// Returns the time taken and the cores they used in the last second.
fn settle(pids: &[u32]) -> (Duration, f64) {
    let (t, hz) = (Instant::now(), ticks_per_s());
    let mut rates: Vec<f64> = Vec::new();
    let mut last = ticks_of(pids);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = ticks_of(pids);
        let rate = now.saturating_sub(last) as f64 / hz;
        last = now;
        rates.push(rate);
        let steady = rates.len() >= 4 && {
            let w = &rates[rates.len() - 4..];
            w[1..].iter().all(|r| *r >= w[0] * 0.9)
        };
        if rate < SETTLED_CORES || steady || t.elapsed() >= SETTLE_MAX {
            return (t.elapsed(), rate);
        }
    }
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
    // Devices reach the registry and the metadata server directly, as they
    // do the broker: nothing is injected on the way, and what is measured
    // is the peers, not the rig's relays.
    let env = lab.direct();
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
    let mut progress_at = (Instant::now(), ids.len());
    loop {
        let b = behind(&watch, &ids, 1);
        if b.is_empty() {
            break;
        }
        // No news for a while: ask for the retained states again.
        if b.len() < progress_at.1 {
            progress_at = (Instant::now(), b.len());
        } else if progress_at.0.elapsed() >= RESYNC_AFTER && watch.resync() {
            progress_at.0 = Instant::now();
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

    // The measured update: a new generation (a new image layer of
    // `payload_kib`, or with 0 the same image and a new configuration).
    let next = build_sensor(&images, &opts.tools.berth, opts.payload_kib, 2)?;
    report.new_layer_kib = (next.manifest != base.manifest).then_some(opts.payload_kib);
    let peers: Vec<(String, u32)> = lab
        .peers
        .iter()
        .filter_map(|p| Some((p.name.to_string(), p.pid()?)))
        .collect();
    let agents: Vec<u32> = devices.iter().filter_map(SimDevice::pid).collect();
    // Measured from an idle fleet: bring-up's stragglers done.
    let everyone: Vec<u32> = agents
        .iter()
        .chain(peers.iter().map(|(_, p)| p))
        .copied()
        .collect();
    (report.settle, report.idle_cores) = settle(&everyone);
    progress(&format!(
        "settled after {:.1} s; publishing generation 2",
        report.settle.as_secs_f64()
    ));
    let cpu0: Vec<u64> = peers
        .iter()
        .map(|(_, p)| cpu_ticks(*p).unwrap_or(0))
        .collect();
    let agents0 = ticks_of(&agents);
    let (rig0, machine0) = (own_ticks(), machine_ticks());
    let mqtt0 = watch.totals();
    let written = |name: &str| {
        peers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| written_bytes(*p))
            .unwrap_or(0)
    };
    let (reg0, meta0) = (written(REGISTRY), written(METADATA));
    let mut rss_peak = vec![0u64; peers.len()];

    report.load_at_publish = load_average();
    let t = Instant::now();
    publish_generation(&env, &opts.tools, work, 2, &next, opts.payload_kib)?;
    report.publish = t.elapsed();
    let notified = Instant::now();
    let mut first: BTreeMap<String, Duration> = BTreeMap::new();
    let mut pending: Vec<String> = ids.clone();
    progress_at = (Instant::now(), pending.len());
    let deadline = notified + opts.timeout;
    loop {
        for (i, (_, pid)) in peers.iter().enumerate() {
            rss_peak[i] = rss_peak[i].max(rss_kib(*pid).unwrap_or(0));
        }
        // When each state changed, not when it was looked at.
        watch.with_devices(|d| {
            pending.retain(|id| {
                let v = d.get(id);
                if !view_at(v, 2) {
                    return true;
                }
                let at = v.and_then(|v| v.changed_at).unwrap_or_else(Instant::now);
                first.insert(id.clone(), at.saturating_duration_since(notified));
                false
            })
        });
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        if pending.len() < progress_at.1 {
            progress_at = (Instant::now(), pending.len());
        } else if progress_at.0.elapsed() >= RESYNC_AFTER && watch.resync() {
            progress_at.0 = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    report.window_s = notified.elapsed().as_secs_f64() + report.publish.as_secs_f64();
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
    report.agents_cpu_s = ticks_of(&agents).saturating_sub(agents0) as f64 / hz;
    let (rig1, machine1) = (own_ticks(), machine_ticks());
    report.rig_cpu_s = rig1.0.saturating_sub(rig0.0) as f64 / hz;
    report.publish_cpu_s = rig1.1.saturating_sub(rig0.1) as f64 / hz;
    report.machine_cores = machine1.0.saturating_sub(machine0.0) as f64
        / machine1.1.saturating_sub(machine0.1).max(1) as f64
        * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let pss: Vec<u64> = agents.iter().filter_map(|p| pss_kib(*p)).collect();
    report.agent_pss_kib = pss.iter().sum::<u64>() / pss.len().max(1) as u64;
    let mqtt1 = watch.totals();
    report.mqtt = (mqtt1.0 - mqtt0.0, mqtt1.1 - mqtt0.1, mqtt1.2 - mqtt0.2);
    report.registry_bytes = written(REGISTRY).saturating_sub(reg0);
    report.metadata_bytes = written(METADATA).saturating_sub(meta0);

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
