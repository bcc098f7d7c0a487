//! Agent self-update end to end: `berth agent publish` signs an agent
//! build as the TUF target `agent/berth-agent-amd64`; a device with
//! `[self_update]` (its launcher is the `berth-agent` under test) verifies
//! it through the chain served over HTTPS, installs it into a slot, and
//! starts it on trial. A good build (the real agent, byte-different) commits
//! once it has reconnected to Mosquitto, reconciled and reported; broken
//! builds — one that exits at once, one that hangs, one that cannot reach
//! the broker — end with the device back on the old agent, saying why, in
//! its status and in an MQTT event. A build older than the running agent's
//! version is refused, naming both versions, and leaves the slots as they
//! were, until the operator allows the downgrade. Workloads keep running,
//! with the same pids, through every switch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_tests::agent::{sensor_workload, Device, Fleet};
use berth_tests::{bin, open_tempdir, require_root, run, text};

const LONG: Duration = Duration::from_secs(120);

/// A device of `fleet` with self-update on, running generation 1 (one
/// sensor workload); returns it and its workload's pid.
fn device_on_generation_1(fleet: &Fleet, deadline_s: u64, tries: u32) -> (Device, i64) {
    let mut dev = fleet.device("gw-su");
    let mut cfg = std::fs::read_to_string(&dev.config).unwrap();
    cfg.push_str(&format!(
        "\n[self_update]\ndeadline_s = {deadline_s}\ntries = {tries}\n"
    ));
    std::fs::write(&dev.config, cfg).unwrap();
    dev.start();
    let o = fleet.publish(&fleet.release(1, &sensor_workload("s", 1, 500)));
    assert!(o.status.success(), "publish: {}", text(&o));
    let s = dev.wait_generation(1);
    assert_eq!(s["agent"]["running"], "installed", "{s}");
    assert_eq!(s["agent"]["active"], "installed", "{s}");
    let pid = Device::pid(&s, "s").expect("workload pid");
    (dev, pid)
}

/// `berth agent publish FILE --arch amd64 --version VERSION`, notifying
/// the fleet (the installed agent under test is the workspace's version).
fn publish_agent(fleet: &Fleet, file: &Path, version: &str) -> String {
    publish_agent_with(fleet, file, version, &[])
}

fn publish_agent_with(fleet: &Fleet, file: &Path, version: &str, extra: &[&str]) -> String {
    let mut cmd = Command::new(bin("berth"));
    cmd.args(["agent", "publish"])
        .arg(file)
        .args(["--arch", "amd64", "--repo"])
        .arg(&fleet.repo)
        .args(extra)
        .args(["--version", version, "--notify", &fleet.name])
        .args(["--broker", &format!("127.0.0.1:{}", fleet.mqtt.port)])
        .arg("--ca")
        .arg(fleet.mqtt.pki.ca())
        .arg("--cert")
        .arg(&fleet.operator.cert)
        .arg("--mqtt-key")
        .arg(&fleet.operator.key);
    for k in &fleet.keys {
        cmd.arg("--key").arg(k);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "berth agent publish: {}", text(&o));
    let out = text(&o);
    out.split("sha256 ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no sha256 in: {out}"))
        .to_string()
}

/// A build that is a script (mode 0755).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    p
}

/// Waits until the device is back on its installed agent after the trial
/// of `sha`, checks its report, the MQTT event and the workload's pid.
fn fell_back(
    dev: &mut Device,
    events: &berth_tests::agent::Subscription,
    sha: &str,
    pid: i64,
    why: &str,
) {
    let s = dev.wait_for(&format!("the fall-back from {sha}"), LONG, |s| {
        s["agent"]["last"]["sha256"] == sha && s["agent"]["running"] == "installed"
    });
    let last = &s["agent"]["last"];
    assert_eq!(last["result"], "fell-back", "{s}");
    assert_eq!(s["agent"]["active"], "installed", "{s}");
    assert!(s["agent"]["trial"].is_null(), "{s}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(why) && reason.contains("installed stays"),
        "reason {reason:?} does not say {why:?}"
    );
    assert_eq!(
        Device::pid(&s, "s"),
        Some(pid),
        "the workload was restarted: {s}"
    );
    assert_eq!(s["current"], 1, "{s}");
    let ev = events.wait_for("agent-fell-back", LONG, |m| {
        m["event"] == "agent-fell-back" && m["sha256"] == sha
    });
    assert!(
        ev["reason"].as_str().unwrap_or_default().contains(why),
        "{ev}"
    );
}

/// Waits until the launcher has started the trial (a `sleep` build) for
/// the `n`th time and returns its pid (from the launcher's note).
fn trial_started(dev: &Device, n: u64) -> u32 {
    let agent = dev.dir.join("state/agent");
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let record: serde_json::Value = std::fs::read(agent.join("slots.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let child = std::fs::read_to_string(agent.join("child")).unwrap_or_default();
        let pid: Option<u32> = child.split_whitespace().next().and_then(|p| p.parse().ok());
        if let (Some(tries), Some(pid)) = (record["trial"]["tries"].as_u64(), pid) {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"));
            if tries == n && cmdline.is_ok_and(|c| c.contains("sleep")) {
                return pid;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trial start {n} never happened: {record}\n{}",
            dev.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_good_agent_build_commits_and_workloads_keep_their_pids() {
    require_root!();
    let d = open_tempdir();
    let fleet = Fleet::start(d.path(), "su-good");
    let (mut dev, pid) = device_on_generation_1(&fleet, 60, 2);
    let events = fleet.subscribe(&format!("berth/devices/{}/events", dev.id));
    // The real agent with a trailer: an ELF file runs the same, but it is
    // another build (another sha256) for the device.
    let mut build = std::fs::read(bin("berth-agent")).unwrap();
    build.extend_from_slice(b"\n-- berth-agent build 2 --\n");
    let file = d.path().join("berth-agent-2");
    std::fs::write(&file, &build).unwrap();
    let sha = publish_agent(&fleet, &file, "0.2.0");
    let s = dev.wait_for("the new agent committed", LONG, |s| {
        s["agent"]["running"] == "a" && s["agent"]["active"] == "a"
    });
    let last = &s["agent"]["last"];
    assert_eq!(last["result"], "committed", "{s}");
    assert_eq!(last["sha256"], sha.as_str(), "{s}");
    assert_eq!(
        Device::pid(&s, "s"),
        Some(pid),
        "the workload was restarted: {s}"
    );
    assert_eq!(s["current"], 1, "{s}");
    // Byte for byte what was signed, in the slot.
    assert_eq!(std::fs::read(dev.dir.join("state/agent/a")).unwrap(), build);
    events.wait_for("agent-committed", LONG, |m| {
        m["event"] == "agent-committed" && m["sha256"] == sha.as_str()
    });
    // The committed agent keeps working: a new release is applied by it.
    let o = fleet.publish(&fleet.release(2, &sensor_workload("s", 2, 500)));
    assert!(o.status.success(), "publish: {}", text(&o));
    let s = dev.wait_generation(2);
    assert_eq!(s["agent"]["running"], "a", "{s}");
    let pid = Device::pid(&s, "s").expect("workload pid");
    // And it updates itself in turn: the next build goes into slot b.
    let build_2 = build.clone();
    build.extend_from_slice(b"-- build 3 --\n");
    std::fs::write(&file, &build).unwrap();
    let sha = publish_agent(&fleet, &file, "0.3.0");
    let s = dev.wait_for("build 3 committed", LONG, |s| {
        s["agent"]["running"] == "b" && s["agent"]["active"] == "b"
    });
    assert_eq!(s["agent"]["last"]["sha256"], sha.as_str(), "{s}");
    assert_eq!(
        Device::pid(&s, "s"),
        Some(pid),
        "the workload was restarted: {s}"
    );
    assert_eq!(
        s["agent"]["history"].as_array().map(Vec::len),
        Some(2),
        "{s}"
    );

    // An older build (0.2.5 after 0.3.0): refused, naming both versions;
    // the device stays on its agent and the inactive slot keeps build 2.
    build.extend_from_slice(b"-- build 4 --\n");
    std::fs::write(&file, &build).unwrap();
    let sha = publish_agent(&fleet, &file, "0.2.5");
    let s = dev.wait_for("the older build refused", LONG, |s| {
        s["agent"]["last"]["sha256"] == sha.as_str()
    });
    let last = &s["agent"]["last"];
    assert_eq!(last["result"], "refused", "{s}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("agent 0.2.5 is older than the running agent 0.3.0")
            && reason.contains("--allow-downgrade"),
        "{reason}"
    );
    assert_eq!(s["agent"]["running"], "b", "{s}");
    assert_eq!(s["agent"]["active"], "b", "{s}");
    assert!(s["agent"]["trial"].is_null(), "{s}");
    assert_eq!(Device::pid(&s, "s"), Some(pid), "{s}");
    assert_eq!(
        std::fs::read(dev.dir.join("state/agent/a")).unwrap(),
        build_2
    );
    let ev = events.wait_for("agent-refused", LONG, |m| {
        m["event"] == "agent-refused" && m["sha256"] == sha.as_str()
    });
    assert!(
        ev["reason"].as_str().unwrap_or_default().contains("0.2.5"),
        "{ev}"
    );
    // Refused once, not at every refresh.
    std::thread::sleep(Duration::from_secs(2));
    let s = dev.status().unwrap();
    assert_eq!(
        s["agent"]["history"].as_array().map(Vec::len),
        Some(3),
        "{s}"
    );

    // The operator allows the downgrade explicitly: it is installed, tried
    // and committed like any build.
    let sha = publish_agent_with(&fleet, &file, "0.2.5", &["--allow-downgrade"]);
    let s = dev.wait_for("the allowed downgrade committed", LONG, |s| {
        s["agent"]["running"] == "a" && s["agent"]["active"] == "a"
    });
    assert_eq!(s["agent"]["last"]["result"], "committed", "{s}");
    assert_eq!(s["agent"]["last"]["sha256"], sha.as_str(), "{s}");
    assert_eq!(Device::pid(&s, "s"), Some(pid), "{s}");
    assert_eq!(std::fs::read(dev.dir.join("state/agent/a")).unwrap(), build);
}

#[test]
fn broken_agent_builds_fall_back_to_the_old_agent_saying_why() {
    require_root!();
    let d = open_tempdir();
    let fleet = Fleet::start(d.path(), "su-broken");
    let (mut dev, pid) = device_on_generation_1(&fleet, 8, 2);
    let events = fleet.subscribe(&format!("berth/devices/{}/events", dev.id));

    // Exits at once: each of its two starts fails, then it is given up.
    let exits = script(d.path(), "exits", "echo 'broken build' >&2; exit 3");
    let sha = publish_agent(&fleet, &exits, "0.2.0");
    fell_back(
        &mut dev,
        &events,
        &sha,
        pid,
        "exited with status 3 before it committed",
    );
    let s = dev.status().unwrap();
    assert!(
        s["agent"]["last"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failed 2 start(s)"),
        "{s}"
    );

    // Hangs: killed at the deadline.
    let hangs = script(d.path(), "hangs", "exec sleep 600");
    let sha = publish_agent(&fleet, &hangs, "0.2.1");
    fell_back(
        &mut dev,
        &events,
        &sha,
        pid,
        "did not reconnect, reconcile and report healthy within 8 s",
    );

    // The real agent, but built to reach a broker that is not there.
    let unreachable = script(
        d.path(),
        "no-broker",
        &format!(
            "BERTH__MQTT__PORT=1 exec {} \"$@\"",
            bin("berth-agent").display()
        ),
    );
    let sha = publish_agent(&fleet, &unreachable, "0.2.2");
    fell_back(
        &mut dev,
        &events,
        &sha,
        pid,
        "it was waiting for the MQTT link",
    );

    // Power lost during the trial, twice (the launcher killed with it): every
    // start was counted before it happened, so the start after the last
    // try falls back; the hung build the killed launcher left is killed.
    let hangs2 = script(d.path(), "hangs-2", "exec sleep 601");
    let sha = publish_agent(&fleet, &hangs2, "0.2.3");
    for n in 1..=2 {
        let left = trial_started(&dev, n);
        dev.kill();
        assert!(Path::new(&format!("/proc/{left}")).exists());
        dev.start();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{left}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the trial {left} was left running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fell_back(&mut dev, &events, &sha, pid, "restarted during its trial");

    // A build that failed is not tried again: the device stays put.
    std::thread::sleep(Duration::from_secs(2));
    let s = dev.status().unwrap();
    assert_eq!(
        s["agent"]["history"].as_array().map(Vec::len),
        Some(4),
        "{s}"
    );
    assert_eq!(s["agent"]["running"], "installed", "{s}");
}
