//! The lab's peers as child processes: a certificate authority made with
//! `openssl`, Mosquitto (TLS, client certificates required), Debian's
//! `docker-registry` (TLS, htpasswd) and a static HTTPS server for the TUF
//! metadata. Each is killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LabError;

/// Runs `cmd` and returns its stdout, or an error naming `what`.
pub fn run(what: &str, cmd: &mut Command) -> Result<Vec<u8>, LabError> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Step {
            what: what.to_string(),
            detail: format!("cannot run {:?}: {e}", cmd.get_program()),
        })?;
    if !o.status.success() {
        return Err(LabError::Step {
            what: what.to_string(),
            detail: format!(
                "{} failed ({}): {}{}",
                cmd.get_program().to_string_lossy(),
                o.status,
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        });
    }
    Ok(o.stdout)
}

/// A certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The lab's certificate authority (files `ca.pem`, `ca.key` in `dir`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ca {
    pub dir: PathBuf,
}

impl Ca {
    pub fn create(dir: &Path) -> Result<Ca, LabError> {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
        run(
            "creating the lab CA",
            Command::new("openssl").current_dir(dir).args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=berth-hil lab CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]),
        )?;
        Ok(Ca {
            dir: dir.to_path_buf(),
        })
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> Result<Identity, LabError> {
        self.issue(
            name,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
    }

    /// A client certificate with CN = `name` (the MQTT user name).
    pub fn client(&self, name: &str) -> Result<Identity, LabError> {
        self.issue(
            name,
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
    }

    fn issue(&self, name: &str, ext: &str) -> Result<Identity, LabError> {
        let (key, csr, cert, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let what = format!("issuing the certificate of {name}");
        std::fs::write(self.dir.join(&extf), ext).map_err(|e| LabError::io(&self.dir, e))?;
        run(
            &what,
            Command::new("openssl").current_dir(&self.dir).args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ]),
        )?;
        run(
            &what,
            Command::new("openssl").current_dir(&self.dir).args([
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &extf,
                "-out",
                &cert,
            ]),
        )?;
        Ok(Identity {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        })
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, LabError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LabError::Step {
            what: "finding a free port".into(),
            detail: e.to_string(),
        })
}

/// A peer process, killed on drop.
#[derive(Debug)]
pub struct Peer {
    pub name: &'static str,
    pub port: u16,
    child: Option<Child>,
}

impl Peer {
    /// Spawns `cmd` (stderr to `log`) and waits until it listens on `port`.
    pub fn spawn(
        name: &'static str,
        port: u16,
        cmd: &mut Command,
        log: &Path,
    ) -> Result<Peer, LabError> {
        let stderr = std::fs::File::create(log).map_err(|e| LabError::io(log, e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| LabError::Step {
                what: format!("starting {name}"),
                detail: format!(
                    "cannot run {:?}: {e}; install it (see hil/README.md)",
                    cmd.get_program()
                ),
            })?;
        let mut p = Peer {
            name,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(p);
            }
            if let Some(Ok(Some(st))) = p.child.as_mut().map(|c| c.try_wait()) {
                return Err(LabError::Step {
                    what: format!("starting {name}"),
                    detail: format!(
                        "it exited ({st}): {}",
                        std::fs::read_to_string(log).unwrap_or_default().trim()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LabError::Step {
            what: format!("starting {name}"),
            detail: format!("it did not listen on 127.0.0.1:{port} within 15 s"),
        })
    }

    /// The peer's process id, if alive.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the peer process in KiB (from /proc), if alive.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        rss_kib(pid)
    }

    /// CPU time (user + system) of the peer in clock ticks, if alive.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        cpu_ticks(pid)
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size of `pid` in KiB (shared pages split among their
/// users, so a sum over processes is their memory).
pub fn pss_kib(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn proc_kib(file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Fields 14 on of /proc/`pid`/stat, in ticks: (utime + stime, cutime + cstime).
fn stat_ticks(pid: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map_while(|v| v.parse().ok())
        .collect();
    (f.len() == 4).then(|| (f[0] + f[1], f[2] + f[3]))
}

/// utime + stime of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&pid.to_string()).map(|t| t.0)
}

/// This process's own CPU and that of its reaped children (clock ticks).
pub fn own_ticks() -> (u64, u64) {
    stat_ticks("self").unwrap_or_default()
}

/// Clock ticks per second.
pub fn ticks_per_s() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Bytes `pid` has written so far (files and sockets: `wchar` of
/// /proc/`pid`/io).
pub fn written_bytes(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

/// The whole machine's CPU time so far (ticks, all cores): (busy, total),
/// from the first line of /proc/stat (busy: all but idle and iowait).
pub fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map_while(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Mosquitto on 127.0.0.1:`port`: TLS only, client certificates required,
/// the certificate's CN as the user name.
pub fn mosquitto(dir: &Path, ca: &Ca, port: u16) -> Result<Peer, LabError> {
    let server = ca.server("broker")?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nuser root\npersistence false\n\
             log_dest file {log}\nlog_type error\nlog_type warning\n\
             max_queued_messages 100000\nmax_inflight_messages 1000\nmax_connections -1\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
            log = dir.join("mosquitto.log").display(),
            ca = ca.cert().display(),
            cert = server.cert.display(),
            key = server.key.display(),
        ),
    )
    .map_err(|e| LabError::io(&conf, e))?;
    Peer::spawn(
        "mosquitto",
        port,
        Command::new("mosquitto").arg("-c").arg(&conf),
        &dir.join("mosquitto.stderr"),
    )
}

/// The registry's peer name.
pub const REGISTRY: &str = "docker-registry";
/// The metadata server's peer name.
pub const METADATA: &str = "metadata server";

/// The Distribution registry with TLS and one htpasswd account.
pub fn registry(
    dir: &Path,
    ca: &Ca,
    port: u16,
    user: &str,
    password: &str,
) -> Result<Peer, LabError> {
    let server = ca.server("registry")?;
    let htpasswd = run(
        "creating the registry's htpasswd (apache2-utils)",
        Command::new("htpasswd").args(["-Bbn", user, password]),
    )?;
    let hp = dir.join("htpasswd");
    std::fs::write(&hp, htpasswd).map_err(|e| LabError::io(&hp, e))?;
    let conf = dir.join("registry.yml");
    std::fs::write(
        &conf,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-hil-secret\n\
             \x20 tls:\n    certificate: {cert}\n    key: {key}\n\
             auth:\n  htpasswd:\n    realm: berth-hil\n    path: {hp}\n",
            storage = dir.join("storage").display(),
            cert = server.cert.display(),
            key = server.key.display(),
            hp = hp.display(),
        ),
    )
    .map_err(|e| LabError::io(&conf, e))?;
    Peer::spawn(
        REGISTRY,
        port,
        Command::new("docker-registry").arg("serve").arg(&conf),
        &dir.join("registry.log"),
    )
}

/// A static HTTPS server for `root` (the TUF repository).
const TLS_SERVER: &str = r#"
import functools, http.server, ssl, sys
port, d, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.SimpleHTTPRequestHandler):
    # Keep-alive (every response has a Content-Length): a device's refresh
    # reuses its connection instead of a TLS handshake per file. An idle
    # connection is closed after `timeout` seconds.
    protocol_version = "HTTP/1.1"
    timeout = 15
    def setup(self):
        # The handshake in this connection's thread, not the accept loop.
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    # A whole fleet refreshes at once after a notification.
    request_queue_size = 4096
    daemon_threads = True
h = functools.partial(H, directory=d)
s = S(("127.0.0.1", port), h)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True, do_handshake_on_connect=False)
s.serve_forever()
"#;

pub fn metadata_server(dir: &Path, ca: &Ca, port: u16, root: &Path) -> Result<Peer, LabError> {
    let server = ca.server("metadata")?;
    let script = dir.join("tls_server.py");
    std::fs::write(&script, TLS_SERVER).map_err(|e| LabError::io(&script, e))?;
    Peer::spawn(
        METADATA,
        port,
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(root)
            .arg(&server.cert)
            .arg(&server.key),
        &dir.join("metadata.log"),
    )
}
