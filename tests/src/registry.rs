//! A real Distribution registry (Debian's `docker-registry`) on loopback with
//! TLS and htpasswd (bcrypt) auth — or bearer tokens from a real token
//! service ([`crate::token`]), or blob downloads redirected to a storage host
//! — storage in a directory that survives a kill and restart on the same
//! port; a TCP proxy in front of it that counts,
//! throttles and cuts the byte stream; and a small tmpfs for disk-full tests.

mod proxy;
mod storage;

pub use proxy::Proxy;
pub use storage::Storage;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::pki::{free_port, wait_for_port, Pki};
use crate::token::{TokenService, ISSUER, SERVICE};
use crate::{run, text};

/// The user the registry accepts.
pub const USER: &str = "berth";
/// Its password.
pub const PASSWORD: &str = "s3cret-pull-push";

/// A running registry; killed on drop.
#[derive(Debug)]
pub struct Registry {
    pub port: u16,
    pub pki: Pki,
    pub dir: PathBuf,
    /// The token service, for a registry started with [`Registry::start_token`].
    pub token: Option<TokenService>,
    /// Where blobs are redirected, for [`Registry::start_redirecting`].
    pub storage: Option<Storage>,
    child: Option<Child>,
}

/// The `auth:` section for htpasswd (bcrypt) with [`USER`] and [`PASSWORD`].
fn htpasswd(dir: &Path, _: &Pki) -> (String, Option<TokenService>) {
    let o = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
    assert!(
        o.status.success(),
        "htpasswd (apache2-utils) failed: {}",
        text(&o)
    );
    std::fs::write(dir.join("htpasswd"), &o.stdout).expect("htpasswd file");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
        dir.join("htpasswd").display()
    );
    (auth, None)
}

impl Registry {
    /// Starts a registry with a fresh PKI, htpasswd file and storage in `dir`.
    pub fn start(dir: &Path) -> Registry {
        Self::start_with(dir, false, htpasswd)
    }

    /// Like [`Registry::start`], but blob downloads are redirected (HTTP 307,
    /// Distribution's `redirect` storage middleware) to a storage server on
    /// another port, as registries backed by object storage or a CDN do.
    pub fn start_redirecting(dir: &Path) -> Registry {
        Self::start_with(dir, true, htpasswd)
    }

    /// Starts a registry that answers with a `Bearer` challenge and accepts
    /// only tokens signed by its own token service (started too, on another
    /// port, with a certificate of the same CA).
    pub fn start_token(dir: &Path) -> Registry {
        Self::start_with(dir, false, |dir, pki| {
            let t = TokenService::start(&dir.join("token"), pki);
            let auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {bundle}\n",
                realm = t.realm(),
                bundle = t.signer_ca().display(),
            );
            (auth, Some(t))
        })
    }

    fn start_with(
        dir: &Path,
        redirect: bool,
        auth: impl FnOnce(&Path, &Pki) -> (String, Option<TokenService>),
    ) -> Registry {
        std::fs::create_dir_all(dir).expect("registry dir");
        let pki = Pki::new(&dir.join("pki"), "registry");
        let server = pki.server("registry");
        // skopeo's --cert-dir wants the CA as *.crt.
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        std::fs::copy(pki.ca(), certs.join("ca.crt")).expect("ca.crt");
        let (mut auth, token) = auth(dir, &pki);
        let storage = redirect
            .then(|| Storage::start(&dir.join("storage"), &dir.join("storage-server"), &pki));
        if let Some(st) = &storage {
            auth.push_str(&format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        \
                 baseurl: https://127.0.0.1:{}\n",
                st.port
            ));
        }
        let port = free_port();
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n\
                 \x20 tls:\n    certificate: {cert}\n    key: {key}\n\
                 {auth}\
                 validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n",
                storage = dir.join("storage").display(),
                cert = server.cert.display(),
                key = server.key.display(),
            ),
        )
        .expect("config.yml");
        let mut r = Registry {
            port,
            pki,
            dir: dir.to_path_buf(),
            token,
            storage,
            child: None,
        };
        r.restart();
        r
    }

    /// (Re)starts the registry process on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("registry.log"))
            .map(Stdio::from)
            .unwrap_or(Stdio::null());
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry is installed (tests/run.sh installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "docker-registry");
    }

    /// Kills the registry (SIGKILL: every connection drops mid-transfer).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) that issued the registry's certificate.
    pub fn ca(&self) -> PathBuf {
        self.pki.ca()
    }

    /// A directory holding the CA as `ca.crt`, for skopeo's `--*-cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// `USER:PASSWORD`, for skopeo's `--*-creds`.
    pub fn creds(&self) -> String {
        format!("{USER}:{PASSWORD}")
    }

    /// The file in the registry's storage holding blob `sha256:<hex>`.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// `skopeo copy` from the OCI layout image `layout:tag` to
    /// `docker://HOST/repo:tag`; returns the manifest digest the registry holds.
    pub fn skopeo_push(&self, layout: &Path, tag: &str, repo: &str) -> String {
        let digest_file = self.dir.join(format!("digest-{}", repo.replace('/', "-")));
        let o = run(Command::new("skopeo")
            .arg("copy")
            .arg("--quiet")
            .arg("--dest-cert-dir")
            .arg(self.cert_dir())
            .arg("--dest-creds")
            .arg(self.creds())
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host())));
        assert!(
            o.status.success(),
            "skopeo copy to the registry failed: {}\nregistry log:\n{}",
            text(&o),
            self.log()
        );
        std::fs::read_to_string(digest_file)
            .expect("skopeo --digestfile")
            .trim()
            .to_string()
    }

    /// `skopeo ARGS…` with the registry's CA and credentials for the source.
    pub fn skopeo_src(&self, sub: &str, args: &[&str]) -> Output {
        run(Command::new("skopeo")
            .arg(sub)
            .arg("--src-cert-dir")
            .arg(self.cert_dir())
            .arg("--src-creds")
            .arg(self.creds())
            .args(args))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tmpfs of a fixed size mounted on a fresh directory; unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (needs root).
    pub fn mount(bytes: u64) -> Tmpfs {
        let dir = crate::open_tempdir();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let o = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("berth-test")
            .arg(&path));
        assert!(o.status.success(), "mount tmpfs: {}", text(&o));
        Tmpfs { path, _dir: dir }
    }

    /// Fills the filesystem until a write fails (ENOSPC), leaving `keep`
    /// bytes of the filler unwritten; returns the filler's path.
    pub fn fill(&self, keep: u64) -> PathBuf {
        let p = self.path.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let chunk = vec![0xa5u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = f.set_len(written.saturating_sub(keep));
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.path));
    }
}
