//! The `ContainerRuntime` seam, and its real implementation: the
//! `berth-runtime` binary, run as a child process per operation (like a
//! container manager drives runc). A separate process per launch keeps the
//! agent's own process free of fork-after-threads hazards and lets the
//! runtime re-execute itself from a write-protected copy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::exits::{self, Exit, Exits};
use super::output;
use crate::names::WorkloadName;
use crate::release::document::Network;
use crate::release::Resolved;

/// Everything needed to launch one workload.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub resolved: Resolved,
    /// The unpacked image directory (`rootfs/`, `config.json`, `manifest`).
    pub image_dir: PathBuf,
    /// The trusted measurement recorded when the image was unpacked.
    pub measurement: String,
    /// Where this workload's named volumes live on the host.
    pub volumes_dir: PathBuf,
    /// The tmpfs directory of its secrets, mounted read-only at
    /// `/run/secrets` and given to its user (`None`: it uses none).
    pub secrets_dir: Option<PathBuf>,
}

/// A container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    pub status: String,
    pub pid: Option<i32>,
    /// How its process ended, when it stopped and that is known.
    pub exit: Option<Exit>,
}

/// A failed runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {binary}: {source}; check that berth-runtime is installed")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} of workload {workload} failed: {stderr}")]
    Failed {
        op: &'static str,
        workload: String,
        stderr: String,
    },
    #[error("cannot create volume {path}: {source}")]
    Volume {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("berth-runtime list printed something that is not its JSON: {0}")]
    List(serde_json::Error),
    #[error("cannot update the recording runtime's {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the reconciler needs from a container runtime.
pub trait ContainerRuntime: Send + Sync {
    /// Verifies and launches the workload, detached.
    fn start(&self, spec: &LaunchSpec) -> Result<(), RuntimeError>;
    /// Stops (TERM, then KILL after `grace`) and deletes the container. A
    /// container that does not exist is not an error.
    fn stop(&self, name: &WorkloadName, grace: std::time::Duration) -> Result<(), RuntimeError>;
    /// Every container this runtime knows, asked of the runtime itself.
    fn list(&self) -> Result<Vec<Running>, RuntimeError>;
    /// Every container, cheaply: what the runtime learnt of exits as they
    /// happened where it can (see [`Self::changes`]), else [`Self::list`].
    fn states(&self) -> Result<Vec<Running>, RuntimeError> {
        self.list()
    }
    /// A receiver that sees a new value whenever a container stops, if this
    /// runtime reports exits as they happen (else callers poll).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// The last lines a container printed, escaped and bounded
    /// ([`output::summarize`]): empty if it printed nothing, `None` if this
    /// runtime keeps no output.
    fn last_output(&self, _name: &WorkloadName) -> Option<String> {
        None
    }
    /// Runs a command inside the running container (its own profile) and
    /// returns its exit status.
    fn exec(&self, name: &WorkloadName, command: &[String]) -> Result<i32, RuntimeError>;
}

/// `berth-runtime` as a child process, with its own state root.
#[derive(Debug, Clone)]
pub struct CliRuntime {
    pub binary: PathBuf,
    pub root: PathBuf,
    /// Exits learnt as they happen (else every question is a `list`).
    exits: Option<Arc<Exits>>,
}

/// How long the last output of a stopped container may take to reach its log.
const OUTPUT_SETTLE: Duration = Duration::from_millis(300);

impl CliRuntime {
    /// Asks `berth-runtime` about every state.
    pub fn new(binary: PathBuf, root: PathBuf) -> Self {
        Self {
            binary,
            root,
            exits: None,
        }
    }

    /// Learns of exits through pidfds checked on `SIGCHLD` by a task on
    /// `handle`'s runtime (see [`exits`]), when the kernel has pidfds; the
    /// caller should be the child subreaper of what it launches
    /// ([`exits::become_subreaper`]) to learn exit statuses.
    pub fn watching(binary: PathBuf, root: PathBuf, handle: tokio::runtime::Handle) -> Self {
        let exits = match Exits::new(exits::records_dir(&root), &handle) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch containers through pidfds (Linux 5.3) and SIGCHLD: their states are polled");
                None
            }
        };
        Self {
            binary,
            root,
            exits,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        c
    }

    fn run(
        &self,
        mut c: Command,
        op: &'static str,
        workload: &str,
    ) -> Result<Vec<u8>, RuntimeError> {
        let out = c.output().map_err(|source| RuntimeError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Failed {
                op,
                workload: workload.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// The `berth-runtime launch` arguments for a spec (volumes are created).
pub fn launch_args(spec: &LaunchSpec) -> Result<Vec<String>, RuntimeError> {
    let w = &spec.resolved.workload;
    let mut a: Vec<String> = vec![
        "launch".into(),
        "--detach".into(),
        "--image".into(),
        spec.image_dir.display().to_string(),
        "--measurement".into(),
        spec.measurement.clone(),
        "--memory".into(),
        format!("{}m", w.resources.memory_mb()),
        "--cpus".into(),
        format!("{:.3}", w.resources.cpu_millis() as f64 / 1000.0),
        "--pids".into(),
        w.resources.pids().to_string(),
        "--network".into(),
        match w.network {
            Network::None => "none".into(),
            Network::Host => "host".into(),
        },
    ];
    if let Some(u) = &w.user {
        a.extend(["--user".into(), u.clone()]);
    }
    for (k, v) in &w.env {
        a.extend(["--env".into(), format!("{k}={v}")]);
    }
    for v in &w.volumes {
        let host = spec.volumes_dir.join(v.name.as_str());
        std::fs::create_dir_all(&host).map_err(|source| RuntimeError::Volume {
            path: host.clone(),
            source,
        })?;
        let ro = if v.read_only { "ro," } else { "" };
        a.extend([
            "--volume".into(),
            format!("{}:{}:{ro}U", host.display(), v.path),
        ]);
    }
    if let Some(dir) = &spec.secrets_dir {
        a.extend([
            "--volume".into(),
            format!("{}:{}:ro,U", dir.display(), crate::secrets::MOUNT),
        ]);
        // Only the variable and the file: the value is read inside the
        // container when the workload is executed.
        for s in &w.secrets {
            if let Some(var) = &s.env {
                a.extend([
                    "--secret-env".into(),
                    format!("{var}={}/{}", crate::secrets::MOUNT, s.name),
                ]);
            }
        }
    }
    for d in &w.devices {
        a.extend(["--device".into(), d.clone()]);
    }
    a.push(w.name.to_string());
    if let Some(args) = &w.args {
        a.push("--".into());
        a.extend(args.iter().cloned());
    }
    Ok(a)
}

#[derive(Deserialize)]
struct ListEntry {
    id: String,
    #[serde(default)]
    pid: Option<i32>,
    status: String,
}

impl CliRuntime {
    /// `berth-runtime list`, as printed.
    fn list_raw(&self) -> Result<Vec<Running>, RuntimeError> {
        let mut c = self.cmd();
        c.args(["list", "--format", "json"]);
        let out = self.run(c, "list", "*")?;
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        if text.is_empty() || text == "null" {
            return Ok(Vec::new());
        }
        let entries: Vec<ListEntry> = serde_json::from_str(text).map_err(RuntimeError::List)?;
        Ok(entries
            .into_iter()
            .map(|e| Running {
                name: e.id,
                status: e.status,
                pid: e.pid.filter(|p| *p > 0),
                exit: None,
            })
            .collect())
    }
}

/// The init pid `berth-runtime launch --detach` prints (`ID PID`).
fn launched_pid(stdout: &[u8]) -> Option<i32> {
    let text = String::from_utf8_lossy(stdout);
    let mut f = text.split_whitespace();
    let (_id, pid) = (f.next()?, f.next()?);
    pid.parse().ok().filter(|p| *p > 0)
}

impl ContainerRuntime for CliRuntime {
    fn start(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        let name = spec.resolved.workload.name.as_str();
        let mut c = self.cmd();
        c.args(launch_args(spec)?);
        let Some(exits) = &self.exits else {
            return self.run(c, "launch", name).map(drop);
        };
        let _launching = exits.launching();
        let out = self.run(c, "launch", name)?;
        match launched_pid(&out) {
            Some(pid) => exits.launched(name, pid),
            // Not what this runtime prints: learn the pid from its list.
            None => {
                let listed = self.list_raw()?;
                exits.sync(listed);
            }
        }
        Ok(())
    }

    fn stop(&self, name: &WorkloadName, grace: std::time::Duration) -> Result<(), RuntimeError> {
        let running = match self.exits.as_ref().and_then(|e| e.current()) {
            Some(known) => known.into_iter().find(|r| r.name == name.as_str()),
            None => self.list()?.into_iter().find(|r| r.name == name.as_str()),
        };
        let Some(r) = running else {
            return Ok(());
        };
        if r.status == "running" {
            let mut c = self.cmd();
            c.args(["kill", name.as_str(), "TERM"]);
            let _ = self.run(c, "stop", name.as_str());
            match &self.exits {
                Some(exits) => {
                    exits.wait_stopped(name.as_str(), grace);
                }
                None => {
                    let deadline = std::time::Instant::now() + grace;
                    while std::time::Instant::now() < deadline {
                        let still = self
                            .list()?
                            .into_iter()
                            .any(|r| r.name == name.as_str() && r.status == "running");
                        if !still {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
        }
        let mut c = self.cmd();
        c.args(["delete", "--force", name.as_str()]);
        self.run(c, "delete", name.as_str())?;
        if let Some(exits) = &self.exits {
            exits.forget(name.as_str());
        }
        Ok(())
    }

    fn states(&self) -> Result<Vec<Running>, RuntimeError> {
        match self.exits.as_ref().and_then(|e| e.current()) {
            Some(known) => Ok(known),
            None => self.list(),
        }
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.exits.as_ref().map(|e| e.subscribe())
    }

    fn last_output(&self, name: &WorkloadName) -> Option<String> {
        output::last_output(&self.root.join("logs"), name.as_str(), OUTPUT_SETTLE)
    }

    fn exec(&self, name: &WorkloadName, command: &[String]) -> Result<i32, RuntimeError> {
        let mut c = self.cmd();
        c.args(["exec", name.as_str(), "--"]).args(command);
        let out = c.output().map_err(|source| RuntimeError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        match out.status.code() {
            // 125: the runtime itself could not enter the container.
            Some(125) | None => Err(RuntimeError::Failed {
                op: "exec",
                workload: name.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
            Some(code) => Ok(code),
        }
    }

    fn list(&self) -> Result<Vec<Running>, RuntimeError> {
        let listed = self.list_raw()?;
        Ok(match &self.exits {
            Some(exits) => exits.sync(listed),
            None => listed,
        })
    }
}

/// Where a workload's volumes live under the agent's state directory.
pub fn volumes_dir(state: &Path, name: &WorkloadName) -> PathBuf {
    state.join("volumes").join(name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{from_toml, resolve, Arch};

    #[test]
    fn launch_arguments_carry_the_whole_definition() {
        let r = from_toml(
            "t",
            r#"schema = 1
fleet = "f"
generation = 1
[[workloads]]
name = "sensor"
image = { registry = "r", repository = "x", digests = { amd64 = "sha256:1111111111111111111111111111111111111111111111111111111111111111" } }
args = ["/bin/sensor", "--fast"]
env = { LEVEL = "debug" }
user = "1000:1000"
resources = { memory_mb = 32, cpu_millis = 250, pids = 16 }
volumes = [{ name = "readings", path = "/data" }, { name = "conf", path = "/etc/sensor", read_only = true }]
devices = ["/dev/ttyUSB0"]
"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = LaunchSpec {
            resolved: resolve(&r, Arch::Amd64).unwrap().remove(0),
            image_dir: "/var/lib/berth/images/abc".into(),
            measurement: "sha256:22".into(),
            volumes_dir: dir.path().join("v"),
            secrets_dir: None,
        };
        let a = launch_args(&spec).unwrap().join(" ");
        let v = dir.path().join("v").display().to_string();
        assert_eq!(
            a,
            format!(
                "launch --detach --image /var/lib/berth/images/abc --measurement sha256:22 \
                 --memory 32m --cpus 0.250 --pids 16 --network none --user 1000:1000 \
                 --env LEVEL=debug --volume {v}/readings:/data:U --volume {v}/conf:/etc/sensor:ro,U \
                 --device /dev/ttyUSB0 sensor -- /bin/sensor --fast"
            )
        );
        assert!(dir.path().join("v/readings").is_dir());
    }

    #[test]
    fn a_secret_variable_is_passed_as_its_name_and_file_only() {
        let sealed = "-----BEGIN AGE ENCRYPTED FILE-----\nx\n";
        let mut text = r#"schema = 2
fleet = "f"
generation = 1
[[workloads]]
name = "db"
image = { registry = "r", repository = "x", digests = { amd64 = "sha256:1111111111111111111111111111111111111111111111111111111111111111" } }
secrets = [{ name = "pw", env = "DB_PASSWORD" }, { name = "cert" }]
"#
        .to_string();
        for n in ["pw", "cert"] {
            text += &format!(
                "[[secrets]]\nname = \"{n}\"\ndigest = \"{}\"\nsealed = {sealed:?}\n",
                crate::secrets::digest(sealed)
            );
        }
        let r = from_toml("t", &text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = LaunchSpec {
            resolved: resolve(&r, Arch::Amd64).unwrap().remove(0),
            image_dir: "/img".into(),
            measurement: "sha256:22".into(),
            volumes_dir: dir.path().join("v"),
            secrets_dir: Some("/run/berth/secrets/db".into()),
        };
        let a = launch_args(&spec).unwrap().join(" ");
        assert!(
            a.ends_with(
                "--volume /run/berth/secrets/db:/run/secrets:ro,U \
                 --secret-env DB_PASSWORD=/run/secrets/pw db"
            ),
            "{a}"
        );
    }

    #[test]
    fn only_text_without_nul_can_be_a_variable() {
        assert!(crate::secrets::check_env_value(b"s3cret\n").is_ok());
        let e = crate::secrets::check_env_value(b"a\0b").unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        let e = crate::secrets::check_env_value(b"ab\xff").unwrap_err();
        assert!(e.contains("not UTF-8 text (at byte 2)"), "{e}");
    }
}
