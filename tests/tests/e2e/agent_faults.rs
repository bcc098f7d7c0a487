//! Releases a device must refuse, and outages it must ride out — each
//! leaving the running generation untouched, with the reason in the log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::agent::{sensor_workload, Device, Fleet};
use berth_tests::registry::Tmpfs;
use berth_tests::{bin, open_tempdir, require_root, run, text};

const LONG: Duration = Duration::from_secs(90);

fn sensor(name: &str, level: u64) -> String {
    sensor_workload(name, level, 500)
}

fn web(level: u64) -> String {
    format!(
        r#"[[workloads]]
name = "web"
image = IMAGE(web)
env = {{ LEVEL = "{level}" }}
health = {{ check = "uptime", seconds = 1, deadline_s = 20 }}
"#
    )
}

fn publish(f: &Fleet, g: u64, w: &str) {
    let o = f.publish(&f.release(g, w));
    assert!(o.status.success(), "publish {g}: {}", text(&o));
}

fn on(dev: &mut Device, g: u64) -> serde_json::Value {
    dev.wait_generation(g)
}

/// Waits for `needle` in the agent's log after byte `from`.
fn logged(dev: &Device, from: usize, needle: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let log = dev.log();
        let tail = log.get(from..).unwrap_or("").to_string();
        if tail.contains(needle) {
            return tail;
        }
        assert!(
            Instant::now() < deadline,
            "device {}: {needle:?} never logged; log since:\n{tail}",
            dev.id
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Any client may *trigger* a refresh: the notification carries nothing
/// the device trusts.
fn nudge(f: &Fleet) {
    assert!(f.mqtt.publish(
        &f.operator,
        &format!("berth/fleets/{}/timestamp", f.name),
        "{\"nudge\": true}",
        true
    ));
}

/// Signs `toml` (any content) as the fleet's release with `berth repo`
/// directly, bypassing `berth release publish`'s own checks.
fn sign_raw(f: &Fleet, name: &str, body: &str, expires_days: &str) {
    let doc = f.dir.join(format!("{name}.json"));
    let o = run(Command::new(bin("berth"))
        .args(["release", "validate", "--json"])
        .arg(write(&f.dir.join(format!("{name}.toml")), body)));
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(&doc, &o.stdout).unwrap();
    let repo = f.repo.to_str().unwrap();
    let o = run(Command::new(bin("berth"))
        .args(["repo", "add-target", repo, "--path"])
        .arg(format!("releases/{}.json", f.name))
        .arg("--file")
        .arg(&doc));
    assert!(o.status.success(), "{}", text(&o));
    let mut cmd = Command::new(bin("berth"));
    cmd.args(["repo", "publish", repo]);
    for k in &f.keys {
        cmd.arg("--key").arg(k);
    }
    cmd.args(["--timestamp-expires-days", expires_days]);
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", text(&o));
    nudge(f);
}

fn write(p: &Path, body: &str) -> std::path::PathBuf {
    std::fs::write(p, body).unwrap();
    p.to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    let o = run(Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn refused_releases_leave_the_device_untouched() {
    require_root!();
    let d = open_tempdir();
    let fleet = Fleet::start(d.path(), "pumps");
    let mut dev = fleet.device("gw-1");
    dev.start();
    publish(&fleet, 1, &sensor("a", 1));
    let pid = Device::pid(&on(&mut dev, 1), "a");
    let untouched = |dev: &mut Device| {
        let s = on(dev, 1);
        assert_eq!(Device::pid(&s, "a"), pid, "workload a was touched: {s}");
    };

    // Meant for other devices of the fleet, or with no image for this
    // architecture: ignored.
    let at = dev.log().len();
    let other_devices = fleet.release(2, &sensor("a", 2));
    let body = std::fs::read_to_string(&other_devices)
        .unwrap()
        .replace("generation = 2\n", "generation = 2\ndevices = [\"gw-9\"]\n");
    sign_raw(&fleet, "other-devices", &body, "1");
    logged(&dev, at, "release names other devices");
    untouched(&mut dev);
    let at = dev.log().len();
    let arm_only = std::fs::read_to_string(fleet.release(3, &sensor("a", 3))).unwrap();
    let amd = berth_tests::agent::sample("sensor").amd64.clone();
    let body = arm_only.replace(&format!("amd64 = \"{amd}\", "), "");
    assert_ne!(body, arm_only);
    sign_raw(&fleet, "arm-only", &body, "1");
    logged(&dev, at, "no amd64 image");
    untouched(&mut dev);

    // A validly signed release of a lower generation: rollback protection.
    let at = dev.log().len();
    let body = std::fs::read_to_string(fleet.release(1, &sensor("a", 99))).unwrap();
    sign_raw(&fleet, "older", &body, "1");
    logged(&dev, at, "not newer than the current generation 1");
    untouched(&mut dev);

    // (metadata as it stands now, to be served again later)
    let saved = d.path().join("metadata-saved");
    copy_dir(&fleet.repo.join("metadata"), &saved);

    // Expired metadata: refused (freeze protection).
    let at = dev.log().len();
    let body = std::fs::read_to_string(fleet.release(4, &sensor("a", 4))).unwrap();
    sign_raw(&fleet, "expired", &body, "0");
    logged(&dev, at, "expired");
    untouched(&mut dev);

    // Old metadata served again after a newer one was seen: refused.
    publish(&fleet, 5, &sensor("a", 5));
    let s = on(&mut dev, 5);
    let pid5 = Device::pid(&s, "a");
    let at = dev.log().len();
    std::fs::remove_dir_all(fleet.repo.join("metadata")).unwrap();
    copy_dir(&saved, &fleet.repo.join("metadata"));
    nudge(&fleet);
    logged(&dev, at, "rollback refused");
    let s = on(&mut dev, 5);
    assert_eq!(Device::pid(&s, "a"), pid5);
    dev.stop();
}

#[test]
fn registry_and_broker_outages_and_a_full_disk_keep_the_old_generation() {
    require_root!();
    let d = open_tempdir();
    let mut fleet = Fleet::start(d.path(), "pumps");
    let mut dev = fleet.device("gw-1");
    dev.start();
    publish(&fleet, 1, &sensor("a", 1));
    on(&mut dev, 1);

    // Registry down while the device pulls a new image: the update fails
    // as a fetch failure, the old generation runs on; once the registry
    // is back, the next trigger completes it.
    let web_layout = &berth_tests::agent::sample("web").layout;
    let o = run(Command::new(bin("berth"))
        .args(["image", "push"])
        .arg(web_layout)
        .arg(format!("{}/samples/web:latest", fleet.registry.host()))
        .arg("--ca")
        .arg(fleet.registry.ca())
        .args(["--user", berth_tests::registry::USER])
        .env("BERTH_REGISTRY_PASSWORD", berth_tests::registry::PASSWORD));
    assert!(o.status.success(), "{}", text(&o));
    fleet.registry.stop();
    let at = dev.log().len();
    let body = std::fs::read_to_string(fleet.release(2, &(sensor("a", 1) + &web(2)))).unwrap();
    sign_raw(&fleet, "with-web", &body, "1");
    let tail = logged(&dev, at, "fetch-failed");
    assert!(tail.contains("samples/web"), "{tail}");
    let s = on(&mut dev, 1);
    assert_eq!(s["current"].as_u64(), Some(1));
    fleet.registry.restart();
    nudge(&fleet);
    on(&mut dev, 2);

    // Broker restarted in the middle of an update: the update completes,
    // and the link comes back for the next one.
    publish(&fleet, 4, &(sensor("a", 4) + &web(2)));
    fleet.mqtt.restart();
    on(&mut dev, 4);
    // Only the link can deliver this one (the periodic refresh is an hour).
    publish(&fleet, 5, &(sensor("a", 5) + &web(2)));
    on(&mut dev, 5);

    // Disk full: a device whose state directory is on a small filesystem
    // cannot pull the new image; it says so and keeps generation 5.
    dev.stop();
    let fs = Tmpfs::mount(64 << 20);
    let mut small = fleet.device("gw-small");
    let cfg = std::fs::read_to_string(&small.config).unwrap().replace(
        &format!("state = \"{}\"", small.dir.join("state").display()),
        &format!("state = \"{}\"", fs.path.join("state").display()),
    );
    std::fs::write(&small.config, cfg).unwrap();
    small.start();
    on(&mut small, 5);
    fs.fill(64 << 10);
    let at = small.log().len();
    publish(
        &fleet,
        6,
        &(sensor("a", 6) + &web(6)).replace("IMAGE(web)", "IMAGE(broken)"),
    );
    let tail = logged(&small, at, "fetch-failed");
    assert!(tail.contains("free space"), "{tail}");
    let s = on(&mut small, 5);
    assert_eq!(s["current"].as_u64(), Some(5));
    small.stop();
}
