//! The `berth` CLI's release and device commands, as an operator runs them.

use std::process::Command;

use berth_tests::{bin, run, text};

#[test]
fn release_validate_explains_problems_with_paths_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("release.toml");
    std::fs::write(
        &good,
        "schema = 1\nfleet = \"pumps\"\ngeneration = 4\n[[workloads]]\nname = \"sensor\"\n\
         image = { registry = \"r:5000\", repository = \"berth/sensor\", digests = { arm64 = \"sha256:1111111111111111111111111111111111111111111111111111111111111111\" } }\n",
    )
    .unwrap();
    let o = run(Command::new(bin("berth"))
        .args(["release", "validate"])
        .arg(&good));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("valid release for fleet pumps generation 4 with 1 workload(s)"));
    let o = run(Command::new(bin("berth"))
        .args(["release", "validate", "--json"])
        .arg(&good));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["workloads"][0]["restart"]["policy"], "always");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("generation = 4", "generation = 0")
            + "after = [\"ghost\"]\n",
    )
    .unwrap();
    let o = run(Command::new(bin("berth"))
        .args(["release", "validate"])
        .arg(&bad));
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("2 problem(s)"), "{t}");
    assert!(t.contains("generation: must be at least 1"), "{t}");
    assert!(
        t.contains("workloads[0].after[0]: no workload named \"ghost\""),
        "{t}"
    );
}

#[test]
fn device_commands_say_when_no_agent_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let o = run(Command::new(bin("berth"))
        .arg("status")
        .arg("--socket")
        .arg(&sock));
    assert!(!o.status.success());
    assert!(text(&o).contains("is berth-agent running"), "{}", text(&o));
}
