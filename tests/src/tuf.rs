//! python-tuf repositories for the trust tests: `pyrepo.py` builds and edits them with
//! python-tuf's Metadata API; a loopback `python3 -m http.server` serves them; a drip
//! server serves bytes slowly; `Client` drives `berth tuf`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{bin, run, text};

/// The repository builder script.
pub const PYREPO: &str = include_str!("tuf/pyrepo.py");

/// A repository built by python-tuf in a temporary directory (`repo/metadata`,
/// `repo/targets`, `repo/keys`).
#[derive(Debug)]
pub struct PyRepo {
    pub tmp: tempfile::TempDir,
}

impl PyRepo {
    /// `pyrepo.py init` with extra arguments (e.g. `--delegations 3`).
    pub fn init(args: &[&str]) -> PyRepo {
        let tmp = tempfile::Builder::new()
            .prefix("berth-tuf-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(tmp.path().join("pyrepo.py"), PYREPO).expect("write pyrepo.py");
        let r = PyRepo { tmp };
        let mut a = vec!["init"];
        a.extend_from_slice(args);
        r.run(&a);
        r
    }

    /// Runs a `pyrepo.py` command on this repository and returns its output.
    pub fn try_run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("python3");
        cmd.arg(self.tmp.path().join("pyrepo.py"))
            .arg(args[0])
            .arg(self.dir())
            .args(&args[1..]);
        run(&mut cmd)
    }

    /// Runs a `pyrepo.py` command, failing the test if it fails.
    pub fn run(&self, args: &[&str]) {
        let o = self.try_run(args);
        assert!(o.status.success(), "pyrepo.py {args:?}: {}", text(&o));
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }
    pub fn metadata(&self) -> PathBuf {
        self.dir().join("metadata")
    }
    pub fn targets(&self) -> PathBuf {
        self.dir().join("targets")
    }
    /// The path of a served target file (hash-prefixed name).
    pub fn target_file(&self, target: &str) -> PathBuf {
        let (dir, base) = target.rsplit_once('/').unwrap_or(("", target));
        let d = self.targets().join(dir);
        for e in std::fs::read_dir(&d).expect("targets dir").flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.ends_with(&format!(".{base}")) {
                return e.path();
            }
        }
        panic!("no served file for target {target} in {}", d.display());
    }
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_for(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on port {port} did not start");
}

/// `python3 -m http.server` on loopback (or the same handler behind TLS), killed on drop.
#[derive(Debug)]
pub struct HttpServer {
    child: Child,
    pub port: u16,
    scheme: &'static str,
}

/// A static-file HTTPS server: `tls_server.py PORT DIR CERT KEY`.
const TLS_SERVER: &str = r#"
import functools, http.server, ssl, sys
port, d, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=d)
s = http.server.ThreadingHTTPServer(("127.0.0.1", port), h)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

/// A test CA and a certificate it issued for `localhost` and 127.0.0.1, in
/// `dir`: returns (ca.pem, server.pem, server.key).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let pki = crate::pki::Pki::new(dir, "tuf");
    let server = pki.server("localhost");
    (pki.ca(), server.cert, server.key)
}

impl HttpServer {
    /// Serves `dir` over HTTPS with `cert` and `key`.
    pub fn serve_tls(dir: &Path, cert: &Path, key: &Path) -> HttpServer {
        let port = free_port();
        let script = dir.join(".tls_server.py");
        std::fs::write(&script, TLS_SERVER).expect("write tls_server.py");
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(dir)
            .arg(cert)
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the python TLS server");
        wait_for(port);
        HttpServer {
            child,
            port,
            scheme: "https",
        }
    }

    pub fn serve(dir: &Path) -> HttpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        wait_for(port);
        HttpServer {
            child,
            port,
            scheme: "http",
        }
    }

    /// The URL of `path` on this server (`https://localhost:…` for TLS, matching the
    /// certificate).
    pub fn url(&self, path: &str) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}/{path}", self.port),
            _ => format!("http://127.0.0.1:{}/{path}", self.port),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that answers every request with `body`, one byte per `gap`. The thread
/// ends when the client hangs up.
pub fn drip_server(body: Vec<u8>, gap: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if s.write_all(head.as_bytes()).is_err() {
                continue;
            }
            for b in &body {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(gap);
            }
        }
    });
    port
}

/// A `berth tuf` client with its own metadata and target directories.
#[derive(Debug)]
pub struct Client {
    pub tmp: tempfile::TempDir,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            tmp: tempfile::Builder::new()
                .prefix("berth-tuf-client-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.tmp.path().join("metadata")
    }
    pub fn target_dir(&self) -> PathBuf {
        self.tmp.path().join("targets")
    }

    /// `berth tuf --metadata-dir … init ROOT`.
    pub fn init(&self, root: &Path) -> Output {
        run(Command::new(bin("berth"))
            .arg("tuf")
            .arg("--metadata-dir")
            .arg(self.metadata_dir())
            .arg("init")
            .arg(root))
    }

    /// `berth tuf … refresh` against `server`.
    pub fn refresh(&self, server: &HttpServer) -> Output {
        run(Command::new(bin("berth"))
            .arg("tuf")
            .arg("--metadata-dir")
            .arg(self.metadata_dir())
            .args(["--metadata-url", &server.url("metadata")])
            .arg("refresh"))
    }

    /// `berth tuf … download` of `targets` in order.
    pub fn download(&self, server: &HttpServer, targets: &[&str]) -> Output {
        let mut cmd = Command::new(bin("berth"));
        cmd.arg("tuf")
            .arg("--metadata-dir")
            .arg(self.metadata_dir())
            .args(["--metadata-url", &server.url("metadata")]);
        for t in targets {
            cmd.args(["--target-name", t]);
        }
        cmd.args(["--target-base-url", &server.url("targets")])
            .arg("--target-dir")
            .arg(self.target_dir())
            .arg("download");
        run(&mut cmd)
    }

    /// The trusted file of `role` in the metadata directory, as JSON.
    pub fn trusted(&self, role: &str) -> serde_json::Value {
        let p = self.metadata_dir().join(format!("{role}.json"));
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .expect("trusted metadata is JSON")
    }

    /// The trusted version of `role`.
    pub fn version(&self, role: &str) -> u64 {
        self.trusted(role)["signed"]["version"]
            .as_u64()
            .expect("version")
    }
}

/// Asserts a command succeeded.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "expected success: {}", text(o));
}

/// Asserts a command failed with exit code 1 and its output mentions each of `words`.
pub fn refused(o: &Output, words: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {t}");
    for w in words {
        assert!(t.contains(w), "expected {w:?} in: {t}");
    }
}

/// python-tuf's ngclient: `ngclient.py METADATA_DIR ROOT METADATA_URL TARGETS_URL
/// TARGET_DIR TARGET…` refreshes, downloads each target and prints the trusted
/// versions as JSON.
pub const NGCLIENT: &str = r#"
import json, os, shutil, sys
from tuf.ngclient import Updater
mdir, root, murl, turl, tdir = sys.argv[1:6]
os.makedirs(mdir, exist_ok=True)
os.makedirs(tdir, exist_ok=True)
if not os.path.exists(os.path.join(mdir, "root.json")):
    shutil.copy(root, os.path.join(mdir, "root.json"))
u = Updater(metadata_dir=mdir, metadata_base_url=murl, target_base_url=turl, target_dir=tdir,
            bootstrap=None)
u.refresh()
for t in sys.argv[6:]:
    info = u.get_targetinfo(t)
    if info is None:
        sys.exit(f"target {t} not found")
    u.download_target(info)
ts = u._trusted_set
print(json.dumps({"root": ts.root.version, "timestamp": ts.timestamp.version,
                  "snapshot": ts.snapshot.version, "targets": ts.targets.version}))
"#;

/// Runs python-tuf's ngclient (see [`NGCLIENT`]) and returns its output.
pub fn ngclient(work: &Path, root: &Path, server: &HttpServer, targets: &[&str]) -> Output {
    let script = work.join("ngclient.py");
    std::fs::write(&script, NGCLIENT).expect("write ngclient.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(work.join("ng-metadata"))
        .arg(root)
        .arg(server.url("metadata/"))
        .arg(server.url("targets/"))
        .arg(work.join("ng-targets"))
        .args(targets);
    run(&mut cmd)
}
