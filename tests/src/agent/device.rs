//! A device of the test deployment: one `berth-agent` process, its state
//! directory and configuration, started, stopped, killed or cut off.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, run, text};

/// One `berth-agent` process and its state directory.
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Started in an empty network namespace (see [`Device::offline`]).
    pub offline: bool,
    pub(super) child: Option<Child>,
}

impl Device {
    /// Makes the device an offline one: no MQTT link, started in an empty
    /// network namespace, watching `import_dir` for bundles.
    pub fn offline(&mut self, import_dir: &Path) {
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        let start = cfg.find("[mqtt]").unwrap();
        let end = cfg.find("[trust]").unwrap();
        let cfg = format!("{}{}", &cfg[..start], &cfg[end..]).replace(
            "[paths]\n",
            &format!("[paths]\nimport_dir = \"{}\"\n", import_dir.display()),
        );
        std::fs::write(&self.config, cfg).unwrap();
        self.offline = true;
    }

    /// `berth-agent import FILE` against this device's running agent.
    pub fn import(&self, bundle: &Path) -> Output {
        run(Command::new(bin("berth-agent"))
            .arg("--config")
            .arg(&self.config)
            .arg("import")
            .arg(bundle))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Starts the agent (its log appended to `agent.log`).
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the agent with extra environment (e.g. fault injection).
    pub fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "device {} already runs", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = if self.offline {
            // Its own network namespace with nothing in it: no broker, no
            // metadata server, no registry reachable.
            let mut c = Command::new("unshare");
            c.arg("--net").arg(bin("berth-agent"));
            c
        } else {
            Command::new(bin("berth-agent"))
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .env("BERTH_LOG", "info,berth_agent=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start berth-agent");
        self.child = Some(child);
    }

    /// SIGKILL: the agent gets no chance to clean up (its containers keep
    /// running, as after a crash of the agent alone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix_kill(c.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the agent to exit by itself (e.g. an injected crash).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Some(st);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the agent process is still alive.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `berth status --json` from the local API, or `None` while it is down.
    pub fn status(&self) -> Option<serde_json::Value> {
        let o = run(Command::new(bin("berth"))
            .arg("status")
            .arg("--json")
            .arg("--socket")
            .arg(self.socket()));
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// `berth history --json`.
    pub fn history(&self) -> serde_json::Value {
        let o = run(Command::new(bin("berth"))
            .arg("history")
            .arg("--json")
            .arg("--socket")
            .arg(self.socket()));
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).expect("history JSON")
    }

    /// Waits until the reported status satisfies `cond`; panics with the
    /// last status and the agent's log otherwise.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status() {
                if cond(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "device {}: timed out waiting for {what}; last status {last:?}\nagent log:\n{}",
            self.id,
            self.log()
        );
    }

    /// Waits until generation `g` is committed, the device idle, and every
    /// workload of it running.
    pub fn wait_generation(&mut self, g: u64) -> serde_json::Value {
        self.wait_for(&format!("generation {g}"), Duration::from_secs(90), |s| {
            s["phase"] == "idle"
                && s["current"].as_u64() == Some(g)
                && s["workloads"]
                    .as_array()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["status"] == "running"))
        })
    }

    /// Pid of a running workload, from the status.
    pub fn pid(status: &serde_json::Value, workload: &str) -> Option<i64> {
        status["workloads"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == workload && w["status"] == "running")?["pid"]
            .as_i64()
    }
}

fn nix_kill(pid: u32, sig: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
}

impl Drop for Device {
    fn drop(&mut self) {
        self.kill();
        // Containers outlive the agent by design: remove this device's.
        let root = self.dir.join("run");
        if root.exists() {
            let o = run(Command::new(bin("berth-runtime"))
                .arg("--root")
                .arg(&root)
                .arg("list")
                .arg("--quiet"));
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = run(Command::new(bin("berth-runtime"))
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id]));
            }
        }
    }
}
