//! The simulated backend: a device under test is a `berth-agent` process
//! with its own state directory (optionally on a small tmpfs, for disk-full
//! faults), its own runtime root and local API socket.
//!
//! Power: on = start the agent in a process group of its own; off = SIGKILL
//! of that whole group *and* of every container the agent launched (found
//! through `berth-runtime --root <device>/run list`, killed with
//! `kill --all … KILL` and removed with `delete --force`), then the runtime
//! root is emptied, as a reboot empties `/run` on a real gateway. What this
//! cannot simulate: the kernel's page cache survives the "cut" (a real power
//! loss drops unsynced writes), so the durability this proves is that of
//! the agent's and workloads' own ordering, not of the storage stack.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_agent::api::{request, Request};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::lab::peers::run;
use crate::lab::{enroll, Environment, LabError, Tools};

/// A simulated device's failure.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("device {device}: {detail}")]
    Device { device: String, detail: String },
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// How a simulated device is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    /// Broker port devices connect to (the lab's link, or the fleet's broker).
    pub broker_port: u16,
    /// Periodic refresh (a failed fetch is retried at the next one).
    pub refresh_s: u64,
    /// Put the state directory on a tmpfs of this many MiB (needs root).
    pub tmpfs_state_mib: Option<u64>,
    /// Use the agent's recording runtime (no containers) instead of
    /// `berth-runtime`: fleet simulations measure the control plane.
    pub record_runtime: bool,
    /// Give the agent a status LED on a simulated pin (`led.pin =
    /// "sim:<device>/led"`, see [`SimDevice::led_path`]).
    pub led: bool,
}

/// One simulated device.
#[derive(Debug)]
pub struct SimDevice {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    tools: Tools,
    child: Option<Child>,
    /// Phases at which the agent of the next boot dies on purpose.
    armed: Option<String>,
    /// Clock offset of the next boot, seconds.
    clock_offset: i64,
    tmpfs: Option<PathBuf>,
    record: bool,
}

impl SimDevice {
    /// Enrolls device `id` of `env` under `dir` (not started).
    pub fn create(
        env: &Environment,
        tools: &Tools,
        dir: &Path,
        id: &str,
        opts: &SimOptions,
    ) -> Result<SimDevice, SimError> {
        let fail = |detail: String| SimError::Device {
            device: id.to_string(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
        let tmpfs = match opts.tmpfs_state_mib {
            Some(mib) => {
                let m = dir.join("disk");
                std::fs::create_dir_all(&m).map_err(|e| LabError::io(&m, e))?;
                run(
                    "mounting the device's tmpfs state disk (needs root)",
                    Command::new("mount")
                        .args(["-t", "tmpfs", "-o"])
                        .arg(format!("size={}m,mode=0755", mib))
                        .arg("berth-hil")
                        .arg(&m),
                )?;
                Some(m)
            }
            None => None,
        };
        let state = tmpfs.as_ref().unwrap_or(&dir.to_path_buf()).join("state");
        let id_pem = enroll(env, id)?;
        let config = dir.join("agent.toml");
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let text = format!(
            "[device]\nid = \"{id}\"\nfleet = \"{fleet}\"\n\n\
             [paths]\nstate = {state}\nsocket = {socket}\nruntime = {runtime}\nruntime_root = {rroot}\nruntime_backend = \"{backend}\"\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nca = {ca}\ncert = {cert}\nkey = {key}\nprefix = \"{prefix}\"\n\n\
             [trust]\nmetadata_url = \"{meta}\"\nroot = {root}\nca = {mca}\nrefresh_s = {refresh}\njitter_s = 1\n\n\
             [registry]\nca = {rca}\nuser = \"{user}\"\npassword_file = {pw}\n{led}",
            fleet = env.fleet,
            state = q(&state),
            socket = q(&dir.join("agent.sock")),
            runtime = q(&tools.runtime),
            rroot = q(&dir.join("run")),
            backend = if opts.record_runtime { "record" } else { "berth-runtime" },
            port = opts.broker_port,
            ca = q(&env.broker.ca),
            cert = q(&id_pem.cert),
            key = q(&id_pem.key),
            prefix = env.broker.prefix,
            meta = env.metadata_url,
            root = q(&env.root),
            mca = q(&env.metadata_ca),
            refresh = opts.refresh_s,
            rca = q(&env.registry_ca),
            user = env.registry_user,
            pw = q(&env.registry_password_file),
            led = if opts.led {
                let pin = toml::Value::String(format!("sim:{}", led_path(dir).display()));
                format!("\n[led]\npin = {pin}\n")
            } else {
                String::new()
            },
        );
        std::fs::write(&config, text).map_err(|e| fail(e.to_string()))?;
        Ok(SimDevice {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            config,
            state,
            tools: tools.clone(),
            child: None,
            armed: None,
            clock_offset: 0,
            tmpfs,
            record: opts.record_runtime,
        })
    }

    fn fail(&self, detail: String) -> SimError {
        SimError::Device {
            device: self.id.clone(),
            detail,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn runtime_root(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The agent's simulated LED pin (written only with `SimOptions::led`).
    pub fn led_path(&self) -> PathBuf {
        led_path(&self.dir)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The last `n` lines of the agent's log, for failure reports.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Makes the agent of the next boot die right after its update state
    /// enters `phase` (durably), so the rig can cut power at that instant.
    pub fn arm(&mut self, phase: Option<&str>) {
        self.armed = phase.map(str::to_string);
    }

    /// Sets the clock of the next boot `secs` off the host's (as after an
    /// RTC reset); 0 = the host's clock.
    pub fn set_clock_offset(&mut self, secs: i64) {
        self.clock_offset = secs;
    }

    pub fn powered(&self) -> bool {
        self.child.is_some()
    }

    /// The agent's process id while powered.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Power on: start the agent in its own process group.
    pub fn power_on(&mut self) -> Result<(), SimError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| self.fail(format!("cannot open its log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| self.fail(format!("cannot open its log: {e}")))?;
        let mut cmd = Command::new(&self.tools.agent);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.arg("--config")
            .arg(&self.config)
            .env(
                "BERTH_LOG",
                std::env::var("BERTH_HIL_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("BERTH_FAULT_CRASH_AFTER")
            .env_remove("BERTH_CLOCK_OFFSET_SECS")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(p) = &self.armed {
            cmd.env("BERTH_FAULT_CRASH_AFTER", p);
        }
        if self.clock_offset != 0 {
            cmd.env("BERTH_CLOCK_OFFSET_SECS", self.clock_offset.to_string());
        }
        let child = cmd.spawn().map_err(|e| {
            self.fail(format!(
                "cannot start {}: {e}; build it (cargo build --bins)",
                self.tools.agent.display()
            ))
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Power off: SIGKILL of the agent's process group and of every
    /// container, then the runtime root emptied (a reboot clears /run).
    pub fn power_off(&mut self) -> Result<(), SimError> {
        if let Some(mut c) = self.child.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
        let root = self.runtime_root();
        if root.exists() && !self.record {
            for id in self.containers()? {
                let rt = |args: &[&str]| {
                    Command::new(&self.tools.runtime)
                        .arg("--root")
                        .arg(&root)
                        .args(args)
                        .stdin(Stdio::null())
                        .output()
                };
                let _ = rt(&["kill", "--all", &id, "KILL"]);
                let o = rt(&["delete", "--force", &id])
                    .map_err(|e| self.fail(format!("cannot run berth-runtime: {e}")))?;
                if !o.status.success() && self.containers()?.contains(&id) {
                    return Err(self.fail(format!(
                        "cannot remove container {id} at power-off: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )));
                }
            }
        }
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .map_err(|e| self.fail(format!("cannot empty {}: {e}", root.display())))?;
        }
        let _ = std::fs::remove_file(self.socket());
        // An unpowered LED is dark: its pin's file goes with the power.
        for p in [self.led_path(), self.dir.join("led.1")] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.fail(format!("cannot remove {}: {e}", p.display())))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A clean shutdown (SIGTERM, the agent stops by itself; containers
    /// keep running, as when the agent is restarted by its supervisor).
    pub fn restart_agent(&mut self) -> Result<(), SimError> {
        if let Some(mut c) = self.child.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
        self.power_on()
    }

    /// The agent's exit status once it has exited by itself (an armed
    /// crash point), polled for up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = &mut self.child {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(st);
                }
            } else {
                return None;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The live status from the local API (`None` while the agent is down).
    pub fn status(&self) -> Option<serde_json::Value> {
        request(&self.socket(), &Request::Status).ok()
    }

    /// Containers the device's runtime knows.
    pub fn containers(&self) -> Result<Vec<String>, SimError> {
        let root = self.runtime_root();
        if !root.exists() {
            return Ok(vec![]);
        }
        if self.record {
            let rt = berth_agent::reconcile::record::RecordingRuntime::new(&root);
            let held = berth_agent::reconcile::runtime::ContainerRuntime::list(&rt)
                .map_err(|e| self.fail(e.to_string()))?;
            return Ok(held.into_iter().map(|r| r.name).collect());
        }
        let o = run(
            "listing the device's containers",
            Command::new(&self.tools.runtime)
                .arg("--root")
                .arg(&root)
                .args(["list", "--quiet"]),
        )?;
        let mut v: Vec<String> = String::from_utf8_lossy(&o)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Host directory of `workload`'s volume `name`.
    pub fn volume(&self, workload: &str, name: &str) -> PathBuf {
        self.state.join("volumes").join(workload).join(name)
    }

    fn filler(&self) -> Option<PathBuf> {
        self.tmpfs.as_ref().map(|m| m.join("filler"))
    }

    /// Fills the device's disk until `keep_kib` are left; returns bytes written.
    pub fn fill_disk(&self, keep_kib: u64) -> Result<u64, SimError> {
        use std::io::Write;
        let p = self.filler().ok_or_else(|| {
            self.fail("fill_disk needs the state directory on a tmpfs: set device.tmpfs_state_mib in the scenario".into())
        })?;
        let mut f = std::fs::File::create(&p).map_err(|e| self.fail(e.to_string()))?;
        let chunk = vec![0x5au8; 64 << 10];
        let mut written = 0u64;
        while let Ok(n) = f.write(&chunk) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        let keep = written.saturating_sub(keep_kib * 1024);
        f.set_len(keep).map_err(|e| self.fail(e.to_string()))?;
        Ok(keep)
    }

    /// Frees what [`SimDevice::fill_disk`] took.
    pub fn free_disk(&self) -> Result<(), SimError> {
        if let Some(p) = self.filler() {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.fail(e.to_string()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Where the agent of the device in `dir` drives its LED: beside its
/// configuration, not in its state directory, which disk-full faults fill.
fn led_path(dir: &Path) -> PathBuf {
    dir.join("led")
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let _ = self.power_off();
        if let Some(m) = self.tmpfs.take() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}
