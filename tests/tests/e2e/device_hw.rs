//! The status LED (a simulated pin recording its transitions) and the
//! watchdog (a regular file standing in for `/dev/watchdog`) driven by a
//! real agent: distinct patterns for updating, idle, rolled back and error;
//! the watchdog petted while the main loop is alive, disarmed on a clean
//! stop, and left to fire when the reconciler is stuck.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_agent::hw::led::read_sim;
use berth_tests::agent::{sensor_workload, Device, Fleet};
use berth_tests::{open_tempdir, require_root, text};

fn publish(f: &Fleet, g: u64, w: &str) {
    let o = f.publish(&f.release(g, w));
    assert!(o.status.success(), "publish {g}: {}", text(&o));
}

/// The pattern annotations of the LED file, in order.
fn patterns(led: &Path) -> Vec<String> {
    std::fs::read_to_string(led)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("# pattern ").map(str::to_string))
        .collect()
}

fn wait_pattern(led: &Path, want: &str, dev: &Device) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if patterns(led).last().map(String::as_str) == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the LED never showed {want}: {:?}\nagent log:\n{}",
        patterns(led),
        dev.log()
    );
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

#[test]
fn the_led_shows_the_reconciler_and_the_watchdog_fires_only_when_it_is_stuck() {
    require_root!();
    let tmp = open_tempdir();
    let fleet = Fleet::start(tmp.path(), "pumps");
    let mut dev = fleet.device("gw-1");
    let (led, wd) = (dev.dir.join("led"), dev.dir.join("watchdog"));
    std::fs::write(&wd, "").unwrap();
    let cfg = std::fs::read_to_string(&dev.config).unwrap();
    std::fs::write(
        &dev.config,
        format!(
            "{cfg}\n[led]\npin = \"sim:{}\"\n\n[watchdog]\ndevice = \"{}\"\ninterval_ms = 100\nstall_s = 3\n",
            led.display(),
            wd.display()
        ),
    )
    .unwrap();
    dev.start();
    publish(&fleet, 1, &sensor_workload("a", 1, 500));
    dev.wait_generation(1);
    wait_pattern(&led, "idle", &dev);
    assert!(
        patterns(&led).iter().any(|p| p == "updating"),
        "{:?}",
        patterns(&led)
    );
    // Levels alternate and carry increasing times.
    let levels = read_sim(&std::fs::read_to_string(&led).unwrap());
    assert!(levels.len() >= 2);
    assert!(levels
        .windows(2)
        .all(|w| w[0].1 != w[1].1 && w[0].0 <= w[1].0));
    // Petted while the loop turns.
    let s0 = size(&wd);
    std::thread::sleep(Duration::from_millis(600));
    assert!(size(&wd) > s0, "the watchdog is not petted");

    // A workload that fails its gate: rolled back.
    let broken = r#"[[workloads]]
name = "c"
image = IMAGE(broken)
restart = { policy = "never" }
health = { check = "uptime", seconds = 2, deadline_s = 10 }
"#;
    publish(&fleet, 2, &(sensor_workload("a", 1, 500) + broken));
    dev.wait_for("the rollback of 2", Duration::from_secs(90), |s| {
        s["phase"] == "idle" && s["failed"].as_u64() == Some(2)
    });
    wait_pattern(&led, "rolled-back", &dev);

    // A refused release (a device the policy does not allow): error.
    let refused =
        sensor_workload("a", 1, 500).replace("health =", "devices = [\"/dev/ttyUSB9\"]\nhealth =");
    publish(&fleet, 3, &refused);
    wait_pattern(&led, "error", &dev);

    // A clean stop disarms the watchdog and darkens the LED.
    dev.stop();
    let pets = std::fs::read_to_string(&wd).unwrap();
    assert!(pets.ends_with('V'), "no magic close: {pets:?}");
    let levels = read_sim(&std::fs::read_to_string(&led).unwrap());
    assert!(!levels.last().unwrap().1, "the LED is left lit");

    // A reconciler stuck in an update: the loop stops beating, petting
    // stops within stall_s, and the watchdog would reset the device.
    std::fs::write(&wd, "").unwrap();
    dev.start_with(&[("BERTH_FAULT_STALL_AFTER", "fetching")]);
    publish(&fleet, 4, &sensor_workload("a", 4, 500));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dev.log().contains("no longer petting the watchdog") {
        assert!(
            Instant::now() < deadline,
            "petting never stopped:\n{}",
            dev.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dev.log().contains("stalling on purpose"), "{}", dev.log());
    let s1 = size(&wd);
    assert!(s1 > 0, "never petted before the stall");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(size(&wd), s1, "petted while the reconciler is stuck");
    wait_pattern(&led, "updating", &dev);
    dev.kill();
}
