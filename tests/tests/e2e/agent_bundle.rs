//! Offline bundles: `berth bundle create` from a real signed repository and a
//! real image build; `berth bundle verify` with the network unreachable; the
//! device-side import into a fresh trust store and blob store. Also holds the
//! repository and device fixtures the other `agent_bundle_*` modules share.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_agent::bundle::{self, BundleError, ImportTarget, Imported};
use berth_agent::release::Arch;
use berth_image::registry::Digest;
use berth_image::store::Store;
use berth_tests::agent::{sample, Sample};
use berth_tests::{bin, is_root, open_tempdir, run, text};
use berth_trust::updater::{self, Time};
use berth_trust::{SledStore, StateStore};

fn berth(args: &[&str]) -> Output {
    run(Command::new(bin("berth")).args(args))
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    text(o)
}

/// A signed repository with a delegated `fleets` role that lists `releases/pumps.json`.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let f = Fixture {
            dir: open_tempdir(),
        };
        for k in ["root", "root2", "online", "targets", "team"] {
            ok(&berth(&[
                "key",
                "generate",
                "--type",
                "ed25519",
                "--out",
                &f.p(k),
            ]));
        }
        ok(&berth(&[
            "repo",
            "init",
            &f.p("repo"),
            "--root-key",
            &f.p("root"),
            "--timestamp-key",
            &f.p("online.pub"),
            "--snapshot-key",
            &f.p("online.pub"),
            "--targets-key",
            &f.p("targets.pub"),
        ]));
        ok(&berth(&[
            "repo",
            "delegate",
            &f.p("repo"),
            "--to",
            "fleets",
            "--key",
            &f.p("team.pub"),
            "--path",
            "releases/*",
            "--terminating",
        ]));
        f.publish(1);
        f
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    pub(crate) fn root1(&self) -> PathBuf {
        self.dir.path().join("repo/metadata/1.root.json")
    }

    fn release(&self, generation: u64) -> Vec<u8> {
        let Sample { amd64, arm64, .. } = sample("sensor");
        format!(
            "{{\"schema\":1,\"fleet\":\"pumps\",\"generation\":{generation},\"workloads\":[{{\"name\":\"sensor\",\
             \"image\":{{\"registry\":\"registry.invalid:5000\",\"repository\":\"berth/sensor\",\
             \"digests\":{{\"amd64\":\"{amd64}\",\"arm64\":\"{arm64}\"}}}}}}]}}\n"
        )
        .into_bytes()
    }

    pub(crate) fn publish(&self, generation: u64) {
        let rel = self.dir.path().join(format!("release-{generation}.json"));
        fs::write(&rel, self.release(generation)).unwrap();
        ok(&berth(&[
            "repo",
            "add-target",
            &self.p("repo"),
            "--role",
            "fleets",
            "--path",
            "releases/pumps.json",
            "--file",
            rel.to_str().unwrap(),
        ]));
        ok(&berth(&[
            "repo",
            "publish",
            &self.p("repo"),
            "--key",
            &self.p("online"),
            "--key",
            &self.p("targets"),
            "--key",
            &self.p("team"),
        ]));
    }

    /// `berth bundle create` for the pumps fleet; returns the file and the output.
    pub(crate) fn bundle(&self, name: &str, extra: &[&str]) -> (PathBuf, String) {
        let out = self.dir.path().join(name);
        let img = sample("sensor").layout.to_str().unwrap();
        let repo = self.p("repo");
        let mut args = vec![
            "bundle",
            "create",
            "--repo",
            &repo,
            "--fleet",
            "pumps",
            "--from",
            img,
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = berth(&args);
        (out.clone(), ok(&o))
    }
}

/// A device: trust store initialised with root v1, an empty blob store.
pub(crate) struct Device {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) trust: SledStore,
    pub(crate) store: Store,
}

impl Device {
    pub(crate) fn new(root: &Path) -> Self {
        let dir = open_tempdir();
        let trust = SledStore::open(&dir.path().join("tuf")).unwrap();
        updater::init(&trust, &fs::read(root).unwrap()).unwrap();
        let store = Store::open(&dir.path().join("blobs")).unwrap();
        Device { dir, trust, store }
    }

    pub(crate) fn targets(&self) -> PathBuf {
        self.dir.path().join("targets")
    }

    pub(crate) fn import_at(&self, file: &Path, now: Time) -> Result<Imported, BundleError> {
        bundle::import(
            file,
            &ImportTarget {
                trust: &self.trust,
                store: &self.store,
                targets_dir: &self.targets(),
                target: "releases/pumps.json",
                arch: Arch::Arm64,
                now,
            },
        )
    }

    pub(crate) fn import(&self, file: &Path) -> Result<Imported, BundleError> {
        self.import_at(file, updater::now())
    }
}

/// The blobs of the image `manifest` (manifest, config, layers) with their sizes.
pub(crate) fn image_blobs(layout: &Path, manifest: &str) -> Vec<(Digest, u64)> {
    let hex = manifest.strip_prefix("sha256:").unwrap();
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut out = vec![(manifest.parse().unwrap(), bytes.len() as u64)];
    for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
        out.push((
            d["digest"].as_str().unwrap().parse().unwrap(),
            d["size"].as_u64().unwrap(),
        ));
    }
    out
}

/// The entries of an uncompressed tar as (name, content), pax paths applied.
pub(crate) fn entries(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut pax_path = None;
    while off + 512 <= tar.len() && tar[off..off + 512].iter().any(|&b| b != 0) {
        let h = &tar[off..off + 512];
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_field = String::from_utf8_lossy(&h[124..135]).to_string();
        let size = u64::from_str_radix(size_field.trim_matches(|c| c == '\0' || c == ' '), 8)
            .unwrap() as usize;
        let data = tar[off + 512..off + 512 + size].to_vec();
        off += 512 + size.div_ceil(512) * 512;
        if h[156] == b'x' {
            let rec = String::from_utf8_lossy(&data).to_string();
            pax_path = rec
                .lines()
                .find_map(|l| l.split_once(" path=").map(|(_, p)| p.to_string()));
            continue;
        }
        out.push((pax_path.take().unwrap_or(name), data));
    }
    out
}

#[test]
fn bundle_verify_succeeds_with_the_network_unreachable() {
    let fx = Fixture::new();
    let (file, out) = fx.bundle("pumps.bundle", &[]);
    for want in [
        "release releases/pumps.json (fleet pumps, generation 1)",
        "architectures: amd64, arm64",
        "7 blobs",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // Reproducible: the same inputs give the same bytes.
    let (again, _) = fx.bundle("again.bundle", &[]);
    assert_eq!(fs::read(&file).unwrap(), fs::read(&again).unwrap());

    let mut cmd = Command::new("unshare");
    cmd.arg(if is_root() { "-n" } else { "-rn" });
    // Inside the namespace the only interface is a loopback that is down.
    let o = run(Command::new("unshare")
        .arg(if is_root() { "-n" } else { "-rn" })
        .args(["cat", "/proc/net/dev"]));
    let ifaces: Vec<String> = ok(&o)
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    assert_eq!(ifaces, ["lo"], "the namespace has a network");
    let o = run(cmd
        .arg(bin("berth"))
        .args(["bundle", "verify"])
        .arg(&file)
        .arg("--root")
        .arg(fx.root1()));
    let out = ok(&o);
    for want in [
        "verified against",
        "generation 1",
        "metadata: root v1, timestamp v1, snapshot v1, targets v1",
        "sensor  arm64",
        "sensor  amd64",
        "7 blobs",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }

    // An arm64-only bundle holds only arm64's blobs, and still verifies.
    let (small, out) = fx.bundle("arm64.bundle", &["--arch", "arm64"]);
    assert!(out.contains("architectures: arm64"), "{out}");
    assert!(!out.contains("amd64"), "{out}");
    let names: Vec<String> = entries(&fs::read(&small).unwrap())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let Sample {
        layout: img,
        amd64,
        arm64,
    } = sample("sensor");
    for (d, _) in image_blobs(img, arm64) {
        assert!(names.contains(&format!("blobs/sha256/{}", d.hex())), "{d}");
    }
    assert!(!names.contains(&format!("blobs/sha256/{}", &amd64[7..])));
    assert!(
        names.contains(&"metadata/1.fleets.json".to_string()),
        "{names:?}"
    );
    ok(&berth(&[
        "bundle",
        "verify",
        small.to_str().unwrap(),
        "--root",
        fx.root1().to_str().unwrap(),
    ]));

    // A bundle checked against a root the repository does not use is refused.
    let other = Fixture::new();
    let o = berth(&[
        "bundle",
        "verify",
        file.to_str().unwrap(),
        "--root",
        other.root1().to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pumps.bundle"), "{}", text(&o));

    // A blob missing from the sources: the error names the image, digest and what to do.
    let empty = fx.dir.path().join("empty");
    fs::create_dir_all(empty.join("blobs/sha256")).unwrap();
    let o = berth(&[
        "bundle",
        "create",
        "--repo",
        &fx.p("repo"),
        "--fleet",
        "pumps",
        "--from",
        empty.to_str().unwrap(),
        "-o",
        &fx.p("never.bundle"),
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    for want in [
        "berth/sensor",
        "manifest",
        &amd64[..],
        empty.to_str().unwrap(),
        "--from",
        "berth image build",
    ] {
        assert!(t.contains(want), "{want}: {t}");
    }
    assert!(!fx.dir.path().join("never.bundle").exists());
}

#[test]
fn import_fills_a_fresh_device_and_its_images_unpack_offline() {
    let fx = Fixture::new();
    let (file, _) = fx.bundle("pumps.bundle", &[]);
    let dev = Device::new(&fx.root1());
    let got = dev.import(&file).unwrap();
    assert_eq!(got.document, fx.release(1));
    assert_eq!(got.release.generation, 1);
    assert_eq!(fs::read(&got.target_file).unwrap(), fx.release(1));
    assert!(got.target_file.starts_with(dev.targets()));
    assert_eq!(got.images.len(), 1);
    assert_eq!(got.images[0].arch, Arch::Arm64);
    assert_eq!((got.blobs_added, got.blobs_present), (4, 0));
    assert!(dev.trust.load("fleets").unwrap().is_some());
    assert!(dev.trust.time_floor().unwrap().is_some());

    // Every blob of the arm64 image is in the store, verified; amd64's are not.
    let store = &dev.store;
    let Sample {
        layout: img,
        amd64,
        arm64,
    } = sample("sensor");
    for (d, size) in image_blobs(img, arm64) {
        assert!(store.has(&d), "{d} missing");
        assert_eq!(fs::metadata(store.blob_path(&d)).unwrap().len(), size);
    }
    let amd64_manifest: Digest = amd64.parse().unwrap();
    assert!(!store.has(&amd64_manifest));
    let check = store.check().unwrap();
    assert_eq!((check.blobs, check.partials), (4, 0), "{check:?}");
    assert!(check.problems.is_empty(), "{check:?}");
    assert!(
        store.ref_counts().unwrap().is_empty(),
        "an import sets no references"
    );

    // Importing again changes nothing and stores no blob.
    let again = dev.import(&file).unwrap();
    assert_eq!((again.blobs_added, again.blobs_present), (0, 4));

    // What the agent does when it stages the release: a pull that finds
    // everything in the store (the registry named in the release does not
    // exist, so any fetch would fail), then an unpack from the store.
    let spec = &got.release.workloads[0].image;
    let pin = spec.digests[&Arch::Arm64].as_str();
    let reference = format!("{}/{}@{pin}", spec.registry, spec.repository)
        .parse()
        .unwrap();
    let pulled = berth_image::registry::pull_blocking(
        berth_image::registry::ClientConfig {
            attempts: 1,
            ..Default::default()
        },
        &reference,
        store,
    )
    .unwrap();
    assert_eq!(
        (pulled.report.network_bytes, pulled.report.fetched_blobs),
        (0, 0)
    );
    let layout = berth_image::layout::Layout {
        dir: store.root().to_path_buf(),
    };
    let ldigest = berth_image::layout::Digest::parse(pin).unwrap();
    let bytes = store.read_blob(&pin.parse().unwrap(), 1 << 20).unwrap();
    let manifest: berth_image::layout::Manifest =
        berth_image::layout::parse(&bytes, "manifest", pin).unwrap();
    fs::create_dir_all(dev.dir.path().join("images")).unwrap();
    let dest = dev.dir.path().join("images/sensor");
    let unpacked = berth_image::unpack::unpack_manifest(
        &layout,
        &ldigest,
        &manifest,
        &dest,
        &berth_image::unpack::Options::default(),
    )
    .unwrap();
    assert!(unpacked.dir.join("rootfs/sensor").is_file());

    // A rotated root and a new release: the bundle carries the whole root
    // chain, so a device that trusts root v1 follows it.
    ok(&berth(&[
        "repo",
        "rotate-root",
        &fx.p("repo"),
        "--root-key",
        &fx.p("root2.pub"),
        "--sign",
        &fx.p("root"),
        "--sign",
        &fx.p("root2"),
    ]));
    fx.publish(2);
    let (file2, out) = fx.bundle("pumps-2.bundle", &[]);
    assert!(out.contains("root v2"), "{out}");
    let got = dev.import(&file2).unwrap();
    assert_eq!((got.versions.root, got.release.generation), (2, 2));
    assert_eq!(got.blobs_added, 0);
    let fresh = Device::new(&fx.root1());
    let got = fresh.import(&file2).unwrap();
    assert_eq!((got.versions.root, got.blobs_added), (2, 4));
}
