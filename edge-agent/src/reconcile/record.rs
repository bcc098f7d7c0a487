//! A container runtime that starts nothing and records everything
//! (`paths.runtime_backend = "record"`): fleet simulations run hundreds of
//! agents on one machine with it and measure the control plane (MQTT, TUF,
//! the registry, the update state machine) without the cost of containers.
//!
//! Under its root it keeps `containers.json` (the containers it holds, so a
//! restarted agent finds them as it finds real ones; emptying the root is a
//! reboot) and appends one JSON line per operation to `operations.jsonl`,
//! with the exact `berth-runtime launch` arguments a start would have used.
//! A started container counts as running until it is stopped; `exec` of a
//! command in it succeeds (exit 0), so a `command` health check passes.
//! Nothing it holds ever exits by itself, so it reports a change only when
//! it stops a container ([`ContainerRuntime::changes`]): an idle agent on it
//! wakes up for nothing, as one on a runtime that reports exits.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::runtime::{launch_args, ContainerRuntime, LaunchSpec, Running, RuntimeError};
use crate::names::WorkloadName;

/// The recording backend, with its own root directory.
#[derive(Debug)]
pub struct RecordingRuntime {
    root: PathBuf,
    lock: Mutex<()>,
    /// Bumped when a container stops.
    stops: tokio::sync::watch::Sender<u64>,
}

impl RecordingRuntime {
    pub fn new(root: &Path) -> Self {
        RecordingRuntime {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
            stops: tokio::sync::watch::Sender::new(0),
        }
    }

    fn containers_file(&self) -> PathBuf {
        self.root.join("containers.json")
    }

    /// The operations recorded so far, oldest first.
    pub fn operations(&self) -> Result<Vec<serde_json::Value>, RuntimeError> {
        let p = self.root.join("operations.jsonl");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(RuntimeError::Record { path: p, source }),
        };
        text.lines()
            .map(|l| serde_json::from_str(l).map_err(RuntimeError::List))
            .collect()
    }

    fn load(&self) -> Result<BTreeMap<String, serde_json::Value>, RuntimeError> {
        match std::fs::read(self.containers_file()) {
            Ok(b) => serde_json::from_slice(&b).map_err(RuntimeError::List),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io(&self.containers_file())(e)),
        }
    }

    fn save(&self, held: &BTreeMap<String, serde_json::Value>) -> Result<(), RuntimeError> {
        let (file, tmp) = (
            self.containers_file(),
            self.root.join("containers.json.new"),
        );
        let body = serde_json::to_vec(held).map_err(RuntimeError::List)?;
        std::fs::write(&tmp, body).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(io(&file))
    }

    fn record(
        &self,
        op: &str,
        workload: &str,
        extra: serde_json::Value,
    ) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let p = self.root.join("operations.jsonl");
        let mut line = serde_json::json!({ "op": op, "workload": workload, "at_ms": now_ms() });
        if let (Some(l), serde_json::Value::Object(e)) = (line.as_object_mut(), extra) {
            l.extend(e);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io(&p))?;
        writeln!(f, "{line}").map_err(io(&p))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Record {
        path: path.clone(),
        source,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ContainerRuntime for RecordingRuntime {
    fn start(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        let _g = self.guard();
        let name = spec.resolved.workload.name.to_string();
        let args = launch_args(spec)?;
        self.record("start", &name, serde_json::json!({ "args": args }))?;
        let mut held = self.load()?;
        held.insert(
            name,
            serde_json::json!({ "image": spec.image_dir, "measurement": spec.measurement }),
        );
        self.save(&held)
    }

    fn stop(&self, name: &WorkloadName, grace: std::time::Duration) -> Result<(), RuntimeError> {
        let _g = self.guard();
        let extra = serde_json::json!({ "grace_ms": grace.as_millis() as u64 });
        self.record("stop", name.as_str(), extra)?;
        let mut held = self.load()?;
        if held.remove(name.as_str()).is_some() {
            self.save(&held)?;
            self.stops.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.stops.subscribe())
    }

    fn list(&self) -> Result<Vec<Running>, RuntimeError> {
        let _g = self.guard();
        Ok(self
            .load()?
            .into_keys()
            .map(|name| Running {
                name,
                status: "running".into(),
                pid: None,
                exit: None,
            })
            .collect())
    }

    fn exec(&self, name: &WorkloadName, command: &[String]) -> Result<i32, RuntimeError> {
        let _g = self.guard();
        self.record(
            "exec",
            name.as_str(),
            serde_json::json!({ "command": command }),
        )?;
        if self.load()?.contains_key(name.as_str()) {
            Ok(0)
        } else {
            Err(RuntimeError::Failed {
                op: "exec",
                workload: name.to_string(),
                stderr: "no such container (recording runtime)".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{from_toml, resolve, Arch};

    fn spec(dir: &Path, name: &str) -> LaunchSpec {
        let r = from_toml(
            "t",
            &format!(
                r#"schema = 1
fleet = "f"
generation = 1
[[workloads]]
name = "{name}"
image = {{ registry = "r", repository = "x", digests = {{ amd64 = "sha256:1111111111111111111111111111111111111111111111111111111111111111" }} }}
volumes = [{{ name = "data", path = "/data" }}]
"#
            ),
        )
        .unwrap();
        LaunchSpec {
            resolved: resolve(&r, Arch::Amd64).unwrap().remove(0),
            image_dir: dir.join("images/abc"),
            measurement: "sha256:22".into(),
            volumes_dir: dir.join("volumes").join(name),
            secrets_dir: None,
        }
    }

    #[test]
    fn records_starts_and_stops_and_survives_a_restart_but_not_a_reboot() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("run");
        let rt = RecordingRuntime::new(&root);
        rt.start(&spec(d.path(), "a")).unwrap();
        rt.start(&spec(d.path(), "b")).unwrap();
        assert!(
            d.path().join("volumes/a/data").is_dir(),
            "volumes are created"
        );
        let names = |rt: &RecordingRuntime| -> Vec<String> {
            rt.list().unwrap().into_iter().map(|r| r.name).collect()
        };
        assert_eq!(names(&rt), ["a", "b"]);
        assert!(rt.list().unwrap().iter().all(|r| r.status == "running"));
        let a = WorkloadName::parse("a").unwrap();
        assert_eq!(rt.exec(&a, &["true".into()]).unwrap(), 0);
        let mut changes = rt.changes().expect("the recording runtime reports stops");
        assert!(!changes.has_changed().unwrap(), "nothing stopped yet");
        rt.stop(&a, std::time::Duration::from_secs(1)).unwrap();
        assert!(changes.has_changed().unwrap(), "a stop is a change");
        changes.borrow_and_update();
        assert!(
            rt.exec(&a, &["true".into()]).is_err(),
            "a stopped container cannot exec"
        );
        rt.stop(&a, std::time::Duration::from_secs(1)).unwrap();
        assert!(
            !changes.has_changed().unwrap(),
            "stopping what is not held changes nothing"
        );
        // A new agent process finds what the old one left.
        assert_eq!(names(&RecordingRuntime::new(&root)), ["b"]);
        let ops: Vec<String> = rt
            .operations()
            .unwrap()
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["op"].as_str().unwrap(),
                    o["workload"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            ops,
            ["start a", "start b", "exec a", "stop a", "exec a", "stop a"]
        );
        let first = &rt.operations().unwrap()[0];
        assert_eq!(first["args"][0], "launch");
        assert!(first["args"].as_array().unwrap().iter().any(|a| a == "a"));
        // A reboot empties the root: nothing runs.
        std::fs::remove_dir_all(&root).unwrap();
        assert!(names(&rt).is_empty());
    }

    #[test]
    fn an_unwritable_root_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let rt = RecordingRuntime::new(&file);
        let e = rt.start(&spec(d.path(), "a")).unwrap_err().to_string();
        assert!(e.contains("not-a-dir"), "{e}");
    }
}
