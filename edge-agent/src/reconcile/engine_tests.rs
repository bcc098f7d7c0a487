//! The engine with an in-memory runtime and image provider (pure logic:
//! the real runtime is exercised by the end-to-end tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::{Engine, ImageProvider, Offered, Unpacked};
use super::exits::Exit;
use super::runtime::{ContainerRuntime, LaunchSpec, Running, RuntimeError};
use super::store::UpdateStore;
use crate::attest::LaunchLog;
use crate::names::{Digest, WorkloadName};
use crate::release::document::{Arch, ImageSpec};
use crate::release::validate::DeviceIdentity;

#[derive(Default)]
struct World {
    /// name -> (args, running, pid)
    containers: BTreeMap<String, (Vec<String>, bool, i32)>,
    next_pid: i32,
    starts: Vec<String>,
    stops: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeRuntime(Arc<Mutex<World>>);

impl ContainerRuntime for FakeRuntime {
    fn start(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        let mut w = self.0.lock().unwrap();
        let name = spec.resolved.workload.name.to_string();
        let args = spec.resolved.workload.args.clone().unwrap_or_default();
        if args.first().map(String::as_str) == Some("refuse") {
            return Err(RuntimeError::Failed {
                op: "launch",
                workload: name,
                stderr: "refused".into(),
            });
        }
        w.next_pid += 1;
        let pid = w.next_pid;
        let running = args.first().map(String::as_str) != Some("crash");
        w.containers.insert(name.clone(), (args, running, pid));
        w.starts.push(name);
        Ok(())
    }

    fn stop(&self, name: &WorkloadName, _grace: Duration) -> Result<(), RuntimeError> {
        let mut w = self.0.lock().unwrap();
        if w.containers.remove(name.as_str()).is_some() {
            w.stops.push(name.to_string());
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<Running>, RuntimeError> {
        let w = self.0.lock().unwrap();
        Ok(w.containers
            .iter()
            .map(|(n, (_, running, pid))| Running {
                name: n.clone(),
                status: if *running { "running" } else { "stopped" }.into(),
                pid: running.then_some(*pid),
                exit: (!running).then_some(Exit::Code(3)),
            })
            .collect())
    }

    fn exec(&self, _name: &WorkloadName, command: &[String]) -> Result<i32, RuntimeError> {
        Ok(if command == ["true"] { 0 } else { 1 })
    }

    fn last_output(&self, name: &WorkloadName) -> Option<String> {
        let w = self.0.lock().unwrap();
        let (args, _, _) = w.containers.get(name.as_str())?;
        Some(format!("{name}: {}", args.join(" ")))
    }
}

struct FakeImages(Arc<Mutex<Vec<String>>>);

impl ImageProvider for FakeImages {
    fn ensure(&self, image: &ImageSpec, digest: &Digest) -> Result<Unpacked, String> {
        if image.repository == "missing" {
            return Err("registry answered 404 for the manifest".into());
        }
        self.0.lock().unwrap().push(digest.to_string());
        Ok(Unpacked {
            dir: format!("/images/{}", digest.hex()).into(),
            measurement: "sha256:m".into(),
        })
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    engine: Engine,
    world: Arc<Mutex<World>>,
}

fn rig_in(dir: tempfile::TempDir, world: Arc<Mutex<World>>) -> Rig {
    // A reopen waits for the previous handle's flusher to release the lock
    // (a restart is a new process in production).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let db = loop {
        match sled::open(dir.path().join("db")) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("lock"), "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let engine = Engine {
        store: UpdateStore::with_db(dir.path(), db.clone()).unwrap(),
        actual: db.open_tree("actual").unwrap(),
        log: LaunchLog::new(dir.path(), db).unwrap(),
        runtime: Box::new(FakeRuntime(world.clone())),
        images: Box::new(FakeImages(Arc::default())),
        me: DeviceIdentity {
            fleet: "pumps".into(),
            device: "gw-1".into(),
            arch: Arch::Amd64,
        },
        policy: crate::config::Policy {
            allow_devices: vec!["/dev/ttyUSB0".into()],
            allow_host_network: false,
        },
        state_dir: dir.path().to_path_buf(),
        gate_interval: Duration::from_millis(1),
        stop_grace: Duration::ZERO,
        now_ms: || 1,
        secrets: None,
    };
    Rig {
        _dir: dir,
        engine,
        world,
    }
}

fn rig() -> Rig {
    rig_in(tempfile::tempdir().unwrap(), Arc::default())
}

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A release document: `(name, first arg, health)` per workload.
fn doc(generation: u64, workloads: &[(&str, &str, &str)]) -> Vec<u8> {
    let ws: Vec<serde_json::Value> = workloads
        .iter()
        .map(|(name, arg, health)| {
            serde_json::json!({
                "name": name,
                "image": {"registry": "r", "repository": if *arg == "missing" { "missing" } else { "x" },
                          "digests": {"amd64": D1}},
                "args": [arg],
                "health": serde_json::from_str::<serde_json::Value>(health).unwrap(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schema": 1, "fleet": "pumps", "generation": generation, "workloads": ws
    }))
    .unwrap()
}

const UP: &str = r#"{"check":"command","command":["true"],"deadline_s":1}"#;
const NEVER: &str = r#"{"check":"command","command":["false"],"deadline_s":1}"#;

fn running(r: &Rig) -> Vec<(String, String)> {
    let w = r.world.lock().unwrap();
    w.containers
        .iter()
        .filter(|(_, c)| c.1)
        .map(|(n, c)| (n.clone(), c.0[0].clone()))
        .collect()
}

fn result(o: Offered) -> String {
    match o {
        Offered::Finished(o) => o.result,
        Offered::Ignored(why) => format!("ignored: {why}"),
        Offered::Known(why) => format!("known: {why}"),
    }
}

#[test]
fn a_release_commits_and_an_update_restarts_only_what_changed() {
    let r = rig();
    let v1 = doc(1, &[("db", "a", UP), ("web", "a", UP)]);
    assert_eq!(result(r.engine.offer(&v1).unwrap()), "committed");
    let v2 = doc(2, &[("db", "a", UP), ("web", "b", UP)]);
    assert_eq!(result(r.engine.offer(&v2).unwrap()), "committed");
    assert_eq!(
        running(&r),
        [("db".into(), "a".into()), ("web".into(), "b".into())]
    );
    let w = r.world.lock().unwrap();
    assert_eq!(w.starts, ["db", "web", "web"]);
    assert_eq!(w.stops, ["web"]);
    drop(w);
    let s = r.engine.store.load().unwrap();
    assert_eq!(s.current.unwrap().number, 2);
    assert_eq!(r.engine.log.records().unwrap().len(), 3);
}

#[test]
fn an_unhealthy_release_rolls_back_to_the_previous_one() {
    let r = rig();
    r.engine
        .offer(&doc(1, &[("db", "a", UP), ("web", "a", UP)]))
        .unwrap();
    let v2 = doc(2, &[("db", "a", UP), ("web", "b", NEVER)]);
    let Offered::Finished(o) = r.engine.offer(&v2).unwrap() else {
        panic!("ignored")
    };
    assert_eq!(o.result, "rolled-back");
    assert!(
        o.reason.contains("workload web failed its health check"),
        "{o:?}"
    );
    assert_eq!(
        running(&r),
        [("db".into(), "a".into()), ("web".into(), "a".into())]
    );
    // The failed generation is not retried; a newer one is.
    let again = result(r.engine.offer(&v2).unwrap());
    assert!(
        again.starts_with("known: generation 2 already failed"),
        "{again}"
    );
    // Offered again (an agent restart): the committed one is known, quietly.
    let v1 = doc(1, &[("db", "a", UP), ("web", "a", UP)]);
    let same = result(r.engine.offer(&v1).unwrap());
    assert!(
        same.starts_with("known: generation 1 is the committed"),
        "{same}"
    );
    let v3 = doc(3, &[("db", "a", UP), ("web", "c", UP)]);
    assert_eq!(result(r.engine.offer(&v3).unwrap()), "committed");
}

#[test]
fn a_workload_that_crashes_or_cannot_start_rolls_back() {
    let r = rig();
    r.engine.offer(&doc(1, &[("db", "a", UP)])).unwrap();
    for (g, arg) in [(2, "crash"), (3, "refuse")] {
        let o = r.engine.offer(&doc(g, &[("db", arg, UP)])).unwrap();
        let Offered::Finished(o) = o else { panic!() };
        assert_eq!(o.result, "rolled-back", "{arg}");
        assert_eq!(running(&r), [("db".into(), "a".into())], "{arg}");
        if arg == "crash" {
            // How it ended and what it printed last, in the reason.
            assert!(
                o.reason.contains("workload db failed its health check: it stopped during the health gate (exit status 3); last output: \"db: crash\""),
                "{}",
                o.reason
            );
            let h = r.engine.store.history().unwrap();
            assert_eq!(h.last().unwrap().outcome.reason, o.reason);
            assert_eq!(r.engine.store.failure(2).unwrap(), Some(o.reason.clone()));
            let s = crate::status::status(&r.engine).unwrap();
            assert_eq!((s.failed, s.failure), (Some(2), Some(o.reason)));
        }
    }
}

#[test]
fn a_fetch_failure_touches_nothing_and_can_be_retried() {
    let r = rig();
    r.engine.offer(&doc(1, &[("db", "a", UP)])).unwrap();
    let starts = r.world.lock().unwrap().starts.len();
    let v2 = doc(2, &[("db", "a", UP), ("cache", "missing", UP)]);
    let Offered::Finished(o) = r.engine.offer(&v2).unwrap() else {
        panic!()
    };
    assert_eq!(o.result, "fetch-failed");
    assert!(o.reason.contains("image of workload cache") && o.reason.contains("404"));
    assert_eq!(r.world.lock().unwrap().starts.len(), starts);
    assert_eq!(running(&r), [("db".into(), "a".into())]);
}

#[test]
fn releases_for_others_are_ignored_and_old_ones_refused() {
    let r = rig();
    r.engine.offer(&doc(5, &[("db", "a", UP)])).unwrap();
    let mut other: serde_json::Value = serde_json::from_slice(&doc(6, &[("db", "b", UP)])).unwrap();
    other["fleet"] = "fans".into();
    let o = r
        .engine
        .offer(&serde_json::to_vec(&other).unwrap())
        .unwrap();
    assert_eq!(result(o), "ignored: release is for fleet fans");
    let e = r.engine.offer(&doc(4, &[("db", "old", UP)])).unwrap_err();
    assert!(e.to_string().contains("rollback protection"), "{e}");
    assert_eq!(running(&r), [("db".into(), "a".into())]);
}

#[test]
fn recovery_after_a_crash_mid_switch_restores_the_committed_generation() {
    let dir = tempfile::tempdir().unwrap();
    let world: Arc<Mutex<World>> = Arc::default();
    let path = dir.path().to_path_buf();
    let r = rig_in(dir, world.clone());
    r.engine
        .offer(&doc(1, &[("db", "a", UP), ("web", "a", UP)]))
        .unwrap();
    // Simulate a crash after the switch began: v2's web already started.
    use super::machine::{Event, Generation};
    let v2 = doc(2, &[("db", "a", UP), ("web", "b", UP)]);
    let g = Generation {
        number: 2,
        digest: "sha256:x".into(),
        document: v2,
    };
    for e in [Event::Release(g), Event::Fetched, Event::SwitchBegun] {
        r.engine.store.apply(e, 1).unwrap();
    }
    {
        let mut w = world.lock().unwrap();
        w.containers.remove("web");
        w.containers
            .insert("web".into(), (vec!["b".into()], true, 99));
    }
    r.engine.actual.insert("web", "sha256:v2-web").unwrap();
    let Rig { _dir, engine, .. } = r;
    drop(engine);
    // Restart on the same state directory.
    let r = rig_in(_dir, world.clone());
    assert_eq!(r.engine.state_dir, path);
    let o = r.engine.recover().unwrap().unwrap();
    assert_eq!(o.result, "rolled-back");
    assert_eq!(
        running(&r),
        [("db".into(), "a".into()), ("web".into(), "a".into())]
    );
    let s = r.engine.store.load().unwrap();
    assert_eq!(s.current.unwrap().number, 1);
    assert_eq!(s.failed, Some(2));
}

#[test]
fn recovery_when_idle_restarts_workloads_that_died_and_stops_strangers() {
    let r = rig();
    r.engine
        .offer(&doc(1, &[("db", "a", UP), ("web", "a", UP)]))
        .unwrap();
    {
        let mut w = r.world.lock().unwrap();
        w.containers.get_mut("db").unwrap().1 = false; // died while the agent was down
        w.containers
            .insert("stray".into(), (vec!["x".into()], true, 77));
    }
    assert!(r.engine.recover().unwrap().is_none());
    assert_eq!(
        running(&r),
        [("db".into(), "a".into()), ("web".into(), "a".into())]
    );
}

#[test]
fn device_policy_refuses_host_network_and_unlisted_devices() {
    let r = rig();
    r.engine.offer(&doc(1, &[("db", "a", UP)])).unwrap();
    let base: serde_json::Value = serde_json::from_slice(&doc(2, &[("db", "b", UP)])).unwrap();
    let mut host = base.clone();
    host["workloads"][0]["network"] = "host".into();
    let e = r
        .engine
        .offer(&serde_json::to_vec(&host).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("host network") && e.contains("workload db"),
        "{e}"
    );
    let mut dev = base.clone();
    dev["workloads"][0]["devices"] = serde_json::json!(["/dev/ttyUSB0", "/dev/mem"]);
    let e = r
        .engine
        .offer(&serde_json::to_vec(&dev).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("device /dev/mem"), "{e}");
    // Nothing changed, and an allowed device passes.
    assert_eq!(r.engine.store.load().unwrap().current.unwrap().number, 1);
    let mut ok = base;
    ok["workloads"][0]["devices"] = serde_json::json!(["/dev/ttyUSB0"]);
    assert_eq!(
        result(r.engine.offer(&serde_json::to_vec(&ok).unwrap()).unwrap()),
        "committed"
    );
}

#[test]
fn the_local_api_reports_status_history_and_a_verifiable_attestation() {
    use crate::api::{Handler, Request};
    use crate::status::AgentHandler;
    let r = rig();
    r.engine.offer(&doc(1, &[("db", "a", UP)])).unwrap();
    r.engine.offer(&doc(2, &[("db", "b", NEVER)])).unwrap();
    let Rig { _dir, engine, .. } = r;
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let h = AgentHandler {
        engine: Arc::new(engine),
        key: key.clone(),
        import: None,
        runtime: ("/bin/false".into(), "/".into()),
    };
    let s = h.handle(Request::Status).unwrap();
    assert_eq!(s["phase"], "idle");
    assert_eq!(s["current"], 1);
    assert_eq!(s["failed"], 2);
    assert_eq!(s["workloads"][0]["name"], "db");
    assert_eq!(s["workloads"][0]["status"], "running");
    let hist = h.handle(Request::History).unwrap();
    assert_eq!(hist[0]["result"], "committed");
    assert_eq!(hist[1]["result"], "rolled-back");
    assert!(hist[1]["reason"].as_str().unwrap().contains("db"));
    let a: crate::attest::Attestation =
        serde_json::from_value(h.handle(Request::Attest { nonce: "n7".into() }).unwrap()).unwrap();
    // v1 db, v2 db (failed gate), v1 db again on rollback: every launch is logged.
    let records = crate::attest::verify(&a, &key.verifying_key(), "n7").unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records.iter().map(|r| r.generation).collect::<Vec<_>>(),
        [1, 2, 1]
    );
    let e = h
        .handle(Request::Logs {
            workload: "../x".into(),
        })
        .unwrap_err();
    assert!(e.contains("workload name"), "{e}");
}

#[test]
fn the_daemon_offers_each_new_document_once_and_retries_fetch_failures() {
    use crate::daemon::{run, ReleaseSource, Schedule};
    struct Source(Mutex<Vec<Option<Vec<u8>>>>, Mutex<u32>);
    impl ReleaseSource for Source {
        fn refresh(&self) -> Result<Option<Vec<u8>>, String> {
            *self.1.lock().unwrap() += 1;
            let mut q = self.0.lock().unwrap();
            if q.len() > 1 {
                Ok(q.remove(0))
            } else {
                Ok(q[0].clone())
            }
        }
    }
    let r = rig();
    let world = r.world.clone();
    let Rig { _dir, engine, .. } = r;
    let engine = Arc::new(engine);
    let v1 = doc(1, &[("db", "a", UP)]);
    let v2_broken_fetch = doc(2, &[("db", "missing", UP)]);
    let v3 = doc(3, &[("db", "c", UP)]);
    let source = Arc::new(Source(
        Mutex::new(vec![
            None,
            Some(v1.clone()),
            Some(v1),
            Some(v2_broken_fetch.clone()),
            Some(v2_broken_fetch),
            Some(v3),
        ]),
        Mutex::new(0),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(run(
        engine.clone(),
        source.clone(),
        None,
        Schedule {
            every: Duration::from_millis(20),
            jitter: Duration::ZERO,
        },
        Default::default(),
        None,
        async {
            let _ = rx.await;
        },
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.store.load().unwrap().current.map(|g| g.number) != Some(3) {
        assert!(std::time::Instant::now() < deadline, "v3 never committed");
        std::thread::sleep(Duration::from_millis(10));
    }
    tx.send(()).unwrap();
    rt.block_on(task).unwrap();
    // v1 started once (its repeat was not re-offered), v3 once.
    let w = world.lock().unwrap();
    assert_eq!(w.starts, ["db", "db"]);
    let h = engine.store.history().unwrap();
    let results: Vec<_> = h
        .iter()
        .map(|e| (e.outcome.generation, e.outcome.result.as_str()))
        .collect();
    // The broken fetch of v2 was tried on both triggers that offered it.
    assert_eq!(
        results,
        [
            (1, "committed"),
            (2, "fetch-failed"),
            (2, "fetch-failed"),
            (3, "committed")
        ]
    );
}

#[test]
fn a_crash_looping_workload_is_restarted_with_backoff_and_never_mixed() {
    use super::supervise::Supervisor;
    use std::time::Instant;
    let r = rig();
    let v1 = serde_json::to_vec(&{
        let mut d: serde_json::Value = serde_json::from_slice(&doc(1, &[("db", "a", UP), ("log", "a", UP)])).unwrap();
        d["workloads"][0]["restart"] = serde_json::json!({"policy": "always", "backoff_initial_ms": 1000, "backoff_max_ms": 4000});
        d["workloads"][1]["restart"] = serde_json::json!({"policy": "never"});
        d
    })
    .unwrap();
    r.engine.offer(&v1).unwrap();
    let kill = |name: &str| r.world.lock().unwrap().containers.get_mut(name).unwrap().1 = false;
    let mut sup = Supervisor::default();
    let t0 = Instant::now();
    assert!(sup.tick(&r.engine, t0).is_empty());
    kill("db");
    kill("log");
    let ev = sup.tick(&r.engine, t0);
    let kinds: Vec<String> = ev
        .iter()
        .map(|e| format!("{} {}", e["event"], e["workload"]))
        .collect();
    assert_eq!(kinds, ["\"restarted\" \"db\"", "\"stopped\" \"log\""]);
    // Each says how the process ended and what it printed last.
    for e in &ev {
        assert_eq!(e["exit"], "exit status 3", "{e}");
        assert!(e["output"].as_str().unwrap().ends_with(": a"), "{e}");
    }
    // Crashes again at once: the next restart waits for the backoff.
    kill("db");
    assert!(sup
        .tick(&r.engine, t0 + Duration::from_millis(500))
        .is_empty());
    let ev = sup.tick(&r.engine, t0 + Duration::from_millis(1000));
    assert_eq!(ev[0]["attempt"], 2);
    assert_eq!(ev[0]["next_backoff_ms"], 2000);
    // The stopped never-restart workload is reported once.
    kill("db");
    let ev = sup.tick(&r.engine, t0 + Duration::from_millis(3000));
    assert_eq!(ev.len(), 1, "{ev:?}");
    // Always the committed definition: still generation 1's.
    assert_eq!(running(&r), [("db".into(), "a".into())]);
    let recs = r.engine.log.records().unwrap();
    assert!(recs.iter().all(|x| x.generation == 1));
    assert_eq!(recs.len(), 5);
}
