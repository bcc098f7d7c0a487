//! The agent's runtime seam driving the real `berth-runtime`: launch with
//! the release's definition, volumes that outlive the container, stop,
//! and a refused launch naming the workload.

use std::time::Duration;

use berth_agent::names::WorkloadName;
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
    let rt = CliRuntime {
        binary: bin("berth-runtime"),
        root: state.path().join("run"),
    };
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
    let rt = CliRuntime {
        binary: bin("berth-runtime"),
        root: state.path().join("run"),
    };
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
