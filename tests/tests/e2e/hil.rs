//! The hardware-in-loop rig end to end, short: `berth-hil run` starts its
//! own lab (Mosquitto with TLS, the registry, a TUF repository) and drives
//! a simulated device through power cuts at random points and at every
//! update phase; it must find no bad state and no lost volume data, and
//! say so in its summary and its JUnit report. The long campaigns are in
//! hil/scenarios/ (figures in BENCHMARKS.md). A fleet of a few simulated
//! devices must converge on a published release (`berth-hil fleet`).

use std::process::Command;

use berth_tests::{bin, open_tempdir, require_root, run, text, workspace};

fn hil_run(scenario: &str, cycles: u64) -> (bool, String, String) {
    let d = open_tempdir();
    let junit = d.path().join("report.xml");
    let o = run(Command::new(bin("berth-hil"))
        .arg("run")
        .arg(workspace().join("hil/scenarios").join(scenario))
        .args(["--cycles", &cycles.to_string()])
        .arg("--work")
        .arg(d.path().join("work"))
        .arg("--junit")
        .arg(&junit));
    let report = std::fs::read_to_string(&junit).unwrap_or_default();
    (o.status.success(), text(&o), report)
}

#[test]
fn power_cuts_at_random_points_and_every_phase_leave_old_or_new() {
    require_root!();
    for (scenario, cycles, cuts) in [("power-cut.toml", 3, 3), ("power-cut-phases.toml", 1, 4)] {
        let (ok, out, report) = hil_run(scenario, cycles);
        assert!(ok, "{scenario}:\n{out}");
        for want in [
            "bad states             0".to_string(),
            "volume data lost       0 of".to_string(),
            format!("power cut            {cuts}"),
        ] {
            assert!(out.contains(&want), "{scenario}: no '{want}' in\n{out}");
        }
        assert!(
            report.contains(&format!("tests=\"{}\" failures=\"0\"", cycles + 1)),
            "{scenario}: JUnit report\n{report}"
        );
        assert!(report.contains("<property name=\"bad states\" value=\"0\"/>"));
    }
}

#[test]
fn a_broken_scenario_is_refused_with_its_field() {
    let d = open_tempdir();
    let s = d.path().join("bad.toml");
    std::fs::write(
        &s,
        "name = \"bad\"\n[releases.r]\nworkloads = [{ name = \"a\" }]\n[[steps]]\naction = \"cut_power\"\n",
    )
    .unwrap();
    let o = run(Command::new(bin("berth-hil")).arg("run").arg(&s));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("bad.toml")
            && t.contains("cut_power needs exactly one of after_ms and at_phase"),
        "{t}"
    );
}

#[test]
fn a_small_fleet_converges_on_a_published_release() {
    require_root!();
    let d = open_tempdir();
    let o = run(Command::new(bin("berth-hil"))
        .args(["fleet", "--devices", "4", "--real", "1", "--timeout", "120"])
        .arg("--work")
        .arg(d.path()));
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in [
        "fleet of 4 devices (1 with real containers, 3 recording): CONVERGED",
        "4 of 4 after the notification",
        "registry sent",
        "metadata server sent",
        "mosquitto",
        "settled",
        "per device",
    ] {
        assert!(t.contains(want), "no '{want}' in\n{t}");
    }
}

#[test]
fn an_empty_fleet_is_refused() {
    let o = run(Command::new(bin("berth-hil")).args(["fleet", "--devices", "0"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--devices must be at least 1"),
        "{}",
        text(&o)
    );
}
