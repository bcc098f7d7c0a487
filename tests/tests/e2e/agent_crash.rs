//! Crash consistency: the agent is killed with SIGKILL at every phase of
//! an update and at random moments; after each restart exactly the old or
//! the new generation runs, every workload of it up, the state database
//! opens, and no container is left over from the other generation.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use berth_tests::agent::{sensor_workload, Device, Fleet};
use berth_tests::{bin, open_tempdir, require_root, run, text};

const LONG: Duration = Duration::from_secs(90);

fn workloads(level: u64) -> String {
    let one = |name: &str, level: u64| sensor_workload(name, level, 500);
    // `a` never changes; `b` changes every generation; `c` comes and goes.
    let mut w = one("a", 0) + &one("b", level);
    if level.is_multiple_of(2) {
        w += &one("c", level);
    }
    w
}

fn expected(generation: u64) -> BTreeSet<String> {
    // (generations with the broken workload never commit)
    let mut s: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    if generation.is_multiple_of(2) {
        s.insert("c".into());
    }
    s
}

/// Containers the device's runtime knows.
fn containers(dev: &Device) -> BTreeSet<String> {
    let o = run(Command::new(bin("berth-runtime"))
        .arg("--root")
        .arg(dev.dir.join("run"))
        .args(["list", "--quiet"]));
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// After a restart: settled on `new`, or back on `old` with `new` marked
/// failed — with exactly that generation's workloads.
fn check_consistent(dev: &mut Device, old: u64, new: u64, what: &str) -> u64 {
    let s = dev.wait_for(&format!("a settled device after {what}"), LONG, |s| {
        // Nothing else happens after the restart, so the update either
        // completes or is rolled back (and marked failed).
        s["phase"] == "idle"
            && (s["current"].as_u64() == Some(new)
                || (s["current"].as_u64() == Some(old) && s["failed"].as_u64() == Some(new)))
            && s["workloads"].as_array().is_some_and(|w| {
                w.len() == expected(s["current"].as_u64().unwrap_or(0)).len()
                    && w.iter().all(|w| w["status"] == "running")
            })
    });
    let g = s["current"].as_u64().unwrap();
    let names: BTreeSet<String> = s["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, expected(g), "{what}: {s}");
    assert_eq!(
        containers(dev),
        expected(g),
        "{what}: containers left over or missing on generation {g}\n{}",
        dev.log()
    );
    g
}

/// A small deterministic generator (the seed is printed for replays).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

fn iterations() -> u64 {
    std::env::var("BERTH_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn kill_9_at_every_phase_and_at_random_points_leaves_old_or_new() {
    require_root!();
    let d = open_tempdir();
    let fleet = Fleet::start(d.path(), "crash");
    let mut dev = fleet.device("gw-crash");
    dev.start();
    let publish = |g: u64| {
        let o = fleet.publish(&fleet.release(g, &workloads(g)));
        assert!(o.status.success(), "publish {g}: {}", text(&o));
    };
    publish(1);
    let mut current = check_consistent(&mut dev, 1, 1, "the first release");
    let mut g = 1;

    // Every phase: the agent dies right after the transition into it is
    // durable (injected), then restarts without the fault.
    for phase in [
        "fetching",
        "staged",
        "switching",
        "verifying",
        "idle",
        "rolling-back",
    ] {
        g += 1;
        dev.stop();
        if phase == "rolling-back" {
            // Reaching rolling-back takes a failing gate: a broken workload.
            let broken = format!(
                "{}[[workloads]]\nname = \"z\"\nimage = IMAGE(broken)\nrestart = {{ policy = \"never\" }}\nhealth = {{ check = \"uptime\", seconds = 1, deadline_s = 5 }}\n",
                workloads(g)
            );
            let o = fleet.publish(&fleet.release(g, &broken));
            assert!(o.status.success(), "publish {g}: {}", text(&o));
        } else {
            publish(g);
        }
        dev.start_with(&[("BERTH_FAULT_CRASH_AFTER", phase)]);
        let st = dev.wait_exit(LONG);
        assert!(
            st.is_some_and(|st| !st.success()),
            "the agent did not crash after {phase}: {st:?}\n{}",
            dev.log()
        );
        assert!(
            dev.log()
                .contains(&format!("BERTH_FAULT_CRASH_AFTER={phase}")),
            "{}",
            dev.log()
        );
        dev.start();
        current = check_consistent(&mut dev, current, g, &format!("a crash after {phase}"));
        if phase == "rolling-back" {
            assert_ne!(current, g, "a failing generation was committed");
        }
    }
    // Random points of later updates.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("random kill points: seed {seed}");
    let mut rng = Lcg(seed);
    let mut landed = 0;
    for i in 0..iterations() {
        g += 1;
        publish(g);
        std::thread::sleep(Duration::from_millis(rng.next(2500)));
        dev.kill();
        dev.start();
        let now = check_consistent(
            &mut dev,
            current,
            g,
            &format!("random kill {i} (seed {seed})"),
        );
        landed += u64::from(now == g);
        current = now;
    }
    eprintln!(
        "{} random kills, {landed} landed on the new generation",
        iterations()
    );
    dev.stop();
}
