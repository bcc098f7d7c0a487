//! A real Distribution registry (Debian's `docker-registry`) on loopback with
//! TLS and htpasswd (bcrypt) auth — or bearer tokens from a real token
//! service ([`crate::token`]), or blob downloads redirected to a storage host
//! — storage in a directory that survives a kill and restart on the same
//! port; a TCP proxy in front of it that counts,
//! throttles and cuts the byte stream; and a small tmpfs for disk-full tests.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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

/// The storage host a redirecting registry sends blob downloads to: serves
/// the registry's storage directory over HTTPS (a certificate of the
/// registry's CA), logs every request (path, whether it carried an
/// Authorization header, status), and can refuse the next few requests.
#[derive(Debug)]
pub struct Storage {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// `storage_server.py PORT ROOT CERT KEY STATE_DIR`: files under ROOT;
/// `STATE_DIR/refuse` holding "N STATUS" answers the next N requests STATUS;
/// one JSON line per request in `STATE_DIR/requests.jsonl`.
const STORAGE_SERVER: &str = r#"
import http.server, json, os, ssl, sys, threading
port, root, cert, key, state = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, head):
        status, body = 200, None
        with lock:
            refuse = os.path.join(state, "refuse")
            if os.path.exists(refuse):
                n, code = open(refuse).read().split()
                if int(n) > 0:
                    open(refuse, "w").write("%d %s" % (int(n) - 1, code))
                    status = int(code)
        path = os.path.normpath(os.path.join(root, self.path.split("?")[0].lstrip("/")))
        if status == 200 and (not path.startswith(root + "/") or not os.path.isfile(path)):
            status = 404
        with lock, open(os.path.join(state, "requests.jsonl"), "a") as f:
            f.write(json.dumps({"path": self.path, "auth": "Authorization" in self.headers, "status": status}) + "\n")
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="storage"')
        if status != 200:
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            with open(path, "rb") as f:
                while True:
                    b = f.read(1 << 16)
                    if not b:
                        break
                    self.wfile.write(b)
    def do_GET(self): self.answer(False)
    def do_HEAD(self): self.answer(True)
s = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
s.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

impl Storage {
    fn start(root: &Path, dir: &Path, pki: &Pki) -> Storage {
        std::fs::create_dir_all(root).expect("storage root");
        std::fs::create_dir_all(dir).expect("storage server dir");
        let tls = pki.server("storage");
        let script = dir.join("storage_server.py");
        std::fs::write(&script, STORAGE_SERVER).expect("storage_server.py");
        let port = free_port();
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(root.canonicalize().expect("storage root"))
            .arg(&tls.cert)
            .arg(&tls.key)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("storage.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("python3 is installed");
        wait_for_port(port, "the storage server");
        Storage {
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
        }
    }

    /// Answers the next `n` requests with `status` (no body).
    pub fn refuse(&self, n: u32, status: u16) {
        std::fs::write(self.dir.join("refuse"), format!("{n} {status}")).expect("refuse");
    }

    /// Every request so far: `{path, auth, status}`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the proxy is told to do with the bytes it forwards.
#[derive(Debug, Default)]
struct ProxyState {
    /// Bytes forwarded client → server and server → client.
    up: u64,
    down: u64,
    /// Cut the connection that carries server → client byte number `n`
    /// (counted over all connections since the rule was set).
    cut_down_at: Option<u64>,
    /// Same for client → server bytes.
    cut_up_at: Option<u64>,
    /// After a cut, hold new connections until [`Proxy::resume`].
    pause_after_cut: bool,
    paused: bool,
    /// Cuts made so far.
    cuts: u32,
    /// Server → client rate limit, bytes/s.
    rate: Option<u64>,
    streams: Vec<TcpStream>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<ProxyState>,
    changed: Condvar,
    closed: AtomicBool,
}

/// A TCP proxy on a free loopback port forwarding to `127.0.0.1:upstream`
/// (TLS passes through untouched). It counts bytes in each direction, can
/// throttle the download direction, and can cut a connection after an exact
/// number of bytes — a drop in the middle of a blob, at a known offset.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if sh.closed.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let sh = sh.clone();
                thread::spawn(move || serve(client, upstream, sh));
            }
        });
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts the connection carrying the `n`-th server → client byte from now;
    /// with `pause`, holds every new connection afterwards until `resume`.
    pub fn cut_down_after(&self, n: u64, pause: bool) {
        let mut s = self.shared.state.lock().expect("proxy state");
        s.cut_down_at = Some(s.down + n);
        s.pause_after_cut = pause;
    }

    /// Cuts the connection carrying the `n`-th client → server byte from now.
    pub fn cut_up_after(&self, n: u64) {
        let mut s = self.shared.state.lock().expect("proxy state");
        s.cut_up_at = Some(s.up + n);
        s.pause_after_cut = false;
    }

    /// Limits the server → client rate (None: full speed).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared.state.lock().expect("proxy state").rate = bytes_per_sec;
    }

    /// Lets held connections through.
    pub fn resume(&self) {
        self.shared.state.lock().expect("proxy state").paused = false;
        self.shared.changed.notify_all();
    }

    /// (client → server, server → client) bytes forwarded so far.
    pub fn bytes(&self) -> (u64, u64) {
        let s = self.shared.state.lock().expect("proxy state");
        (s.up, s.down)
    }

    /// Cuts made so far.
    pub fn cuts(&self) -> u32 {
        self.shared.state.lock().expect("proxy state").cuts
    }

    /// Waits until `cond` holds over (cuts, down bytes), or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(u32, u64) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.state.lock().expect("proxy state");
        while !cond(s.cuts, s.down) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(50)))
                .expect("proxy state")
                .0;
        }
        true
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        {
            let mut s = self.shared.state.lock().expect("proxy state");
            s.paused = false;
            for st in s.streams.drain(..) {
                let _ = st.shutdown(Shutdown::Both);
            }
        }
        self.shared.changed.notify_all();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(client: TcpStream, upstream: u16, sh: Arc<Shared>) {
    {
        let mut s = sh.state.lock().expect("proxy state");
        while s.paused && !sh.closed.load(Ordering::SeqCst) {
            s = sh.changed.wait(s).expect("proxy state");
        }
    }
    if sh.closed.load(Ordering::SeqCst) {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut s = sh.state.lock().expect("proxy state");
        s.streams.retain(|st| st.peer_addr().is_ok());
        for st in [&client, &server] {
            if let Ok(c) = st.try_clone() {
                s.streams.push(c);
            }
        }
    }
    let sh2 = sh.clone();
    let up = thread::spawn(move || pump(c2, s2, &sh2, false));
    pump(server, client, &sh, true);
    let _ = up.join();
}

/// Copies `from` → `to`, counting, throttling and cutting as told.
fn pump(mut from: TcpStream, mut to: TcpStream, sh: &Shared, down: bool) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (send, cut, delay) = {
            let mut s = sh.state.lock().expect("proxy state");
            let (count, at) = if down {
                (s.down, s.cut_down_at)
            } else {
                (s.up, s.cut_up_at)
            };
            let send = match at {
                Some(at) if count + n as u64 >= at => (at.saturating_sub(count)) as usize,
                _ => n,
            };
            let cut = send < n || at.is_some_and(|at| count + n as u64 == at);
            if down {
                s.down += send as u64;
            } else {
                s.up += send as u64;
            }
            if cut {
                if down {
                    s.cut_down_at = None;
                } else {
                    s.cut_up_at = None;
                }
                s.cuts += 1;
                s.paused = s.pause_after_cut;
            }
            let delay = match (down, s.rate) {
                (true, Some(r)) if r > 0 => Duration::from_secs_f64(send as f64 / r as f64),
                _ => Duration::ZERO,
            };
            (send, cut, delay)
        };
        sh.changed.notify_all();
        if to.write_all(&buf[..send]).is_err() {
            break;
        }
        if cut {
            break;
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
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
