//! Runs a scenario against simulated devices: each device's power and
//! reset lines are embedded-hal [`SimLine`]s acting on its agent process,
//! its LED a [`SimLed`] reading the agent's simulated status LED pin.
//! Update phases are read from the local API (the agent publishes its
//! retained MQTT state only when an update ends, so the MQTT state cannot
//! show intermediate phases).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::lab::images::{blobs, build_sensor, Image};
use crate::lab::{publish, push, Environment, Lab, Tools};
use crate::led::{LedMonitor, PatternTable};
use crate::pins::{SimLed, SimLine};
use crate::power::{Polarity, PowerControl};
use crate::report::{Case, Metrics};
use crate::scenario::{Millis, ReleaseSpec, Scenario, Step};
use crate::sim::{SimDevice, SimOptions};

mod check;

/// A failure that ends the run (a failed cycle is reported, not raised).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    #[error(transparent)]
    Sim(#[from] crate::sim::SimError),
    #[error("{0}")]
    Setup(String),
}

/// One device on the bench: its simulated agent behind embedded-hal pins.
pub struct Station {
    pub dev: Arc<Mutex<SimDevice>>,
    pub power: PowerControl<SimLine, SimLine>,
    pub led: LedMonitor<SimLed>,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Station").finish_non_exhaustive()
    }
}

fn lock(d: &Mutex<SimDevice>) -> MutexGuard<'_, SimDevice> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

impl Station {
    /// Wires `dev` to a relay line, an idle reset line and its agent's LED.
    pub fn new(dev: SimDevice) -> Self {
        let id = dev.id.clone();
        let led = LedMonitor::new(
            &id,
            SimLed::file(&dev.led_path()),
            Duration::from_millis(10),
        );
        let dev = Arc::new(Mutex::new(dev));
        let d = dev.clone();
        let relay = SimLine::new(Box::new(move |high| {
            let mut d = lock(&d);
            if high { d.power_on() } else { d.power_off() }.map_err(|e| e.to_string())
        }));
        let power = PowerControl::new(&id, relay, SimLine::idle(), Polarity::ActiveHigh)
            .expect("simulated lines only fail when their action does; power-off of a device never started does not");
        Station { dev, power, led }
    }
}

/// A small deterministic generator (the seed is reported for replays).
#[derive(Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }

    fn millis(&mut self, m: Millis) -> Duration {
        Duration::from_millis(match m {
            Millis::Fixed(v) => v,
            Millis::Range([a, b]) => a + self.below(b - a + 1),
        })
    }
}

/// Per device: the generation it settled on last, and cut bookkeeping.
#[derive(Debug, Default)]
struct Track {
    settled: u64,
    restored_at: Option<Instant>,
    /// Volume files at the last cut: (workload, volume) → path → bytes.
    snapshot: BTreeMap<(String, String), BTreeMap<PathBuf, Vec<u8>>>,
}

/// A running scenario.
pub struct Runner<'a> {
    pub scenario: &'a Scenario,
    env: Environment,
    tools: Tools,
    lab: Option<&'a Lab>,
    work: PathBuf,
    stations: Vec<Station>,
    track: Vec<Track>,
    rng: Lcg,
    pub seed: u64,
    /// Published generations → the release template used.
    gens: BTreeMap<u64, String>,
    next_gen: u64,
    images: BTreeMap<(u64, u64), Image>,
    corrupted: Vec<(PathBuf, Vec<u8>)>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("scenario", &self.scenario.name)
            .finish_non_exhaustive()
    }
}

type StepResult = Result<(), String>;

/// How long the old generation must hold before `old-or-new` settles on it.
const OLD_HOLDS: Duration = Duration::from_secs(3);

impl<'a> Runner<'a> {
    /// Enrolls the scenario's devices in `env` under `work`.
    pub fn new(
        scenario: &'a Scenario,
        env: Environment,
        tools: Tools,
        lab: Option<&'a Lab>,
        work: &Path,
        first_generation: u64,
        seed: u64,
    ) -> Result<Self, RunError> {
        PatternTable::new(scenario.led.patterns.clone(), scenario.led.tolerance)
            .map_err(|e| RunError::Setup(e.to_string()))?;
        let opts = SimOptions {
            broker_port: lab.map_or(env.broker.port, |l| l.device_broker_port()),
            refresh_s: scenario.device.refresh_s,
            tmpfs_state_mib: scenario.device.tmpfs_state_mib,
            record_runtime: false,
            led: true,
        };
        let mut stations = vec![];
        for i in 0..scenario.device.count {
            let id = format!("hil-{}-{i}", scenario.name);
            let id = berth_agent::names::WorkloadName::parse(&id)
                .map_err(|e| RunError::Setup(format!("device id from the scenario name: {e}")))?
                .to_string();
            let dev = SimDevice::create(&env, &tools, &work.join(&id), &id, &opts)?;
            stations.push(Station::new(dev));
        }
        Ok(Runner {
            track: stations.iter().map(|_| Track::default()).collect(),
            stations,
            scenario,
            env,
            tools,
            lab,
            work: work.to_path_buf(),
            rng: Lcg(seed),
            seed,
            gens: BTreeMap::new(),
            next_gen: first_generation,
            images: BTreeMap::new(),
            corrupted: vec![],
            metrics: Metrics::default(),
        })
    }

    /// Powers every device on, runs `setup` once and `steps` for `cycles`.
    pub fn run(&mut self, cycles: u64, progress: &mut dyn FnMut(&Case)) -> Vec<Case> {
        let mut cases = vec![];
        let t0 = Instant::now();
        let boot = self.power_all(true);
        let setup = self.scenario.setup.clone();
        let r = boot.and_then(|()| self.steps(&setup, 0));
        let case = Case::new("setup", t0.elapsed(), r.err());
        progress(&case);
        let setup_failed = case.failure.is_some();
        cases.push(case);
        if setup_failed {
            return cases;
        }
        let steps = self.scenario.steps.clone();
        let mut failures = 0;
        for c in 0..cycles {
            let t = Instant::now();
            let r = self.steps(&steps, c);
            self.metrics.cycles += 1;
            if r.is_err() {
                failures += 1;
                self.metrics.failed_cycles += 1;
                // Leave the device powered for the next cycle.
                let _ = self.power_all(true);
                let _ = self.repair();
                if let Some(l) = self.lab {
                    l.links.partition(false);
                    l.links.throttle(None);
                }
                self.resync();
            }
            let case = Case::new(&format!("cycle {}", c + 1), t.elapsed(), r.err());
            progress(&case);
            cases.push(case);
            if failures >= self.scenario.max_failures {
                break;
            }
        }
        cases
    }

    fn steps(&mut self, steps: &[Step], cycle: u64) -> StepResult {
        for (i, s) in steps.iter().enumerate() {
            if let Step::Publish { .. } = s {
                self.arm_for(&steps[i + 1..])?;
            }
            self.step(s, cycle)
                .map_err(|e| format!("step {} ({}): {e}", i + 1, describe(s)))?;
        }
        Ok(())
    }

    /// Arms each device to die at the phase of the next phase-triggered
    /// cut before the next publish (a clean agent restart, while idle).
    fn arm_for(&mut self, rest: &[Step]) -> StepResult {
        let phase = rest
            .iter()
            .take_while(|s| !matches!(s, Step::Publish { .. }))
            .find_map(|s| match s {
                Step::CutPower {
                    at_phase: Some(p), ..
                } => Some(p.clone()),
                _ => None,
            });
        let Some(phase) = phase else { return Ok(()) };
        for st in &self.stations {
            let mut d = lock(&st.dev);
            d.arm(Some(&phase));
            d.restart_agent().map_err(|e| e.to_string())?;
        }
        // Let the restarted agents reconnect before the notification.
        self.wait_all(Duration::from_secs(30), |s| s["phase"] == "idle")
    }

    fn power_all(&mut self, on: bool) -> StepResult {
        for st in &mut self.stations {
            st.power.set_power(on).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn wait_all(&self, timeout: Duration, cond: impl Fn(&serde_json::Value) -> bool) -> StepResult {
        let deadline = Instant::now() + timeout;
        for st in &self.stations {
            let mut last = None;
            loop {
                let s = lock(&st.dev).status();
                if s.as_ref().is_some_and(&cond) {
                    break;
                }
                if s.is_some() {
                    last = s;
                }
                if Instant::now() >= deadline {
                    let d = lock(&st.dev);
                    return Err(format!(
                        "device {} timed out; last status {}\n{}",
                        d.id,
                        last.map_or("none".into(), |v| v.to_string()),
                        d.log_tail(15)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn step(&mut self, s: &Step, cycle: u64) -> StepResult {
        match s {
            Step::Publish {
                releases,
                notify,
                corrupt_blob,
            } => {
                let name = &releases[(cycle as usize) % releases.len()];
                self.publish(name, *notify, *corrupt_blob)
            }
            Step::RepairBlob => {
                self.repair()?;
                self.fault_cleared();
                Ok(())
            }
            Step::WaitPhase { phase, timeout_s } => {
                self.wait_all(Duration::from_secs(*timeout_s), |s| s["phase"] == **phase)
            }
            Step::WaitLed { pattern, timeout_s } => {
                let table = PatternTable::new(
                    self.scenario.led.patterns.clone(),
                    self.scenario.led.tolerance,
                )
                .map_err(|e| e.to_string())?;
                for st in &mut self.stations {
                    let (ok, seen) = st
                        .led
                        .wait_for(&table, pattern, Duration::from_secs(*timeout_s))
                        .map_err(|e| e.to_string())?;
                    if !ok {
                        return Err(format!(
                            "the LED did not show '{pattern}' (last seen: {})",
                            seen.as_deref().unwrap_or("no pattern")
                        ));
                    }
                }
                Ok(())
            }
            Step::CutPower {
                after_ms,
                at_phase,
                timeout_s,
            } => {
                if let Some(m) = after_ms {
                    let d = self.rng.millis(*m);
                    std::thread::sleep(d);
                } else if let Some(p) = at_phase {
                    for st in &self.stations {
                        let mut d = lock(&st.dev);
                        if d.wait_exit(Duration::from_secs(*timeout_s)).is_none() {
                            return Err(format!(
                                "device {} did not reach the phase '{p}' within {timeout_s} s\n{}",
                                d.id,
                                d.log_tail(15)
                            ));
                        }
                    }
                }
                self.power_all(false)?;
                self.metrics.fault("power cut", self.stations.len());
                self.snapshot_volumes();
                Ok(())
            }
            Step::RestorePower => {
                for st in &self.stations {
                    lock(&st.dev).arm(None);
                }
                self.power_all(true)?;
                self.fault_cleared();
                Ok(())
            }
            Step::Partition | Step::Heal | Step::Throttle { .. } => {
                let lab = self.lab.ok_or(
                    "partition, heal and throttle need the rig's own lab (devices reach it through links the rig controls)",
                )?;
                match s {
                    Step::Partition => {
                        lab.links.partition(true);
                        self.metrics.fault("network partition", self.stations.len());
                    }
                    Step::Heal => {
                        lab.links.partition(false);
                        self.fault_cleared();
                    }
                    Step::Throttle { kib_per_s } => {
                        lab.links.throttle(kib_per_s.map(|k| k * 1024));
                        if kib_per_s.is_some() {
                            self.metrics.fault("throttle", self.stations.len());
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
            Step::SetClock { offset_s } => {
                for st in &self.stations {
                    lock(&st.dev).set_clock_offset(*offset_s);
                }
                if *offset_s != 0 {
                    self.metrics.fault("clock set", self.stations.len());
                }
                Ok(())
            }
            Step::FillDisk { keep_kib } => {
                for st in &self.stations {
                    lock(&st.dev)
                        .fill_disk(*keep_kib)
                        .map_err(|e| e.to_string())?;
                }
                self.metrics.fault("disk full", self.stations.len());
                Ok(())
            }
            Step::FreeDisk => {
                for st in &self.stations {
                    lock(&st.dev).free_disk().map_err(|e| e.to_string())?;
                }
                self.fault_cleared();
                Ok(())
            }
            Step::Expect {
                state,
                timeout_s,
                hold_s,
            } => self.expect(*state, Duration::from_secs(*timeout_s), *hold_s),
            Step::CheckVolume { workload, volume } => self.check_volume(workload, volume),
            Step::Sleep { ms } => {
                let d = self.rng.millis(*ms);
                std::thread::sleep(d);
                Ok(())
            }
        }
    }

    /// After a failed cycle: no recovery is pending (the failure is
    /// reported, not timed), and each device's last settled generation is
    /// what it reports now, so the next cycle judges old and new from there.
    fn resync(&mut self) {
        for (t, st) in self.track.iter_mut().zip(&self.stations) {
            t.restored_at = None;
            if let Some(g) = lock(&st.dev).status().and_then(|s| s["current"].as_u64()) {
                t.settled = g;
            }
        }
    }

    /// Time to recover counts from here to the next settled state.
    fn fault_cleared(&mut self) {
        for t in &mut self.track {
            t.restored_at = Some(Instant::now());
        }
    }

    fn image(&mut self, payload_kib: u64, generation: u64) -> Result<Image, String> {
        let seed = if payload_kib == 0 { 0 } else { generation };
        if let Some(i) = self.images.get(&(payload_kib, seed)) {
            return Ok(i.clone());
        }
        let i = build_sensor(
            &self.work.join("images"),
            &self.tools.berth,
            payload_kib,
            seed,
        )
        .map_err(|e| e.to_string())?;
        // Images of older generations are not needed again.
        self.images.retain(|(p, _), _| *p == 0);
        self.images.insert((payload_kib, seed), i.clone());
        Ok(i)
    }

    fn publish(&mut self, name: &str, notify: bool, corrupt: bool) -> StepResult {
        let spec = self.scenario.releases[name].clone();
        let g = self.next_gen;
        let image = self.image(spec.payload_kib, g)?;
        let file = self.work.join(format!("release-{g}.toml"));
        std::fs::write(&file, release_toml(&self.env, &spec, g, &image))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        if corrupt {
            self.corrupt(&image)?;
        }
        publish(
            &self.env,
            &self.tools,
            &file,
            std::slice::from_ref(&image.layout),
            notify,
        )
        .map_err(|e| e.to_string())?;
        self.gens.insert(g, name.to_string());
        self.next_gen += 1;
        Ok(())
    }

    /// Pushes `image`, then flips bytes in its largest blob in storage.
    fn corrupt(&mut self, image: &Image) -> StepResult {
        let lab = self
            .lab
            .ok_or("corrupt_blob needs the rig's own lab (it edits the registry's storage)")?;
        push(
            &self.env,
            &self.tools,
            &image.layout,
            &format!("{}/hil/sensor:latest-{}", self.env.registry, image.arch),
        )
        .map_err(|e| e.to_string())?;
        let largest = blobs(image)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|d| lab.blob_file(&d))
            .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .ok_or("the image has no blobs")?;
        let orig = std::fs::read(&largest)
            .map_err(|e| format!("cannot read {}: {e}", largest.display()))?;
        let mut bad = orig.clone();
        let mid = bad.len() / 2;
        for b in bad.iter_mut().skip(mid).take(64) {
            *b ^= 0xff;
        }
        std::fs::write(&largest, &bad)
            .map_err(|e| format!("cannot write {}: {e}", largest.display()))?;
        self.corrupted.push((largest, orig));
        self.metrics.fault("corrupted blob", 1);
        Ok(())
    }

    fn repair(&mut self) -> StepResult {
        for (p, bytes) in self.corrupted.drain(..) {
            std::fs::write(&p, bytes).map_err(|e| format!("cannot repair {}: {e}", p.display()))?;
        }
        Ok(())
    }
}

/// The release document (TOML) of `spec` at `generation`: every workload
/// runs the sensor `image` with a volume and an uptime health check.
pub fn release_toml(
    env: &Environment,
    spec: &ReleaseSpec,
    generation: u64,
    image: &Image,
) -> String {
    let mut t = format!(
        "schema = 1\nfleet = \"{}\"\ngeneration = {generation}\n",
        env.fleet
    );
    for w in &spec.workloads {
        let level = if w.changes { generation } else { 0 };
        t += &format!(
            "\n[[workloads]]\nname = \"{name}\"\n\
             image = {{ registry = \"{reg}\", repository = \"hil/sensor\", digests = {{ {arch} = \"{digest}\" }} }}\n\
             env = {{ SENSOR_INTERVAL = \"{iv}\", LEVEL = \"{level}\" }}\n\
             volumes = [{{ name = \"data\", path = \"/data\" }}]\n\
             health = {{ check = \"uptime\", seconds = 1, deadline_s = 20 }}\n",
            name = w.name,
            reg = env.registry,
            arch = image.arch,
            digest = image.manifest,
            iv = w.interval_ms,
        );
    }
    t
}

fn describe(s: &Step) -> &'static str {
    match s {
        Step::Publish { .. } => "publish",
        Step::RepairBlob => "repair_blob",
        Step::WaitPhase { .. } => "wait_phase",
        Step::WaitLed { .. } => "wait_led",
        Step::CutPower { .. } => "cut_power",
        Step::RestorePower => "restore_power",
        Step::Partition => "partition",
        Step::Heal => "heal",
        Step::Throttle { .. } => "throttle",
        Step::SetClock { .. } => "set_clock",
        Step::FillDisk { .. } => "fill_disk",
        Step::FreeDisk => "free_disk",
        Step::Expect { .. } => "expect",
        Step::CheckVolume { .. } => "check_volume",
        Step::Sleep { .. } => "sleep",
    }
}
