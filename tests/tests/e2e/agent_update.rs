//! The agent end to end with real peers: `berth release publish` → the
//! device (a `berth-agent` process) hears of it over Mosquitto (TLS, client
//! certificates), verifies it through the TUF chain served over HTTPS,
//! pulls the images from the Distribution registry (TLS, auth), and runs
//! them in real containers behind the health gate.

use std::time::Duration;

use berth_tests::agent::{sensor_workload, Device, Fleet};
use berth_tests::{open_tempdir, require_root, text};

const LONG: Duration = Duration::from_secs(90);

fn sensor(name: &str, level: &str) -> String {
    sensor_workload(name, level, 200)
}

fn generation(s: &serde_json::Value) -> Option<u64> {
    s["current"].as_u64()
}

fn idle_on(s: &serde_json::Value, g: u64) -> bool {
    generation(s) == Some(g) && s["phase"] == "idle"
}

fn published(f: &Fleet, g: u64, workloads: &str) {
    let o = f.publish(&f.release(g, workloads));
    assert!(o.status.success(), "publish {g}: {}", text(&o));
}

#[test]
fn publish_update_rollback_and_tampering_end_to_end() {
    require_root!();
    let d = open_tempdir();
    let fleet = Fleet::start(d.path(), "pumps");
    let mut dev = fleet.device("gw-1");
    dev.start();
    // No release yet: the agent is up, idle, on no generation.
    let s = dev.wait_for("the API", LONG, |s| s["phase"] == "idle");
    assert_eq!(generation(&s), None, "{s}");

    // v1: two workloads.
    published(&fleet, 1, &(sensor("a", "1") + &sensor("b", "1")));
    let s = dev.wait_for("generation 1 running", LONG, |s| {
        idle_on(s, 1) && Device::pid(s, "a").is_some() && Device::pid(s, "b").is_some()
    });
    let (a1, b1) = (Device::pid(&s, "a"), Device::pid(&s, "b"));
    let readings = dev.dir.join("state/volumes/a/data/readings.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&readings)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "workload a wrote nothing to its volume {}",
            readings.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // v2 changes b only: a keeps running untouched, b restarts.
    published(&fleet, 2, &(sensor("a", "1") + &sensor("b", "2")));
    let s = dev.wait_for("generation 2 running", LONG, |s| {
        idle_on(s, 2) && Device::pid(s, "b").is_some()
    });
    assert_eq!(Device::pid(&s, "a"), a1, "a was restarted: {s}");
    assert_ne!(Device::pid(&s, "b"), b1, "b was not restarted: {s}");

    // v3 adds a workload that exits at start: the gate fails, the device
    // rolls back to generation 2 and does not retry 3.
    let broken = r#"[[workloads]]
name = "c"
image = IMAGE(broken)
restart = { policy = "never" }
health = { check = "uptime", seconds = 2, deadline_s = 10 }
"#;
    published(&fleet, 3, &(sensor("a", "1") + &sensor("b", "2") + broken));
    let s = dev.wait_for("the rollback to 2", LONG, |s| {
        idle_on(s, 2) && s["failed"].as_u64() == Some(3)
    });
    assert_eq!(Device::pid(&s, "a"), a1, "a restarted by the rollback: {s}");
    assert!(Device::pid(&s, "c").is_none(), "{s}");
    let h = dev.history();
    let text_h = h.to_string();
    assert!(text_h.contains("rolled-back"), "{text_h}");
    // Volumes survive updates and rollbacks.
    let lines = std::fs::read_to_string(&readings).unwrap().lines().count();
    assert!(lines > 0);

    // A tampered release (its bytes changed after signing) is refused with
    // the reason, and the device stays on 2.
    published(&fleet, 4, &(sensor("a", "1") + &sensor("b", "4")));
    dev.wait_for("generation 4", LONG, |s| idle_on(s, 4));
    // The operator's server is compromised: generation 5's document is
    // rewritten after signing (every served copy of it).
    dev.stop();
    published(&fleet, 5, &(sensor("a", "5") + &sensor("b", "5")));
    for p in std::fs::read_dir(fleet.repo.join("targets/releases"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
    {
        let t = std::fs::read_to_string(&p).unwrap();
        if t.contains("\"generation\": 5") {
            std::fs::write(&p, t.replace("\"5\"", "\"6\"")).unwrap();
        }
    }
    dev.start();
    let s = dev.wait_for("the refusal", LONG, |s| idle_on(s, 4));
    assert_eq!(generation(&s), Some(4));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !dev.log().contains("releases/pumps.json") {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged:\n{}",
            dev.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = dev.log();
    assert!(
        log.contains("refresh failed") && log.contains("releases/pumps.json"),
        "{log}"
    );
    dev.stop();
}

/// A release whose new workload prints why it fails and exits 3: the
/// rollback's reason carries the exit status and the last lines it printed
/// — in `berth history`, `berth status`, and the MQTT event and retained
/// state — while the old generation keeps running untouched.
#[test]
fn a_failed_gate_reports_the_exit_status_and_the_last_output() {
    require_root!();
    let d = open_tempdir();
    let fleet = Fleet::start(d.path(), "pumps");
    let mut dev = fleet.device("gw-why");
    let events = fleet.subscribe("berth/devices/gw-why/events");
    dev.start();
    published(&fleet, 1, &sensor("a", "1"));
    let s = dev.wait_generation(1);
    let a1 = Device::pid(&s, "a");

    // The sensor cannot append to /dev/full: it prints that and exits 3.
    let failing = r#"[[workloads]]
name = "full"
image = IMAGE(sensor)
env = { SENSOR_LOG = "/dev/full", SENSOR_INTERVAL = "100" }
restart = { policy = "never" }
health = { check = "uptime", seconds = 5, deadline_s = 20 }
"#;
    published(&fleet, 2, &(sensor("a", "1") + failing));
    let s = dev.wait_for("the rollback to 1", LONG, |s| {
        idle_on(s, 1) && s["failed"].as_u64() == Some(2)
    });
    assert_eq!(Device::pid(&s, "a"), a1, "a restarted by the rollback: {s}");
    assert!(Device::pid(&s, "full").is_none(), "{s}");
    let why = |text: &str| {
        assert!(text.contains("workload full"), "{text}");
        assert!(text.contains("exit status 3"), "{text}");
        assert!(
            text.contains("sensor: started, logging to /dev/full")
                && text.contains("sensor: cannot append to /dev/full: No space left on device"),
            "{text}"
        );
    };

    // berth history --json
    let h = dev.history();
    let last = h.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["generation"], 2, "{h}");
    assert_eq!(last["result"], "rolled-back", "{h}");
    why(last["reason"].as_str().unwrap());

    // berth status --json, and the table
    why(s["failure"]
        .as_str()
        .unwrap_or_else(|| panic!("no failure: {s}")));
    let o = berth_tests::run(
        std::process::Command::new(berth_tests::bin("berth"))
            .arg("status")
            .arg("--socket")
            .arg(dev.socket()),
    );
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("generation 2 failed:"), "{table}");
    why(&table);

    // The MQTT event, and the retained state message.
    let ev = events.wait_for("the rolled-back event", LONG, |m| {
        m["event"] == "rolled-back"
    });
    assert_eq!(ev["generation"], 2, "{ev}");
    why(ev["reason"].as_str().unwrap());
    let state = fleet
        .mqtt
        .read_one(&fleet.operator, "berth/devices/gw-why/state")
        .expect("a retained state message");
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["failed"], 2, "{state}");
    why(state["failure"].as_str().unwrap());
    dev.stop();
}
