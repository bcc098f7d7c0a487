//! Enrollment end to end: `berth device enroll` on the device, `berth
//! device approve` with the fleet CA, `berth device install-cert`, and the
//! agent connecting to the real Mosquitto (TLS, `require_certificate`) with
//! the issued certificate; requests for another device, tampered requests
//! and foreign certificates are refused with clear errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_tests::agent::{Device, Fleet};
use berth_tests::{bin, open_tempdir, require_root, run, text};

fn berth(args: &[&str]) -> Output {
    run(Command::new(bin("berth")).args(args))
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    text(o)
}

fn refused(o: &Output, needles: &[&str]) -> String {
    let t = text(o);
    assert!(!o.status.success(), "accepted: {t}");
    for n in needles {
        assert!(t.contains(n), "expected {n:?} in: {t}");
    }
    t
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A device of `fleet` whose MQTT identity is the enrolled one.
pub(crate) fn enrolled_device(fleet: &Fleet, id: &str) -> Device {
    let dev = fleet.device(id);
    let state = dev.dir.join("state");
    let cfg = std::fs::read_to_string(&dev.config).unwrap();
    let mut out = String::new();
    for line in cfg.lines() {
        if line.starts_with("cert = ") {
            out.push_str(&format!(
                "cert = \"{}\"\n",
                state.join("device.pem").display()
            ));
        } else if line.starts_with("key = ") {
            out.push_str(&format!(
                "key = \"{}\"\n",
                state.join("device.key").display()
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&dev.config, out).unwrap();
    dev
}

/// `berth device enroll`; returns the request file.
pub(crate) fn enroll(dev: &Device) -> PathBuf {
    let req = dev.dir.join("request.json");
    ok(&berth(&[
        "device",
        "enroll",
        "--config",
        p(&dev.config),
        "-o",
        p(&req),
    ]));
    req
}

/// `berth device approve` with the broker's CA; returns the output.
pub(crate) fn approve(
    fleet: &Fleet,
    req: &Path,
    device: &str,
    fleet_dir: &Path,
    out: &Path,
) -> Output {
    let ca_key = fleet.mqtt.pki.dir.join("mqtt-ca.key");
    berth(&[
        "device",
        "approve",
        p(req),
        "--device",
        device,
        "--ca-cert",
        p(&fleet.mqtt.pki.ca()),
        "--ca-key",
        p(&ca_key),
        "--fleet-dir",
        p(fleet_dir),
        "-o",
        p(out),
    ])
}

pub(crate) fn install(dev: &Device, cert: &Path) -> Output {
    berth(&[
        "device",
        "install-cert",
        "--config",
        p(&dev.config),
        p(cert),
    ])
}

fn wait_online(fleet: &Fleet, dev: &Device) {
    let topic = format!("berth/devices/{}/status", dev.id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if fleet.mqtt.read_one(&fleet.operator, &topic).as_deref() == Some("online") {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{} never came online on the broker\nagent log:\n{}",
        dev.id,
        dev.log()
    );
}

fn edit_json(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    edit(&mut v);
    let out = file.with_extension("edited.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    out
}

#[test]
fn an_enrolled_device_connects_to_the_broker_with_its_approved_certificate() {
    require_root!();
    let tmp = open_tempdir();
    let fleet = Fleet::start(tmp.path(), "pumps");
    let fleet_dir = tmp.path().join("fleet");
    let mut gw1 = enrolled_device(&fleet, "gw-1");
    let gw2 = enrolled_device(&fleet, "gw-2");
    let req1 = enroll(&gw1);
    let req2 = enroll(&gw2);
    let state = gw1.dir.join("state");
    for key in ["device.key", "secrets.key"] {
        let mode = std::fs::metadata(state.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // Enrolling again keeps the keys: the same identity and recipient.
    let before = std::fs::read(&req1).unwrap();
    let again = enroll(&gw1);
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&before).unwrap(),
        serde_json::from_slice(&std::fs::read(&again).unwrap()).unwrap(),
    );
    assert_eq!(
        (&a["identity"], &a["recipient"]),
        (&b["identity"], &b["recipient"])
    );

    // A request approved as another device, or altered in any part, is refused.
    let cert1 = tmp.path().join("gw-1.pem");
    refused(
        &approve(&fleet, &req1, "gw-2", &fleet_dir, &cert1),
        &["gw-1", "not \"gw-2\""],
    );
    let spliced = edit_json(&req1, |v| {
        let other: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&req2).unwrap()).unwrap();
        v["csr"] = other["csr"].clone();
    });
    refused(
        &approve(&fleet, &spliced, "gw-1", &fleet_dir, &cert1),
        &["gw-1", "altered"],
    );
    let swapped = edit_json(&req1, |v| {
        let other: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&req2).unwrap()).unwrap();
        v["recipient"] = other["recipient"].clone();
    });
    refused(
        &approve(&fleet, &swapped, "gw-1", &fleet_dir, &cert1),
        &["signature does not verify"],
    );
    let flipped = edit_json(&req1, |v| {
        let csr = v["csr"].as_str().unwrap().to_string();
        let mid = csr.len() / 2;
        let c = if &csr[mid..=mid] == "A" { "B" } else { "A" };
        v["csr"] = format!("{}{c}{}", &csr[..mid], &csr[mid + 1..]).into();
    });
    refused(
        &approve(&fleet, &flipped, "gw-1", &fleet_dir, &cert1),
        &["gw-1", "refused"],
    );
    assert!(!cert1.exists(), "a refused approval wrote a certificate");
    assert!(!fleet_dir.join("devices.json").exists());

    ok(&approve(&fleet, &req1, "gw-1", &fleet_dir, &cert1));
    let cert2 = tmp.path().join("gw-2.pem");
    ok(&approve(&fleet, &req2, "gw-2", &fleet_dir, &cert2));
    let listed = ok(&berth(&[
        "device",
        "list",
        "--fleet-dir",
        p(&fleet_dir),
        "--json",
    ]));
    let dir: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(dir["devices"]["gw-1"]["identity"], a["identity"]);
    assert_eq!(dir["devices"]["gw-1"]["recipient"], a["recipient"]);
    assert_eq!(dir["devices"]["gw-1"]["fleet"], "pumps");

    // The other device's certificate does not install here.
    refused(&install(&gw1, &cert2), &["gw-2", "gw-1"]);
    ok(&install(&gw1, &cert1));

    gw1.start();
    wait_online(&fleet, &gw1);
    let log = gw1.log();
    assert!(!log.contains("link down"), "{log}");

    // A re-flashed device (new keys) is not silently re-approved.
    gw1.stop();
    std::fs::remove_file(state.join("device.key")).unwrap();
    let renewed = enroll(&gw1);
    refused(
        &approve(
            &fleet,
            &renewed,
            "gw-1",
            &fleet_dir,
            &tmp.path().join("x.pem"),
        ),
        &["already approved", "--replace"],
    );
}
