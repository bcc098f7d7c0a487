//! Pulls through faults: a registry killed mid-blob, a corrupted blob, a
//! full disk, documents the device refuses.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use berth_image::registry::Digest;
use berth_tests::images::{gzip, listing, Tar};
use berth_tests::registry::{Proxy, Registry, Tmpfs};
use berth_tests::{run, text};

use super::*;

#[test]
fn registry_killed_mid_blob_resumes_without_refetching() {
    berth_tests::require_root!();
    let mut e = env();
    let layers = [
        noise_layer(e.dir.path(), "a", 11, 12),
        noise_layer(e.dir.path(), "b", 12, 12),
    ];
    let lay = umoci_image(&e.p("layout"), &layers);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "kill/app");
    let store = e.p("store");
    let proxy = Proxy::start(e.reg.port);
    // 10 MiB into the transfer both layers are half-way: the connection is
    // cut there, the registry is killed (SIGKILL) and started again on the
    // same port and storage, and only then may the client reconnect.
    proxy.cut_down_after(10 << 20, true);
    let child = e
        .pull(&proxy.host(), "kill/app", &digest, &store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        proxy.wait_for(Duration::from_secs(60), |cuts, _| cuts >= 1),
        "the transfer never reached 10 MiB"
    );
    e.reg.stop();
    std::thread::sleep(Duration::from_millis(300));
    e.reg.restart();
    proxy.resume();
    let o = child.wait_with_output().unwrap();
    let out = ok(&o);
    let (total, _) = image_bytes(&store, &digest);
    assert!(kv(&out, "resumes") >= 1, "{out}");
    assert_eq!(kv(&out, "refetched_bytes"), 0, "{out}");
    assert_eq!(
        kv(&out, "network_bytes"),
        total,
        "every byte of the image arrived exactly once: {out}"
    );
    // On the wire, too: TLS framing and headers aside, nothing came twice.
    let (_, down) = proxy.bytes();
    assert!(
        down < total + total / 50 + (256 << 10),
        "{down} bytes crossed the proxy for a {total}-byte image"
    );
    let s = assert_consistent(&store);
    s.unpack(
        &digest.parse().unwrap(),
        &e.p("by-berth"),
        &Default::default(),
    )
    .unwrap();
    umoci(&[
        "unpack",
        "--image",
        &format!("{lay}:t"),
        &e.p("by-umoci").to_string_lossy(),
    ]);
    assert_eq!(
        listing(&e.p("by-umoci/rootfs")),
        listing(&e.p("by-berth/rootfs"))
    );
}

#[test]
fn corrupted_blob_is_refused_and_never_enters_the_store() {
    berth_tests::require_root!();
    let e = env();
    let lay = umoci_image(&e.p("layout"), &[noise_layer(e.dir.path(), "a", 21, 3)]);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "corrupt/app");
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(Path::new(&lay).join("blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let data = e.reg.blob_data(&layer[7..]);
    let good = fs::read(&data).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&data, &bad).unwrap();

    let store = e.p("store");
    let o = run(&mut e.pull(&e.reg.host(), "corrupt/app", &digest, &store));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("blob {layer}")) && t.contains("hashes to") && t.contains(&layer),
        "{t}"
    );
    let s = assert_consistent(&store);
    let ld: Digest = layer.parse().unwrap();
    assert!(!s.has(&ld), "the corrupted blob entered the store");
    assert!(!store.join("blobs/sha256").join(&layer[7..]).exists());
    assert!(
        s.ref_counts().unwrap().is_empty(),
        "something was referenced"
    );
    drop(s);

    // Once the registry serves the right bytes, the same store pulls it.
    fs::write(&data, &good).unwrap();
    let out = ok(&run(&mut e.pull(
        &e.reg.host(),
        "corrupt/app",
        &digest,
        &store,
    )));
    assert_eq!(kv(&out, "refetched_bytes"), 0, "{out}");
    assert!(assert_consistent(&store).has(&ld));
}

#[test]
fn disk_too_small_is_refused_before_the_pull() {
    berth_tests::require_root!();
    let e = env();
    let lay = umoci_image(&e.p("layout"), &[noise_layer(e.dir.path(), "a", 31, 8)]);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "small/app");
    let fs4 = Tmpfs::mount(4 << 20);
    let store = fs4.path.join("store");
    let o = run(&mut e.pull(&e.reg.host(), "small/app", &digest, &store));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&store.display().to_string())
            && t.contains("bytes free but needs")
            && t.contains("free space"),
        "{t}"
    );
    let s = assert_consistent(&store);
    assert!(s.ref_counts().unwrap().is_empty());
    let blobs = fs::read_dir(store.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "nothing may be stored before the space check");
}

#[test]
fn disk_full_mid_blob_is_a_clear_error_and_the_store_stays_consistent() {
    berth_tests::require_root!();
    let e = env();
    let layers = [
        noise_layer(e.dir.path(), "a", 41, 6),
        noise_layer(e.dir.path(), "b", 42, 6),
    ];
    let lay = umoci_image(&e.p("layout"), &layers);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "full/app");
    let disk = Tmpfs::mount(40 << 20);
    let store = disk.path.join("store");
    let proxy = Proxy::start(e.reg.port);
    proxy.throttle(Some(2 << 20));
    let child = e
        .pull(&proxy.host(), "full/app", &digest, &store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The free-space check has passed once blob bytes flow; then another
    // writer takes the rest of the filesystem.
    assert!(
        proxy.wait_for(Duration::from_secs(60), |_, down| down > 2 << 20),
        "the pull never started"
    );
    let filler = disk.fill(0);
    proxy.throttle(None);
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("is full while writing sha256:") && t.contains("free space and pull again"),
        "{t}"
    );
    fs::remove_file(filler).unwrap();
    let s = assert_consistent(&store);
    assert!(
        s.ref_counts().unwrap().is_empty(),
        "something was referenced"
    );
    drop(s);
    let out = ok(&run(&mut e.pull(
        &e.reg.host(),
        "full/app",
        &digest,
        &store,
    )));
    // The layers start from scratch (their partials went with the error);
    // only the small config may have been committed before the disk filled.
    assert_eq!(
        kv(&out, "fetched_blobs") + kv(&out, "present_blobs"),
        3,
        "{out}"
    );
    assert!(kv(&out, "fetched_blobs") >= 2, "{out}");
    assert_eq!(kv(&out, "resumes"), 0, "{out}");
    let s = assert_consistent(&store);
    assert_eq!(s.ref_counts().unwrap().len(), 4);
}

/// A one-layer manifest in `l`; `layer_extra` and `config_type` make it wrong.
fn manifest(
    l: &HandLayout,
    content: &[u8],
    config_type: &str,
    layer_type: &str,
    urls: &[String],
) -> serde_json::Value {
    let tar = Tar::new().file("hello", 0o644, content).finish();
    let diff = Digest::of(&tar).to_string();
    let mut layer = l.blob(&gzip(&tar));
    layer["mediaType"] = layer_type.into();
    if !urls.is_empty() {
        layer["urls"] = serde_json::json!(urls);
    }
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff]}, "config": {}});
    let mut c = l.blob(&serde_json::to_vec(&config).unwrap());
    c["mediaType"] = config_type.into();
    serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": c, "layers": [layer]})
}

#[test]
fn documents_the_device_refuses_through_the_registry() {
    berth_tests::require_root!();
    let e = env();
    let host = e.reg.host();
    let oci_config = "application/vnd.oci.image.config.v1+json";
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let push = |name: &str, l: &HandLayout| {
        ok(&run(&mut e.push(&host, &l.dir, &format!("docs/{name}:t"))));
    };

    // A good manifest pulls; the index above it is refused unless a
    // per-platform manifest is pinned, and names the candidates.
    let good = HandLayout::new(e.p("good"));
    let m = manifest(&good, b"good", oci_config, gz, &[]);
    let md = Digest::of(&serde_json::to_vec(&m).unwrap()).to_string();
    let mut entry = good.blob(&serde_json::to_vec(&m).unwrap());
    entry["mediaType"] = OCI_MANIFEST.into();
    entry["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    let idx = good.top(
        "application/vnd.oci.image.index.v1+json",
        &serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]}),
    );
    push("good", &good);
    let store = e.p("store");
    ok(&run(&mut e.pull(&host, "docs/good", &md, &store)));
    let o = run(&mut e.pull(&host, "docs/good", &idx, &store));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("is an index; pin one of its per-platform manifests")
            && t.contains(&format!("linux/amd64 {md}")),
        "{t}"
    );

    // Media type contradicting the content: an OCI manifest whose config is
    // a Docker config.
    let mixed = HandLayout::new(e.p("mixed"));
    let m = manifest(
        &mixed,
        b"mixed",
        "application/vnd.docker.container.image.v1+json",
        gz,
        &[],
    );
    let d = mixed.top(OCI_MANIFEST, &m);
    push("mixed", &mixed);
    let o = run(&mut e.pull(&host, "docs/mixed", &d, &store));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("manifest {d} declares media type")),
        "{t}"
    );

    // A foreign layer: its URL (a listener of this test) is never contacted
    // and the layer never fetched.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://{}/layer", listener.local_addr().unwrap());
    let foreign = HandLayout::new(e.p("foreign"));
    let m = manifest(
        &foreign,
        b"foreign",
        oci_config,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        std::slice::from_ref(&url),
    );
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let d = foreign.top(OCI_MANIFEST, &m);
    push("foreign", &foreign);
    let o = run(&mut e.pull(&host, "docs/foreign", &d, &store));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("layer {layer} of manifest {d} is a foreign layer"))
            && t.contains("never fetched"),
        "{t}"
    );
    assert!(listener.accept().is_err(), "the foreign URL was contacted");
    let s = assert_consistent(&store);
    assert!(!s.has(&layer.parse().unwrap()));
    assert_eq!(
        s.ref_counts().unwrap().len(),
        3,
        "only the good image is held"
    );
}

#[test]
fn redirected_blobs_carry_no_credentials_and_a_refused_link_is_asked_again() {
    berth_tests::require_root!();
    let dir = berth_tests::open_tempdir();
    let reg = Registry::start_redirecting(&dir.path().join("registry"));
    let e = Env { dir, reg };
    let lay = umoci_image(&e.p("layout"), &[noise_layer(e.dir.path(), "a", 95, 1)]);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "redir/app");
    let st = e.reg.storage.as_ref().unwrap();
    let blob_requests = || -> Vec<serde_json::Value> {
        st.requests()
            .into_iter()
            .filter(|r| r["path"].as_str().unwrap().contains("/blobs/sha256/"))
            .collect()
    };
    let seen = blob_requests().len();

    // The storage host refuses the first link (a signature that expired):
    // the registry is asked again for a fresh one.
    st.refuse(1, 403);
    let store = e.p("store");
    let out = ok(&run(&mut e.pull(
        &e.reg.host(),
        "redir/app",
        &digest,
        &store,
    )));
    assert_eq!(kv(&out, "fetched_blobs"), 2, "{out}");
    let reqs = blob_requests().split_off(seen);
    assert_eq!(
        reqs.iter().filter(|r| r["status"] == 403).count(),
        1,
        "{reqs:?}"
    );
    assert_eq!(
        reqs.iter().filter(|r| r["status"] == 200).count(),
        2,
        "config and layer came from the storage host: {reqs:?}"
    );
    assert!(
        reqs.iter().all(|r| r["auth"] == false),
        "the registry's credentials went to the storage host: {reqs:?}"
    );
    assert_consistent(&store);

    // A storage host that keeps refusing, with a challenge of its own: a
    // clear error naming it, not a wrong password.
    st.refuse(1000, 401);
    let store2 = e.p("store2");
    let o = run(&mut e.pull(&e.reg.host(), "redir/app", &digest, &store2));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "redirected to https://127.0.0.1:{}/docker/registry/v2/blobs/sha256/",
            st.port
        )) && t.contains("which refused the request (401)")
            && !t.contains("check the user"),
        "{t}"
    );
    assert!(blob_requests().iter().all(|r| r["auth"] == false));
    let s = assert_consistent(&store2);
    assert!(s.ref_counts().unwrap().is_empty());
}
