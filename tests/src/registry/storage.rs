//! The storage host a redirecting [`super::Registry`] sends blob downloads to:
//! a small Python HTTPS file server that logs and can refuse requests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::pki::{free_port, wait_for_port, Pki};

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
    pub(super) fn start(root: &Path, dir: &Path, pki: &Pki) -> Storage {
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
