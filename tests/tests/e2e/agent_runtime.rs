//! The agent's runtime seam driving the real `berth-runtime`: launch with
//! the release's definition, volumes that outlive the container, stop,
//! and a refused launch naming the workload.

use std::time::Duration;

use berth_agent::names::WorkloadName;
use berth_agent::reconcile::health::gate;
use berth_agent::reconcile::runtime::{volumes_dir, CliRuntime, ContainerRuntime, LaunchSpec};
use berth_agent::release::{from_toml, resolve, Arch};
use berth_tests::{bin, measurement, open_tempdir, probe_image, require_root};

fn spec(img: &std::path::Path, state: &std::path::Path, m: String) -> LaunchSpec {
    let r = from_toml(
        "release.toml",
        r#"schema = 1
fleet = "f"
generation = 1
[[workloads]]
name = "sensor"
image = { registry = "r", repository = "x", digests = { amd64 = "sha256:1111111111111111111111111111111111111111111111111111111111111111", arm64 = "sha256:1111111111111111111111111111111111111111111111111111111111111111" } }
args = ["/bin/sh", "-c", "echo reading-$LEVEL >> /data/log; sleep 30"]
env = { LEVEL = "7" }
volumes = [{ name = "readings", path = "/data" }]
"#,
    )
    .unwrap();
    let resolved = resolve(&r, Arch::native().unwrap()).unwrap().remove(0);
    LaunchSpec {
        secrets_dir: None,
        volumes_dir: volumes_dir(state, &resolved.workload.name),
        resolved,
        image_dir: img.to_path_buf(),
        measurement: m,
    }
}

#[test]
fn the_runtime_seam_launches_lists_and_stops_a_workload() {
    require_root!();
    let state = open_tempdir();
    let img = probe_image();
    let rt = CliRuntime::new(bin("berth-runtime"), state.path().join("run"));
    let s = spec(img, state.path(), measurement(img));
    let name = WorkloadName::parse("sensor").unwrap();
    for round in 1..=2 {
        rt.start(&s).unwrap();
        let listed = rt.list().unwrap();
        assert!(
            listed
                .iter()
                .any(|r| r.name == "sensor" && r.status == "running" && r.pid.is_some()),
            "{listed:?}"
        );
        let log = s.volumes_dir.join("readings/log");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() == round {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The volume keeps every round's reading: it outlives the container.
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "reading-7\n".repeat(round)
        );
        rt.stop(&name, Duration::from_millis(200)).unwrap();
        assert!(rt.list().unwrap().is_empty());
    }
    // Stopping what does not exist is not an error.
    rt.stop(&name, Duration::from_millis(10)).unwrap();
}

#[test]
fn a_launch_with_the_wrong_measurement_is_refused_naming_the_workload() {
    require_root!();
    let state = open_tempdir();
    let img = probe_image();
    let rt = CliRuntime::new(bin("berth-runtime"), state.path().join("run"));
    let wrong = format!("sha256:{}", "0".repeat(64));
    let e = rt
        .start(&spec(img, state.path(), wrong))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("launch of workload sensor failed") && e.contains("measurement"),
        "{e}"
    );
    assert!(rt.list().unwrap().is_empty());
}

fn workload(img: &std::path::Path, state: &std::path::Path, name: &str, extra: &str) -> LaunchSpec {
    let d = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let r = from_toml(
        "release.toml",
        &format!(
            "schema = 1\nfleet = \"f\"\ngeneration = 1\n[[workloads]]\nname = \"{name}\"\n\
             image = {{ registry = \"r\", repository = \"x\", digests = {{ amd64 = \"{d}\", arm64 = \"{d}\" }} }}\n{extra}\n"
        ),
    )
    .unwrap();
    let resolved = resolve(&r, Arch::native().unwrap()).unwrap().remove(0);
    LaunchSpec {
        secrets_dir: None,
        volumes_dir: volumes_dir(state, &resolved.workload.name),
        resolved,
        image_dir: img.to_path_buf(),
        measurement: measurement(img),
    }
}

#[test]
fn the_health_gate_passes_healthy_workloads_and_names_the_failing_one() {
    require_root!();
    let state = open_tempdir();
    let img = probe_image();
    let rt = CliRuntime::new(bin("berth-runtime"), state.path().join("run"));
    let port = berth_tests::pki::free_port();
    let specs = [
        workload(img, state.path(), "up", "args = [\"/bin/sleep\", \"60\"]\nhealth = { check = \"uptime\", seconds = 1, deadline_s = 10 }"),
        workload(img, state.path(), "cmd", "args = [\"/bin/sh\", \"-c\", \"sleep 1; touch /tmp/ready; sleep 60\"]\nhealth = { check = \"command\", command = [\"test\", \"-f\", \"/tmp/ready\"], deadline_s = 10 }"),
        workload(img, state.path(), "web", &format!("args = [\"/bin/httpd\", \"-f\", \"-p\", \"127.0.0.1:{port}\", \"-h\", \"/etc\"]\nnetwork = \"host\"\nhealth = {{ check = \"http\", port = {port}, path = \"/passwd\", deadline_s = 10 }}")),
    ];
    for s in &specs {
        rt.start(s).unwrap();
    }
    let resolved: Vec<_> = specs.iter().map(|s| s.resolved.clone()).collect();
    gate(&rt, &resolved, Duration::from_millis(100)).unwrap();

    // A command check that never passes fails at its deadline, naming it.
    let never = workload(img, state.path(), "never", "args = [\"/bin/sleep\", \"60\"]\nhealth = { check = \"command\", command = [\"false\"], deadline_s = 2 }");
    rt.start(&never).unwrap();
    let e = gate(
        &rt,
        std::slice::from_ref(&never.resolved),
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert_eq!(e.workload, "never");
    assert!(
        e.reason.contains("2 s deadline") && e.reason.contains("exited with 1"),
        "{e}"
    );

    // A workload that exits fails the gate at once.
    let dies = workload(img, state.path(), "dies", "args = [\"/bin/sh\", \"-c\", \"echo starting; echo no config, giving up >&2; exit 3\"]\nhealth = { check = \"uptime\", seconds = 5, deadline_s = 20 }");
    rt.start(&dies).unwrap();
    let t = std::time::Instant::now();
    let e = gate(
        &rt,
        std::slice::from_ref(&dies.resolved),
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert_eq!(e.workload, "dies");
    // What it printed last (stdout and stderr, in order) is in the reason.
    assert!(
        e.reason.contains("stopped")
            && e.reason
                .contains("last output: \"starting\\nno config, giving up\""),
        "{e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the gate waited for a dead workload"
    );

    for n in ["up", "cmd", "web", "never", "dies"] {
        rt.stop(&WorkloadName::parse(n).unwrap(), Duration::from_millis(100))
            .unwrap();
    }
    assert!(rt.list().unwrap().is_empty());
}
