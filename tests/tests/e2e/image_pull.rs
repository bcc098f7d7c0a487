//! Images: pulls from and pushes to a real Distribution registry
//! (`docker-registry`) with TLS and htpasswd auth, against images built by
//! umoci and pushed by skopeo (and the reverse), through faults: a registry
//! killed mid-blob, a corrupted blob, a full disk, refused documents.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use berth_image::registry::Digest;
use berth_image::store::Store;
use berth_tests::images::{gzip, listing, Tar};
use berth_tests::registry::{Proxy, Registry, Tmpfs, PASSWORD, USER};
use berth_tests::{bin, open_tempdir, run, text};

/// A test's directory and its registry.
struct Env {
    dir: tempfile::TempDir,
    reg: Registry,
}

fn env() -> Env {
    let dir = open_tempdir();
    let reg = Registry::start(&dir.path().join("registry"));
    Env { dir, reg }
}

impl Env {
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    /// `berth image pull` of `repo@digest` from `host` (the registry or a
    /// proxy in front of it) into `store`, with the right credentials.
    fn pull(&self, host: &str, repo: &str, digest: &str, store: &Path) -> Command {
        let mut c = Command::new(bin("berth"));
        c.args(["image", "pull", "--deadline", "120", "--ca"])
            .arg(self.reg.ca())
            .args(["--user", USER, "--store"])
            .arg(store)
            .arg(format!("{host}/{repo}@{digest}"))
            .env("BERTH_REGISTRY_PASSWORD", PASSWORD)
            .stdin(Stdio::null());
        c
    }

    /// `berth image push` of the layout to `host/target`.
    fn push(&self, host: &str, layout: &Path, target: &str) -> Command {
        let mut c = Command::new(bin("berth"));
        c.args(["image", "push", "--deadline", "120", "--ca"])
            .arg(self.reg.ca())
            .args(["--user", USER])
            .arg(layout)
            .arg(format!("{host}/{target}"))
            .env("BERTH_REGISTRY_PASSWORD", PASSWORD)
            .stdin(Stdio::null());
        c
    }
}

/// The number after `key=` in a report (`a=1 b=2` lines).
fn kv(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    text(o)
}

fn umoci(args: &[&str]) {
    let o = run(Command::new("umoci").args(args));
    assert!(o.status.success(), "umoci {args:?}: {}", text(&o));
}

fn sh(dir: &Path, c: &str) {
    let o = run(Command::new("sh").arg("-c").arg(c).current_dir(dir));
    assert!(o.status.success(), "{c}: {}", text(&o));
}

/// Deterministic incompressible bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An umoci image `layout:t` with one layer per directory in `layers`.
fn umoci_image(layout: &Path, layers: &[PathBuf]) -> String {
    let l = layout.to_string_lossy().into_owned();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:t")]);
    for src in layers {
        umoci(&[
            "insert",
            "--image",
            &format!("{l}:t"),
            &src.to_string_lossy(),
            "/",
        ]);
    }
    l
}

/// One layer holding `name` with `mb` MiB of noise.
fn noise_layer(dir: &Path, name: &str, seed: u64, mb: usize) -> PathBuf {
    let src = dir.join(format!("src-{name}"));
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data").join(name), noise(seed, mb << 20)).unwrap();
    src
}

/// The manifest digest the layout's index gives for tag `t`.
fn layout_digest(layout: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    v["manifests"][0]["digest"].as_str().unwrap().to_string()
}

/// Manifest length plus the declared sizes of its config and layers: what a
/// pull that fetches every byte exactly once receives.
fn image_bytes(store: &Path, manifest: &str) -> (u64, Vec<String>) {
    let s = Store::open(store).unwrap();
    let bytes = s.read_blob(&manifest.parse().unwrap(), 1 << 20).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut total = bytes.len() as u64 + m["config"]["size"].as_u64().unwrap();
    let mut layers = Vec::new();
    for l in m["layers"].as_array().unwrap() {
        total += l["size"].as_u64().unwrap();
        layers.push(l["digest"].as_str().unwrap().to_string());
    }
    (total, layers)
}

/// Opens the store and asserts it is consistent: every blob hashes to its
/// name, no reference points at a missing blob, no partial download is left.
fn assert_consistent(store: &Path) -> Store {
    let s = Store::open(store).unwrap();
    let c = s.check().unwrap();
    assert!(c.problems.is_empty(), "store problems: {:?}", c.problems);
    assert_eq!(c.partials, 0, "partial downloads left in the store");
    s
}

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
    assert!(out.contains("measurement=sha256:"), "{out}");
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
    let s = Store::open(&store).unwrap();
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

/// A hand-made OCI layout whose index points at `top` (written by `blobs`).
struct HandLayout {
    dir: PathBuf,
}

impl HandLayout {
    fn new(dir: PathBuf) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self { dir }
    }

    fn blob(&self, bytes: &[u8]) -> serde_json::Value {
        let d = Digest::of(bytes);
        fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        serde_json::json!({"digest": d.to_string(), "size": bytes.len()})
    }

    /// Writes `doc` and makes it the layout's only entry; returns its digest.
    fn top(&self, media_type: &str, doc: &serde_json::Value) -> String {
        let mut d = self.blob(&serde_json::to_vec(doc).unwrap());
        d["mediaType"] = media_type.into();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [d]});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        d["digest"].as_str().unwrap().to_string()
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

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
