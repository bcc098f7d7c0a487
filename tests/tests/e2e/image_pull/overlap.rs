//! Download and unpack overlapped (`berth image pull --unpack`, the agent's
//! path): earlier layers are applied while later ones still download, and a
//! fault in a later layer leaves no rootfs, no partial blob and the store's
//! references as they were.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_image::registry::Digest;
use berth_tests::images::{gzip, Tar};
use berth_tests::registry::Proxy;
use berth_tests::{run, text};

use super::*;

/// Blob digests of the layers of the manifest `digest` in `layout`.
fn layers_of(layout: &Path, digest: &str) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap())
            .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Reference counts of the store, closed again (sled allows one opener).
fn refs(store: &Path) -> Vec<(Digest, u64)> {
    let s = assert_consistent(store);
    let mut v = s.ref_counts().unwrap();
    v.sort_by_key(|a| a.0.to_string());
    v
}

#[test]
fn later_layer_corrupt_after_earlier_ones_were_applied_leaves_nothing() {
    berth_tests::require_root!();
    let e = env();
    // An image already pulled: its references must survive the failure.
    let base = umoci_image(&e.p("base"), &[noise_layer(e.dir.path(), "b", 80, 1)]);
    let base_digest = e.reg.skopeo_push(Path::new(&base), "t", "ovl/base");
    let store = e.p("store");
    ok(&run(&mut e.pull(
        &e.reg.host(),
        "ovl/base",
        &base_digest,
        &store,
    )));
    let before = refs(&store);
    assert!(!before.is_empty());

    // Two small layers, then a large one whose bytes the registry corrupts:
    // its digest fails only once all of it arrived.
    let lay = umoci_image(
        &e.p("layout"),
        &[
            noise_layer(e.dir.path(), "l0", 81, 1),
            noise_layer(e.dir.path(), "l1", 82, 1),
            noise_layer(e.dir.path(), "l2", 83, 6),
        ],
    );
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "ovl/app");
    let layers = layers_of(Path::new(&lay), &digest);
    let data = e.reg.blob_data(&layers[2][7..]);
    let mut bad = fs::read(&data).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&data, &bad).unwrap();

    // 1 MiB/s per connection: the small layers arrive in about a second,
    // the large one takes about six.
    let proxy = Proxy::start(e.reg.port);
    proxy.throttle(Some(1 << 20));
    let dest = e.p("image");
    let staging = e.p(".image.unpacking");
    let mut child = e
        .pull(&proxy.host(), "ovl/app", &digest, &store)
        .arg("--unpack")
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Layers 0 and 1 are applied while layer 2 is still downloading.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut overlapped = None;
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        if staging.join("rootfs/data/l1").is_file() {
            overlapped = Some(proxy.bytes().1);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    let down = overlapped.unwrap_or_else(|| panic!("layer 1 was never applied mid-pull: {t}"));
    assert!(
        down < 6 << 20,
        "layer 1 was applied only after {down} bytes, the large layer had arrived: {t}"
    );
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("blob {}", layers[2])) && t.contains("hashes to"),
        "the error names the corrupt layer: {t}"
    );
    assert!(!dest.exists(), "a rootfs was left at {}", dest.display());
    assert!(!staging.exists(), "the staging rootfs was left");
    assert_eq!(refs(&store), before, "the store's references changed");
    let s = assert_consistent(&store);
    assert!(!s.has(&layers[2].parse().unwrap()));
    drop(s);

    // Served right, the same store pulls and unpacks the image.
    bad[mid] ^= 0xff;
    fs::write(&data, &bad).unwrap();
    proxy.throttle(None);
    let out = ok(&run(e
        .pull(&proxy.host(), "ovl/app", &digest, &store)
        .arg("--unpack")
        .arg(&dest)));
    assert!(out.contains("measurement=blake3:"), "{out}");
    assert!(dest.join("rootfs/data/l2").is_file());
}

#[test]
fn refused_layer_cancels_the_downloads_still_running() {
    berth_tests::require_root!();
    let e = env();
    let l = HandLayout::new(e.p("bad"));
    let tars = [
        Tar::new().file("a", 0o644, b"first layer").finish(),
        Tar::new().file("../escape", 0o644, b"out").finish(),
        Tar::new().file("big", 0o644, &noise(90, 8 << 20)).finish(),
    ];
    let mut layers = Vec::new();
    let mut diffs = Vec::new();
    for t in &tars {
        let mut b = l.blob(&gzip(t));
        b["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        layers.push(b);
        diffs.push(Digest::of(t).to_string());
    }
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diffs}, "config": {}});
    let mut c = l.blob(&serde_json::to_vec(&config).unwrap());
    c["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let digest = l.top(
        OCI_MANIFEST,
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": c, "layers": layers}),
    );
    ok(&run(&mut e.push(&e.reg.host(), &l.dir, "ovl/bad:t")));
    let refused = layers[1]["digest"].as_str().unwrap().to_string();
    let big = layers[2]["digest"].as_str().unwrap().to_string();
    let big_size = layers[2]["size"].as_u64().unwrap();

    let proxy = Proxy::start(e.reg.port);
    proxy.throttle(Some(1 << 20));
    let store = e.p("store");
    let dest = e.p("image");
    let o = run(e
        .pull(&proxy.host(), "ovl/bad", &digest, &store)
        .arg("--unpack")
        .arg(&dest));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("layer {refused}")) && t.contains("'../escape' refused"),
        "the error names the refused layer: {t}"
    );
    let (_, down) = proxy.bytes();
    assert!(
        down < big_size,
        "the large layer was downloaded in full ({down} bytes) after the refusal"
    );
    assert!(!dest.exists() && !e.p(".image.unpacking").exists());
    let s = assert_consistent(&store);
    assert!(!s.has(&big.parse().unwrap()), "the cancelled blob was kept");
    assert!(
        s.ref_counts().unwrap().is_empty(),
        "something was referenced"
    );
}
