//! A device without any network: releases arrive as offline bundles
//! (`berth bundle create`), handed to the agent with `berth-agent import`
//! or dropped into its watched directory, and are verified exactly like
//! online updates.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::agent::{sample, sensor_workload, Device, Fleet};
use berth_tests::{bin, open_tempdir, require_root, run, text};

const LONG: Duration = Duration::from_secs(90);

fn sensor(level: u64) -> String {
    sensor_workload("sensor", level, 500)
}

fn bundle(f: &Fleet, g: u64, out: &std::path::Path) {
    let o = f.publish(&f.release(g, &sensor(g)));
    assert!(o.status.success(), "publish {g}: {}", text(&o));
    let o = run(Command::new(bin("berth"))
        .args(["bundle", "create", "--repo"])
        .arg(&f.repo)
        .args(["--fleet", &f.name, "--arch", "amd64", "--from"])
        .arg(&sample("sensor").layout)
        .arg("-o")
        .arg(out));
    assert!(o.status.success(), "bundle {g}: {}", text(&o));
}

fn on(dev: &mut Device, g: u64) -> serde_json::Value {
    let s = dev.wait_generation(g);
    assert_eq!(s["workloads"].as_array().map(Vec::len), Some(1), "{s}");
    s
}

#[test]
fn bundles_update_a_device_with_no_network() {
    require_root!();
    let d = open_tempdir();
    let fleet = Fleet::start(d.path(), "remote");
    let usb = d.path().join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    let mut dev = fleet.device("gw-far");
    dev.offline(&usb);
    dev.start();
    dev.wait_for("the API", LONG, |s| s["phase"] == "idle");

    // Generation 1 by command.
    let b1 = d.path().join("g1.bundle");
    bundle(&fleet, 1, &b1);
    let o = dev.import(&b1);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("generation 1"), "{}", text(&o));
    on(&mut dev, 1);
    let log = dev.log();
    assert!(
        log.contains("refresh failed"),
        "the device was not offline:\n{log}"
    );

    // A tampered bundle is refused by command, naming the file; nothing changes.
    let b2 = d.path().join("g2.bundle");
    bundle(&fleet, 2, &b2);
    // (the release document inside is changed after signing)
    let mut bytes = std::fs::read(&b2).unwrap();
    let at = bytes
        .windows(12)
        .position(|w| w == b"\"LEVEL\": \"2\"")
        .expect("the release document in the bundle");
    bytes[at + 10] = b'7';
    let bad = d.path().join("bad.bundle");
    std::fs::write(&bad, &bytes).unwrap();
    let o = dev.import(&bad);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("bad.bundle"), "{}", text(&o));
    assert!(text(&o).contains("releases/remote.json"), "{}", text(&o));
    on(&mut dev, 1);

    // Generation 2 from the watched directory (a USB stick).
    std::fs::copy(&b2, usb.join("update.bundle")).unwrap();
    on(&mut dev, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dev.log().contains("bundle imported") {
        assert!(Instant::now() < deadline, "{}", dev.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    dev.stop();
}
