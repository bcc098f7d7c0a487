//! Images: pulls from and pushes to a real Distribution registry
//! (`docker-registry`) with TLS and htpasswd or bearer-token auth, against
//! images built by umoci and pushed by skopeo (and the reverse), through
//! faults: a registry killed mid-blob, a corrupted blob, a full disk,
//! refused documents, a bad layer while the unpack overlaps the download.

mod auth;
mod faults;
mod overlap;
mod transfer;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use berth_image::registry::Digest;
use berth_image::store::Store;
use berth_tests::registry::{Registry, PASSWORD, USER};
use berth_tests::{bin, open_tempdir, run, text};

/// A test's directory and its registry.
pub(super) struct Env {
    dir: tempfile::TempDir,
    reg: Registry,
}

pub(super) fn env() -> Env {
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
        self.pull_as((USER, PASSWORD), host, repo, digest, store)
    }

    /// `berth image pull` as the account `(user, password)`.
    fn pull_as(
        &self,
        (user, password): (&str, &str),
        host: &str,
        repo: &str,
        digest: &str,
        store: &Path,
    ) -> Command {
        let mut c = Command::new(bin("berth"));
        c.args(["image", "pull", "--deadline", "120", "--ca"])
            .arg(self.reg.ca())
            .args(["--user", user, "--store"])
            .arg(store)
            .arg(format!("{host}/{repo}@{digest}"))
            .env("BERTH_REGISTRY_PASSWORD", password)
            .stdin(Stdio::null());
        c
    }

    /// `berth image push` of the layout to `host/target`.
    fn push(&self, host: &str, layout: &Path, target: &str) -> Command {
        self.push_as((USER, PASSWORD), host, layout, target)
    }

    /// `berth image push` as the account `(user, password)`.
    fn push_as(
        &self,
        (user, password): (&str, &str),
        host: &str,
        layout: &Path,
        target: &str,
    ) -> Command {
        let mut c = Command::new(bin("berth"));
        c.args(["image", "push", "--deadline", "120", "--ca"])
            .arg(self.reg.ca())
            .args(["--user", user])
            .arg(layout)
            .arg(format!("{host}/{target}"))
            .env("BERTH_REGISTRY_PASSWORD", password)
            .stdin(Stdio::null());
        c
    }
}

/// The number after `key=` in a report (`a=1 b=2` lines).
pub(super) fn kv(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

pub(super) fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    text(o)
}

pub(super) fn umoci(args: &[&str]) {
    let o = run(Command::new("umoci").args(args));
    assert!(o.status.success(), "umoci {args:?}: {}", text(&o));
}

pub(super) fn sh(dir: &Path, c: &str) {
    let o = run(Command::new("sh").arg("-c").arg(c).current_dir(dir));
    assert!(o.status.success(), "{c}: {}", text(&o));
}

/// Deterministic incompressible bytes (xorshift64*).
pub(super) fn noise(seed: u64, len: usize) -> Vec<u8> {
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
pub(super) fn umoci_image(layout: &Path, layers: &[PathBuf]) -> String {
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
pub(super) fn noise_layer(dir: &Path, name: &str, seed: u64, mb: usize) -> PathBuf {
    let src = dir.join(format!("src-{name}"));
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data").join(name), noise(seed, mb << 20)).unwrap();
    src
}

/// The manifest digest the layout's index gives for tag `t`.
pub(super) fn layout_digest(layout: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    v["manifests"][0]["digest"].as_str().unwrap().to_string()
}

/// Manifest length plus the declared sizes of its config and layers: what a
/// pull that fetches every byte exactly once receives.
/// Opens the store, waiting while the database's lock is still held by a
/// handle this process just dropped (sled's flusher thread releases it a
/// moment later; slow under qemu).
pub(super) fn open_store(store: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(store) {
            Ok(s) => return s,
            Err(berth_image::store::StoreError::Db { source, .. })
                if source.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

pub(super) fn image_bytes(store: &Path, manifest: &str) -> (u64, Vec<String>) {
    let s = open_store(store);
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
pub(super) fn assert_consistent(store: &Path) -> Store {
    let s = open_store(store);
    let c = s.check().unwrap();
    assert!(c.problems.is_empty(), "store problems: {:?}", c.problems);
    assert_eq!(c.partials, 0, "partial downloads left in the store");
    s
}

/// A hand-made OCI layout whose index points at `top` (written by `blobs`).
pub(super) struct HandLayout {
    pub(super) dir: PathBuf,
}

impl HandLayout {
    pub(super) fn new(dir: PathBuf) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self { dir }
    }

    pub(super) fn blob(&self, bytes: &[u8]) -> serde_json::Value {
        let d = Digest::of(bytes);
        fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        serde_json::json!({"digest": d.to_string(), "size": bytes.len()})
    }

    /// Writes `doc` and makes it the layout's only entry; returns its digest.
    pub(super) fn top(&self, media_type: &str, doc: &serde_json::Value) -> String {
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

pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
