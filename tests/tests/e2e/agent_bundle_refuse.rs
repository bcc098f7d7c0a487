//! Offline bundles refused: tampered, rolled-back and expired bundles, and a
//! bundle for another fleet's target, leave the device's trust store and blob
//! store untouched.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use berth_agent::bundle::format::TarWriter;
use berth_agent::bundle::{self, BundleError, ImportTarget};
use berth_agent::release::Arch;
use berth_image::registry::Digest;
use berth_tests::agent::{sample, Sample};
use berth_trust::chrono::Duration;
use berth_trust::updater::{self, Time};
use berth_trust::StateStore;

use crate::agent_bundle::{entries, image_blobs, Device, Fixture};

/// What a device holds, to compare before and after a refused import.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    trust: Vec<(String, Option<Vec<u8>>)>,
    floor: Option<Time>,
    files: BTreeMap<String, Vec<u8>>,
    refs: Vec<(Digest, u64)>,
}

fn files(dir: &Path, base: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, base, out);
        } else {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.insert(rel, fs::read(&p).unwrap());
        }
    }
}

impl Device {
    fn snapshot(&self) -> Snapshot {
        let roles = ["root", "timestamp", "snapshot", "targets", "fleets"];
        let mut f = BTreeMap::new();
        files(
            &self.dir.path().join("blobs/blobs"),
            self.dir.path(),
            &mut f,
        );
        files(
            &self.dir.path().join("blobs/ingest"),
            self.dir.path(),
            &mut f,
        );
        files(&self.targets(), self.dir.path(), &mut f);
        Snapshot {
            trust: roles
                .iter()
                .map(|r| (r.to_string(), self.trust.load(r).unwrap()))
                .collect(),
            floor: self.trust.time_floor().unwrap(),
            files: f,
            refs: self.store.ref_counts().unwrap(),
        }
    }
}

/// Writes entries back as a tar the way `berth bundle create` does.
fn retar(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = TarWriter::new(Vec::new());
    for (name, data) in entries {
        tar.file(name, data).unwrap();
    }
    tar.finish().unwrap()
}

/// A copy of `file` with `change` applied to its entries.
fn altered(file: &Path, name: &str, change: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> PathBuf {
    let mut e = entries(&fs::read(file).unwrap());
    change(&mut e);
    let out = file.with_file_name(name);
    fs::write(&out, retar(&e)).unwrap();
    out
}

fn chain(e: &BundleError) -> String {
    berth_agent::error_chain(e)
}

#[test]
fn tampered_rolled_back_and_expired_bundles_change_nothing() {
    let fx = Fixture::new();
    let (old, _) = fx.bundle("pumps-1.bundle", &[]);
    fx.publish(2);
    let (file, _) = fx.bundle("pumps-2.bundle", &[]);
    let Sample {
        layout: img, arm64, ..
    } = sample("sensor");
    let layer = image_blobs(img, arm64).pop().unwrap().0;

    // A device that has nothing yet: tampering leaves it empty.
    let dev = Device::new(&fx.root1());
    let before = dev.snapshot();
    let flip = |name: &str, what: &str| {
        let what = what.to_string();
        altered(&file, name, move |e| {
            let (_, data) = e.iter_mut().find(|(n, _)| n.starts_with(&what)).unwrap();
            let mid = data.len() / 2;
            data[mid] ^= 0x01;
        })
    };
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            flip("layer.bundle", &format!("blobs/sha256/{}", layer.hex())),
            vec!["layer.bundle", "fails verification", "create it again"],
        ),
        (
            flip("target.bundle", "targets/releases/"),
            vec![
                "target.bundle",
                "does not match its signed length and hashes",
                "create the bundle again",
            ],
        ),
        (
            altered(&file, "escape.bundle", |e| {
                e.insert(1, ("metadata/../../escape.json".into(), b"{}".to_vec()));
            }),
            vec!["escape.bundle", "escape.json", "create it again"],
        ),
        (
            altered(&file, "truncated.bundle", |e| e.truncate(e.len() - 1)),
            vec!["truncated.bundle", "is missing", "berth bundle create"],
        ),
    ];
    for (bad, words) in &cases {
        let e = dev.import(bad).unwrap_err();
        let msg = chain(&e);
        for w in words {
            assert!(msg.contains(w), "{w}: {msg}");
        }
        assert_eq!(dev.snapshot(), before, "{msg}");
    }
    let e = dev
        .import_at(&file, updater::now() + Duration::days(3))
        .unwrap_err();
    let msg = chain(&e);
    for w in [
        "pumps-2.bundle",
        "expired",
        "refresh-timestamp",
        "new bundle",
    ] {
        assert!(msg.contains(w), "{w}: {msg}");
    }
    assert_eq!(dev.snapshot(), before);

    // Once it trusts generation 2, older metadata is a rollback.
    dev.import(&file).unwrap();
    let before = dev.snapshot();
    let rolled_back = [
        old.clone(),
        altered(&file, "old-timestamp.bundle", |e| {
            let stale = entries(&fs::read(&old).unwrap())
                .into_iter()
                .find(|(n, _)| n == "metadata/timestamp.json")
                .unwrap();
            let slot = e
                .iter_mut()
                .find(|(n, _)| n == "metadata/timestamp.json")
                .unwrap();
            *slot = stale;
        }),
    ];
    for bad in &rolled_back {
        let e = dev.import(bad).unwrap_err();
        let msg = chain(&e);
        let name = bad.file_name().unwrap().to_str().unwrap();
        for w in [
            name,
            "rollback refused",
            "older than the metadata this device already trusts",
        ] {
            assert!(msg.contains(w), "{w}: {msg}");
        }
        assert_eq!(dev.snapshot(), before, "{msg}");
    }

    // A bundle for another fleet's target is refused by name.
    let other = ImportTarget {
        trust: &dev.trust,
        store: &dev.store,
        targets_dir: &dev.targets(),
        target: "releases/mills.json",
        arch: Arch::Arm64,
        now: updater::now(),
    };
    let msg = chain(&bundle::import(&file, &other).unwrap_err());
    assert!(
        msg.contains("releases/mills.json") && msg.contains("--fleet"),
        "{msg}"
    );
    assert_eq!(dev.snapshot(), before);
}
