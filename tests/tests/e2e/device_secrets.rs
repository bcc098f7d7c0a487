//! Sealed secrets end to end: `berth secret seal` to enrolled devices, a
//! schema-2 release naming the secret, and the agent delivering it into a
//! tmpfs at `/run/secrets/NAME` of only the workloads that name it — read
//! from inside the running container by its unprivileged user — and, to
//! the workload that asks with `env`, into that environment variable (read
//! by the workload from its environment); never found in plaintext in the
//! state directory, the runtime's files (bundles, their `config.json`),
//! the containers' writable layers, other workloads' environment, the log,
//! the status or the MQTT state; a secret sealed for another device, or one
//! asked for as a variable that is not text, is refused and the running
//! generation kept.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::agent::{Device, Fleet};
use berth_tests::{bin, open_tempdir, require_root, run, text};

use crate::device_enroll::{approve, enroll, enrolled_device, install};

fn seal(fleet_dir: &Path, name: &str, plaintext: impl AsRef<[u8]>, to: &[&str]) -> String {
    let plaintext = plaintext.as_ref();
    let input = fleet_dir.join(format!("{name}.plain"));
    std::fs::write(&input, plaintext).unwrap();
    let mut c = Command::new(bin("berth"));
    c.args(["secret", "seal", "--name", name, "--fleet-dir"])
        .arg(fleet_dir)
        .arg("--in")
        .arg(&input);
    for t in to {
        c.args(["--to", t]);
    }
    let o = run(&mut c);
    std::fs::remove_file(&input).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let shown = String::from_utf8_lossy(plaintext);
    let shown = shown.trim();
    // A short secret ("4242") turns up by chance inside the digest's hex or
    // the ciphertext's armour about once in a thousand seals; printed, it
    // would stand as a word of its own.
    let printed = if shown.len() >= 16 {
        out.contains(shown)
    } else {
        out.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| word == shown)
    };
    assert!(!printed, "seal printed the plaintext:\n{out}");
    out
}

/// A `reader` sensor whose reading comes from the secret file (it logs the
/// number the secret starts with), a `calibrated` sensor whose reading
/// comes from the secret `calibration` as its variable `SENSOR_READING`,
/// and a `plain` sensor without secrets.
fn workloads(level: u64) -> String {
    format!(
        r#"[[workloads]]
name = "reader"
image = IMAGE(sensor)
env = {{ SENSOR_INTERVAL = "200", SENSOR_INPUT = "/run/secrets/reading", LEVEL = "{level}" }}
volumes = [{{ name = "data", path = "/data" }}]
health = {{ check = "uptime", seconds = 1, deadline_s = 20 }}
secrets = [{{ name = "reading" }}]

[[workloads]]
name = "calibrated"
image = IMAGE(sensor)
env = {{ SENSOR_INTERVAL = "200" }}
volumes = [{{ name = "data", path = "/data" }}]
health = {{ check = "uptime", seconds = 1, deadline_s = 20 }}
secrets = [{{ name = "calibration", env = "SENSOR_READING" }}]

[[workloads]]
name = "plain"
image = IMAGE(sensor)
env = {{ SENSOR_INTERVAL = "500" }}
volumes = [{{ name = "data", path = "/data" }}]
health = {{ check = "uptime", seconds = 1, deadline_s = 20 }}
"#
    )
}

fn publish(fleet: &Fleet, g: u64, level: u64, secrets: &str) {
    let path = fleet.release(g, &workloads(level));
    let body = std::fs::read_to_string(&path)
        .unwrap()
        .replace("schema = 1\n", "schema = 2\n");
    std::fs::write(&path, format!("{body}\n{secrets}\n")).unwrap();
    let o = fleet.publish(&path);
    assert!(o.status.success(), "publish {g}: {}", text(&o));
}

fn wait_file_contains(path: &Path, needle: &str, dev: &Device) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{needle:?} never appeared in {}: {:?}\nagent log:\n{}",
        path.display(),
        std::fs::read_to_string(path).ok(),
        dev.log()
    );
}

fn logged(dev: &Device, from: usize, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tail = dev.log().get(from..).unwrap_or("").to_string();
        if tail.contains(needle) {
            return tail;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never logged; log since:\n{tail}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every regular file below `dir` whose bytes contain `needle`, skipping
/// `except`.
fn files_containing(dir: &Path, needle: &[u8], except: Option<&Path>) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if except.is_some_and(|x| p.starts_with(x)) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(p.display().to_string());
                    }
                }
            }
        }
    }
    found
}

fn proc_file(pid: i64, name: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{name}")).unwrap()).into_owned()
}

/// The options of the mount at `point` in process `pid`'s mount namespace.
fn mount_options(pid: i64, point: &str) -> Option<String> {
    proc_file(pid, "mountinfo").lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&point)).then(|| f[5].to_string())
    })
}

#[test]
fn a_sealed_secret_reaches_only_its_workload_in_a_tmpfs_and_never_plaintext_storage() {
    require_root!();
    let tmp = open_tempdir();
    let fleet = Fleet::start(tmp.path(), "pumps");
    let fleet_dir = tmp.path().join("fleet");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let secrets_dir = shm.path().join("secrets");
    let mut dev = enrolled_device(&fleet, "gw-1");
    let other = enrolled_device(&fleet, "gw-2");
    let cfg = std::fs::read_to_string(&dev.config).unwrap().replace(
        "[paths]\n",
        &format!("[paths]\nsecrets = \"{}\"\n", secrets_dir.display()),
    );
    std::fs::write(&dev.config, cfg).unwrap();
    for d in [&dev, &other] {
        let req = enroll(d);
        let cert = d.dir.join("issued.pem");
        let o = approve(&fleet, &req, &d.id, &fleet_dir, &cert);
        assert!(o.status.success(), "{}", text(&o));
        let o = install(d, &cert);
        assert!(o.status.success(), "{}", text(&o));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("berth-marker-{nanos:x}");
    let env_marker = format!("berth-env-marker-{nanos:x}");

    // Sealed for the whole fleet (both devices' keys).
    dev.start();
    let sealed = seal(
        &fleet_dir,
        "reading",
        format!("31337\n{marker}\n"),
        &["gw-1", "gw-2"],
    );
    let calibration = seal(
        &fleet_dir,
        "calibration",
        format!("27182 {env_marker}"),
        &["gw-1", "gw-2"],
    );
    publish(&fleet, 1, 1, &format!("{sealed}\n{calibration}"));
    let s = dev.wait_generation(1);
    let (reader, plain, calibrated) = (
        Device::pid(&s, "reader").unwrap(),
        Device::pid(&s, "plain").unwrap(),
        Device::pid(&s, "calibrated").unwrap(),
    );
    let state = dev.dir.join("state");
    // Read inside the container by its user (uid 1000 there): the sensor
    // logs the number the secret holds instead of its simulated signal.
    wait_file_contains(
        &state.join("volumes/reader/data/readings.log"),
        "millideg=31337",
        &dev,
    );
    // On the host: a 0400 file in the tmpfs, owned by the workload's user
    // as mapped into its user namespace (the reader process's host uid).
    let file = secrets_dir.join("reader/reading");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    let host_uid: u32 = proc_file(reader, "status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert_ne!(host_uid, 0);
    assert_eq!(meta.uid(), host_uid, "the secret is not its user's");
    // Mounted read-only into the reader, not at all into the other workload.
    let opts = mount_options(reader, "/run/secrets").expect("no /run/secrets in reader");
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    assert_eq!(mount_options(plain, "/run/secrets"), None);
    assert!(!proc_file(reader, "environ").contains(&marker));
    assert!(!proc_file(plain, "environ").contains(&marker));
    // The variable, read by the workload that asked for it from its own
    // environment (it logs the number it holds); set in no other one.
    wait_file_contains(
        &state.join("volumes/calibrated/data/readings.log"),
        "millideg=27182",
        &dev,
    );
    let var = format!("SENSOR_READING=27182 {env_marker}\0");
    assert!(proc_file(calibrated, "environ").contains(&var));
    for pid in [reader, plain] {
        let env = proc_file(pid, "environ");
        assert!(!env.contains("SENSOR_READING") && !env.contains(&env_marker));
    }

    // Nowhere in plaintext: state directory (volumes, database, blobs),
    // the runtime's bundles and logs, the containers' /tmp and /run, the
    // agent's log, its status and its MQTT state.
    // The bundle's spec names the variable and its file, not the value.
    let bundles = files_containing(&dev.dir.join("run"), b"SENSOR_READING", None);
    assert!(
        bundles
            .iter()
            .any(|f| f.ends_with("calibrated/config.json")),
        "{bundles:?}"
    );
    let retained = fleet
        .mqtt
        .read_one(&fleet.operator, "berth/devices/gw-1/state")
        .unwrap();
    assert!(retained.contains("\"current\":1"), "{retained}");
    for m in [&marker, &env_marker] {
        let needle = m.as_bytes();
        assert_eq!(files_containing(&state, needle, None), Vec::<String>::new());
        assert_eq!(
            files_containing(&dev.dir.join("run"), needle, None),
            Vec::<String>::new()
        );
        for pid in [reader, plain, calibrated] {
            let root = Path::new("/proc").join(pid.to_string()).join("root");
            for dir in ["tmp", "run"] {
                let secrets_mount = root.join("run/secrets");
                assert_eq!(
                    files_containing(&root.join(dir), needle, Some(&secrets_mount)),
                    Vec::<String>::new()
                );
            }
        }
        assert!(!dev.log().contains(m.as_str()));
        assert!(!dev.status().unwrap().to_string().contains(m.as_str()));
        assert!(!retained.contains(m.as_str()));
    }

    // A secret sealed only for gw-2: refused by gw-1, naming both; the
    // running generation is untouched.
    let at = dev.log().len();
    let foreign = seal(&fleet_dir, "reading", "4242\n", &["gw-2"]);
    publish(&fleet, 2, 2, &format!("{foreign}\n{calibration}"));
    let tail = logged(&dev, at, "release refused");
    assert!(
        tail.contains("secret reading is not sealed for device gw-1"),
        "{tail}"
    );
    let s = dev.wait_generation(1);
    assert_eq!(Device::pid(&s, "reader"), Some(reader));
    assert_eq!(Device::pid(&s, "plain"), Some(plain));

    // A value no variable can hold (not UTF-8, a NUL): refused before
    // anything changes, naming the secret, the variable and the workload.
    let at = dev.log().len();
    let binary = seal(
        &fleet_dir,
        "calibration",
        b"27182\xff\x00\xfe",
        &["gw-1", "gw-2"],
    );
    publish(&fleet, 3, 2, &format!("{sealed}\n{binary}"));
    let tail = logged(&dev, at, "release refused");
    assert!(
        tail.contains(
            "secret calibration cannot be the environment variable SENSOR_READING of workload calibrated"
        ),
        "{tail}"
    );
    let s = dev.wait_generation(1);
    assert_eq!(Device::pid(&s, "calibrated"), Some(calibrated));
    assert_eq!(Device::pid(&s, "reader"), Some(reader));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        format!("31337\n{marker}\n").as_bytes()
    );

    // A new sealed value restarts only the workload that uses it.
    let rotated = seal(&fleet_dir, "reading", "4242\n", &["gw-1"]);
    publish(&fleet, 4, 1, &format!("{rotated}\n{calibration}"));
    let s = dev.wait_generation(4);
    assert_ne!(Device::pid(&s, "reader"), Some(reader));
    assert_eq!(Device::pid(&s, "plain"), Some(plain));
    assert_eq!(Device::pid(&s, "calibrated"), Some(calibrated));
    wait_file_contains(
        &state.join("volumes/reader/data/readings.log"),
        "millideg=4242",
        &dev,
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"4242\n");
}
