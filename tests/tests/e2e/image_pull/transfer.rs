//! Pull and push with real peers: umoci/skopeo parity, resumable pushes,
//! credentials, layers already present.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::images::listing;
use berth_tests::registry::Proxy;
use berth_tests::{bin, run, text};

use super::*;

#[test]
fn umoci_image_pushed_by_skopeo_pulls_and_unpacks_like_umoci() {
    berth_tests::require_root!();
    let e = env();
    let src = e.p("src1");
    for d in ["bin", "etc", "home/app", "tmp", "gone"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    fs::write(src.join("etc/motd"), b"hello\n").unwrap();
    fs::write(src.join("etc/shadow"), b"root:*:1::::::\n").unwrap();
    fs::write(src.join("home/app/data"), noise(1, 300_000)).unwrap();
    fs::write(src.join("gone/file"), b"whited out later").unwrap();
    sh(
        &src,
        "chmod 755 bin/busybox && chown 0:42 etc/motd && chmod 600 etc/shadow \
         && chown -R 1000:1000 home/app && chmod 700 home/app && chmod 640 home/app/data \
         && chmod 1777 tmp",
    );
    let src2 = e.p("src2");
    fs::create_dir_all(src2.join("etc/conf.d")).unwrap();
    fs::create_dir_all(src2.join("usr/bin")).unwrap();
    fs::write(src2.join("etc/conf.d/app.conf"), b"level=2\n").unwrap();
    std::os::unix::fs::symlink("../../bin/busybox", src2.join("usr/bin/env")).unwrap();
    sh(
        &src2,
        "chown 2:3 etc/conf.d/app.conf && chmod 444 etc/conf.d/app.conf && chmod 750 etc/conf.d",
    );
    let lay = umoci_image(&e.p("layout"), &[src, src2]);
    umoci(&[
        "insert",
        "--image",
        &format!("{lay}:t"),
        "--whiteout",
        "/gone",
    ]);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "umoci/app");
    assert_eq!(
        digest,
        layout_digest(Path::new(&lay)),
        "the registry holds umoci's manifest unchanged"
    );

    let store = e.p("store");
    let dest = e.p("by-berth");
    let out = ok(&run(e
        .pull(&e.reg.host(), "umoci/app", &digest, &store)
        .arg("--unpack")
        .arg(&dest)));
    assert!(out.contains(&format!("manifest={digest}")), "{out}");
    assert_eq!(
        kv(&out, "fetched_blobs"),
        4,
        "config and three layers: {out}"
    );
    assert_eq!(kv(&out, "present_blobs"), 0, "{out}");
    assert!(out.contains("measurement=blake3:"), "{out}");
    let (total, _) = image_bytes(&store, &digest);
    assert_eq!(kv(&out, "network_bytes"), total, "{out}");

    umoci(&[
        "unpack",
        "--image",
        &format!("{lay}:t"),
        &e.p("by-umoci").to_string_lossy(),
    ]);
    let a = listing(&e.p("by-umoci/rootfs"));
    let b = listing(&dest.join("rootfs"));
    for want in [
        "/home/app 700 1000:1000 d",
        "/tmp 1777 0:0 d",
        "/etc/shadow 600 0:0 f",
        "/etc/conf.d/app.conf 444 2:3 f",
        "/etc/conf.d 750 0:0 d",
        "/bin/sh 777 0:0 l busybox",
        "/usr/bin/env 777 0:0 l ../../bin/busybox",
    ] {
        assert!(a.iter().any(|l| l.starts_with(want)), "{want}: {a:#?}");
    }
    assert!(!a.iter().any(|l| l.starts_with("/gone")), "{a:#?}");
    assert_eq!(a, b, "berth's pull + unpack differs from umoci unpack");
    assert_consistent(&store);
}

/// A directory for `berth image build` with a `mb`-MiB file of noise.
fn berth_sample(dir: &Path, mb: usize) -> PathBuf {
    let src = dir.join("berth-src");
    for d in ["rootfs/bin", "rootfs/data", "rootfs-amd64", "rootfs-arm64"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", src.join("rootfs/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("rootfs/bin/sh")).unwrap();
    fs::write(src.join("rootfs/data/noise"), noise(7, mb << 20)).unwrap();
    fs::write(src.join("rootfs-amd64/arch"), b"amd64").unwrap();
    fs::write(src.join("rootfs-arm64/arch"), b"arm64").unwrap();
    fs::write(
        src.join("recipe.toml"),
        "architectures = [\"amd64\", \"arm64\"]\nentrypoint = [\"/bin/sh\"]\n\
         [[path]]\npath = \"data\"\nmode = \"0750\"\nowner = \"1000:1000\"\n",
    )
    .unwrap();
    let out = dir.join("berth-layout");
    let o = run(Command::new(bin("berth"))
        .args(["image", "build"])
        .arg(&src)
        .arg("-o")
        .arg(&out));
    let built = ok(&o);
    fs::write(dir.join("berth-build.txt"), built).unwrap();
    out
}

#[test]
fn berth_push_is_resumable_and_skopeo_pulls_it_back() {
    berth_tests::require_root!();
    let e = env();
    let layout = berth_sample(e.dir.path(), 10);
    let built = fs::read_to_string(e.p("berth-build.txt")).unwrap();
    let index = built
        .lines()
        .find_map(|l| l.strip_prefix("index "))
        .unwrap();
    let amd64 = built
        .lines()
        .find_map(|l| l.strip_prefix("manifest amd64 "))
        .unwrap();

    // The upload is cut 6 MiB in (inside the second 4 MiB chunk of the
    // large layer): the push asks the registry where it stopped and goes on.
    let proxy = Proxy::start(e.reg.port);
    proxy.cut_up_after(6 << 20);
    let out = ok(&run(&mut e.push(
        &proxy.host(),
        &layout,
        "berth/sample:latest",
    )));
    assert_eq!(proxy.cuts(), 1, "the upload was not cut: {out}");
    assert!(out.contains(&format!("digest={index}")), "{out}");
    assert!(kv(&out, "resumed_uploads") >= 1, "{out}");
    let first_uploaded = kv(&out, "uploaded_blobs");
    assert!(first_uploaded >= 4, "{out}");
    // The architectures share their common layer: it is uploaded once.
    let first_seen = first_uploaded + kv(&out, "existing_blobs");

    // skopeo copies the whole index back without changing a digest.
    let back = e.p("back");
    let o = e.reg.skopeo_src(
        "copy",
        &[
            "--all",
            "--preserve-digests",
            &format!("docker://{}/berth/sample:latest", e.reg.host()),
            &format!("oci:{}:latest", back.display()),
        ],
    );
    ok(&o);
    assert_eq!(layout_digest(&back), index);
    // And the amd64 image alone, which umoci unpacks to what berth unpacks.
    let one = e.p("back-amd64");
    ok(&e.reg.skopeo_src(
        "copy",
        &[
            "--preserve-digests",
            &format!("docker://{}/berth/sample@{amd64}", e.reg.host()),
            &format!("oci:{}:x", one.display()),
        ],
    ));
    assert_eq!(layout_digest(&one), amd64);
    umoci(&[
        "unpack",
        "--image",
        &format!("{}:x", one.display()),
        &e.p("u").to_string_lossy(),
    ]);
    ok(&run(Command::new(bin("berth"))
        .args(["image", "unpack", "--digest", amd64])
        .arg(&layout)
        .arg(e.p("b"))));
    assert_eq!(listing(&e.p("u/rootfs")), listing(&e.p("b/rootfs")));

    // A second push moves no blob: every one is already there.
    let out = ok(&run(&mut e.push(
        &e.reg.host(),
        &layout,
        "berth/sample:latest",
    )));
    assert!(out.contains(&format!("digest={index}")), "{out}");
    assert_eq!(kv(&out, "uploaded_blobs"), 0, "{out}");
    assert_eq!(kv(&out, "uploaded_bytes"), 0, "{out}");
    assert_eq!(kv(&out, "existing_blobs"), first_seen, "{out}");
}

#[test]
fn missing_or_wrong_credentials_are_clear_errors() {
    berth_tests::require_root!();
    let e = env();
    let lay = umoci_image(&e.p("layout"), &[noise_layer(e.dir.path(), "a", 3, 1)]);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "auth/app");
    let store = e.p("store");
    let host = e.reg.host();

    let mut c = e.pull(&host, "auth/app", &digest, &store);
    c.env_remove("BERTH_REGISTRY_PASSWORD");
    let o = run(&mut c);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("BERTH_REGISTRY_PASSWORD is not set"),
        "{}",
        text(&o)
    );

    let o = run(Command::new(bin("berth"))
        .args(["image", "pull", "--ca"])
        .arg(e.reg.ca())
        .arg("--store")
        .arg(&store)
        .arg(format!("{host}/auth/app@{digest}")));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&host)
            && t.contains("asks for authentication")
            && t.contains("pass --user and set BERTH_REGISTRY_PASSWORD"),
        "{t}"
    );

    let o = run(e
        .pull(&host, "auth/app", &digest, &store)
        .env("BERTH_REGISTRY_PASSWORD", "wrong"));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&host)
            && t.contains("refused the credentials (401)")
            && t.contains("check the user and password"),
        "{t}"
    );
    let s = assert_consistent(&store);
    assert!(
        !s.has(&digest.parse().unwrap()),
        "nothing entered the store"
    );
    drop(s);

    let o = run(e
        .push(&host, Path::new(&lay), "auth/other:t")
        .env("BERTH_REGISTRY_PASSWORD", "wrong"));
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("refused the credentials"),
        "{t}"
    );

    let out = ok(&run(&mut e.pull(&host, "auth/app", &digest, &store)));
    assert_eq!(kv(&out, "fetched_blobs"), 2, "{out}");
}

#[test]
fn a_layer_already_present_is_never_fetched_again() {
    berth_tests::require_root!();
    let e = env();
    let lay = e.p("layout").to_string_lossy().into_owned();
    umoci(&["init", "--layout", &lay]);
    umoci(&["new", "--image", &format!("{lay}:a")]);
    let base = noise_layer(e.dir.path(), "base", 51, 8);
    umoci(&[
        "insert",
        "--image",
        &format!("{lay}:a"),
        &base.to_string_lossy(),
        "/",
    ]);
    umoci(&["tag", "--image", &format!("{lay}:a"), "b"]);
    let app1 = noise_layer(e.dir.path(), "app1", 52, 1);
    let app2 = noise_layer(e.dir.path(), "app2", 53, 1);
    umoci(&[
        "insert",
        "--image",
        &format!("{lay}:a"),
        &app1.to_string_lossy(),
        "/",
    ]);
    umoci(&[
        "insert",
        "--image",
        &format!("{lay}:b"),
        &app2.to_string_lossy(),
        "/",
    ]);
    let a = e.reg.skopeo_push(Path::new(&lay), "a", "shared/app");
    let b = e.reg.skopeo_push(Path::new(&lay), "b", "shared/app");
    let store = e.p("store");

    let out = ok(&run(&mut e.pull(&e.reg.host(), "shared/app", &a, &store)));
    assert_eq!(kv(&out, "fetched_blobs"), 3, "{out}");
    let (_, la) = image_bytes(&store, &a);
    let out = ok(&run(&mut e.pull(&e.reg.host(), "shared/app", &b, &store)));
    let (_, lb) = image_bytes(&store, &b);
    assert_eq!(la[0], lb[0], "the images share their base layer");
    assert_ne!(la[1], lb[1]);
    assert_eq!(
        kv(&out, "fetched_blobs"),
        2,
        "config and the new layer: {out}"
    );
    assert_eq!(kv(&out, "present_blobs"), 1, "the base layer: {out}");
    let s = open_store(&store);
    let size = |d: &str| {
        fs::metadata(s.blob_path(&d.parse().unwrap()))
            .unwrap()
            .len()
    };
    let mb = s.read_blob(&b.parse().unwrap(), 1 << 20).unwrap();
    let cfg = serde_json::from_slice::<serde_json::Value>(&mb).unwrap()["config"]["size"]
        .as_u64()
        .unwrap();
    assert_eq!(
        kv(&out, "network_bytes"),
        mb.len() as u64 + cfg + size(&lb[1]),
        "only the manifest, config and changed layer moved: {out}"
    );
    drop(s);
    let out = ok(&run(&mut e.pull(&e.reg.host(), "shared/app", &a, &store)));
    assert_eq!(kv(&out, "network_bytes"), 0, "{out}");
    assert_eq!(kv(&out, "fetched_blobs"), 0, "{out}");
    let s = assert_consistent(&store);
    assert!(
        s.gc().unwrap().removed.is_empty(),
        "both images hold every blob"
    );
}
