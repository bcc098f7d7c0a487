//! Transports: fetch a named file as bytes — or streamed into a writer, never
//! held whole in memory — with a hard size cap, an overall deadline and a
//! minimum average transfer rate (endless-data and slow-retrieval defences).
//! Names come from signed metadata or the workflow and are relative (`3.root.json`,
//! `releases/ab12….fleet.json`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of one fetch.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    /// Fail as soon as more than this many bytes arrive.
    pub max_len: u64,
    /// The whole transfer must finish within this time.
    pub deadline: Duration,
    /// After `grace`, the average rate must stay at or above this (bytes/second).
    pub min_rate: u64,
    pub grace: Duration,
}

impl FetchLimits {
    pub fn with_max(self, max_len: u64) -> FetchLimits {
        FetchLimits { max_len, ..self }
    }
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_len: 1 << 20,
            deadline: Duration::from_secs(60),
            min_rate: 1024,
            grace: Duration::from_secs(3),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{name}: not found at {location}")]
    NotFound { name: String, location: String },
    #[error("{name}: larger than the {cap}-byte cap (endless data refused)")]
    TooLarge { name: String, cap: u64 },
    #[error("{name}: not complete within the {secs}-second deadline (slow retrieval refused)")]
    Deadline { name: String, secs: u64 },
    #[error("{name}: {rate} bytes/s is below the minimum {min} bytes/s (slow retrieval refused)")]
    TooSlow { name: String, rate: u64, min: u64 },
    #[error("{name}: invalid name (must be relative, without `..`)")]
    BadName { name: String },
    #[error("{name}: {location}: {reason}")]
    Failed {
        name: String,
        location: String,
        reason: String,
    },
    #[error("transport setup: {0}")]
    Setup(String),
    #[error("{name}: cannot store what arrived: {reason}")]
    Store { name: String, reason: String },
}

impl TransportError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, TransportError::NotFound { .. })
    }
}

/// Fetches named files.
pub trait Transport {
    fn fetch(&self, name: &str, limits: &FetchLimits) -> Result<Vec<u8>, TransportError>;

    /// Streams the file into `sink` as it arrives, within the same limits;
    /// returns its length. (This default holds it in memory first: a
    /// transport that can stream overrides it.)
    fn fetch_into(
        &self,
        name: &str,
        limits: &FetchLimits,
        sink: &mut dyn Write,
    ) -> Result<u64, TransportError> {
        let bytes = self.fetch(name, limits)?;
        sink.write_all(&bytes).map_err(|e| TransportError::Store {
            name: name.into(),
            reason: e.to_string(),
        })?;
        Ok(bytes.len() as u64)
    }
}

fn check_name(name: &str) -> Result<(), TransportError> {
    if name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name.split('/').any(|c| c == ".." || c.is_empty())
    {
        return Err(TransportError::BadName { name: name.into() });
    }
    Ok(())
}

/// Reads `r` to the end within `limits`.
pub fn read_limited(
    name: &str,
    r: impl Read,
    limits: &FetchLimits,
) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    copy_limited(name, r, limits, &mut out)?;
    Ok(out)
}

/// Copies `r` to the end into `sink` within `limits`, a buffer at a time;
/// returns the length.
pub fn copy_limited(
    name: &str,
    mut r: impl Read,
    limits: &FetchLimits,
    sink: &mut dyn Write,
) -> Result<u64, TransportError> {
    let start = Instant::now();
    let mut total: u64 = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut
                || e.kind() == std::io::ErrorKind::WouldBlock
            {
                TransportError::Deadline {
                    name: name.into(),
                    secs: limits.deadline.as_secs(),
                }
            } else {
                TransportError::Failed {
                    name: name.into(),
                    location: "read".into(),
                    reason: e.to_string(),
                }
            }
        })?;
        if n == 0 {
            return Ok(total);
        }
        if total + n as u64 > limits.max_len {
            return Err(TransportError::TooLarge {
                name: name.into(),
                cap: limits.max_len,
            });
        }
        sink.write_all(&buf[..n])
            .map_err(|e| TransportError::Store {
                name: name.into(),
                reason: e.to_string(),
            })?;
        total += n as u64;
        let elapsed = start.elapsed();
        if elapsed > limits.deadline {
            return Err(TransportError::Deadline {
                name: name.into(),
                secs: limits.deadline.as_secs(),
            });
        }
        if elapsed > limits.grace {
            let rate = (total as f64 / elapsed.as_secs_f64()) as u64;
            if rate < limits.min_rate {
                return Err(TransportError::TooSlow {
                    name: name.into(),
                    rate,
                    min: limits.min_rate,
                });
            }
        }
    }
}

/// `fetch` of a transport that streams: its `fetch_into` a buffer.
fn collected(
    t: &dyn Transport,
    name: &str,
    limits: &FetchLimits,
) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    t.fetch_into(name, limits, &mut out)?;
    Ok(out)
}

/// Files under a local directory (offline bundles, mounted media).
#[derive(Debug, Clone)]
pub struct DirTransport {
    base: PathBuf,
}

impl DirTransport {
    pub fn new(base: &Path) -> DirTransport {
        DirTransport {
            base: base.to_path_buf(),
        }
    }
}

impl Transport for DirTransport {
    fn fetch(&self, name: &str, limits: &FetchLimits) -> Result<Vec<u8>, TransportError> {
        collected(self, name, limits)
    }

    fn fetch_into(
        &self,
        name: &str,
        limits: &FetchLimits,
        sink: &mut dyn Write,
    ) -> Result<u64, TransportError> {
        check_name(name)?;
        let path = self.base.join(name);
        let f = std::fs::File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TransportError::NotFound {
                    name: name.into(),
                    location: path.display().to_string(),
                }
            } else {
                TransportError::Failed {
                    name: name.into(),
                    location: path.display().to_string(),
                    reason: e.to_string(),
                }
            }
        })?;
        copy_limited(name, f, limits, sink)
    }
}

/// HTTPS (rustls, optionally a custom CA instead of the built-in roots), or plain HTTP
/// when explicitly allowed.
#[derive(Debug)]
pub struct HttpTransport {
    base: String,
    agent: ureq::Agent,
}

impl HttpTransport {
    /// `base` is a URL prefix; `ca_pem` replaces the trusted roots; `allow_http`
    /// permits a plain `http://` base.
    pub fn new(
        base: &str,
        ca_pem: Option<&[u8]>,
        allow_http: bool,
    ) -> Result<HttpTransport, TransportError> {
        let base = check_base(base, allow_http)?;
        let mut builder = ureq::AgentBuilder::new().redirects(0);
        if let Some(pem) = ca_pem {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| TransportError::Setup(format!("CA file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TransportError::Setup(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(TransportError::Setup(
                    "CA file holds no PEM certificate".into(),
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| TransportError::Setup(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder = builder.tls_config(Arc::new(config));
        }
        Ok(HttpTransport {
            base,
            agent: builder.build(),
        })
    }

    /// A transport for another location (`base`, checked as by
    /// [`HttpTransport::new`]) sharing this one's connections, TLS settings
    /// and sessions: a refresh that fetches metadata and then a target from
    /// one server does it over one connection, one TLS handshake.
    pub fn beside(&self, base: &str, allow_http: bool) -> Result<HttpTransport, TransportError> {
        Ok(HttpTransport {
            base: check_base(base, allow_http)?,
            agent: self.agent.clone(),
        })
    }
}

/// `base` without trailing slashes, if it is https (or http when allowed).
fn check_base(base: &str, allow_http: bool) -> Result<String, TransportError> {
    let base = base.trim_end_matches('/').to_string();
    if base.starts_with("http://") {
        if !allow_http {
            return Err(TransportError::Setup(format!(
                "{base}: plain http is refused; use https, or allow http explicitly"
            )));
        }
    } else if !base.starts_with("https://") {
        return Err(TransportError::Setup(format!("{base}: not an http(s) URL")));
    }
    Ok(base)
}

impl Transport for HttpTransport {
    fn fetch(&self, name: &str, limits: &FetchLimits) -> Result<Vec<u8>, TransportError> {
        collected(self, name, limits)
    }

    fn fetch_into(
        &self,
        name: &str,
        limits: &FetchLimits,
        sink: &mut dyn Write,
    ) -> Result<u64, TransportError> {
        check_name(name)?;
        let url = format!("{}/{}", self.base, crate::names::quote_path(name));
        let failed = |reason: String| TransportError::Failed {
            name: name.into(),
            location: url.clone(),
            reason,
        };
        let resp = self
            .agent
            .get(&url)
            .timeout(limits.deadline)
            .call()
            .map_err(|e| match e {
                ureq::Error::Status(404, _) | ureq::Error::Status(403, _) => {
                    TransportError::NotFound {
                        name: name.into(),
                        location: url.clone(),
                    }
                }
                ureq::Error::Status(code, _) => failed(format!("HTTP status {code}")),
                ureq::Error::Transport(t) => {
                    if t.to_string().contains("timed out") {
                        TransportError::Deadline {
                            name: name.into(),
                            secs: limits.deadline.as_secs(),
                        }
                    } else {
                        failed(t.to_string())
                    }
                }
            })?;
        if let Some(len) = resp
            .header("content-length")
            .and_then(|l| l.parse::<u64>().ok())
        {
            if len > limits.max_len {
                return Err(TransportError::TooLarge {
                    name: name.into(),
                    cap: limits.max_len,
                });
            }
        }
        copy_limited(name, resp.into_reader(), limits, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.json"), vec![b'x'; 100]).unwrap();
        let t = DirTransport::new(d.path());
        let lim = FetchLimits::default();
        assert_eq!(t.fetch("a.json", &lim).unwrap().len(), 100);
        assert!(matches!(
            t.fetch("a.json", &lim.with_max(99)),
            Err(TransportError::TooLarge { cap: 99, .. })
        ));
        assert!(t.fetch("b.json", &lim).unwrap_err().is_not_found());
        assert!(matches!(
            t.fetch("../a.json", &lim),
            Err(TransportError::BadName { .. })
        ));
    }

    /// A reader that yields one byte per call and advances a fake clock would need
    /// injection; instead check the rate rule with a zero grace and an impossible rate.
    #[test]
    fn minimum_rate_is_enforced_after_grace() {
        let lim = FetchLimits {
            max_len: 1 << 20,
            deadline: Duration::from_secs(3600),
            min_rate: u64::MAX,
            grace: Duration::ZERO,
        };
        let err = read_limited("slow", &[1u8; 10][..], &lim).unwrap_err();
        assert!(matches!(err, TransportError::TooSlow { .. }), "{err}");
    }

    #[test]
    fn http_needs_explicit_permission() {
        assert!(HttpTransport::new("http://127.0.0.1:1/", None, false).is_err());
        assert!(HttpTransport::new("http://127.0.0.1:1/", None, true).is_ok());
        assert!(HttpTransport::new("ftp://x/", None, true).is_err());
        // A transport beside another is checked the same way.
        let t = HttpTransport::new("http://127.0.0.1:1/metadata", None, true).unwrap();
        assert!(t.beside("http://example.com/targets", false).is_err());
        assert!(t.beside("ftp://x/", true).is_err());
        assert_eq!(
            t.beside("http://127.0.0.1:1/targets/", true).unwrap().base,
            "http://127.0.0.1:1/targets"
        );
    }

    /// Metadata then a target over one kept-alive connection.
    #[test]
    fn a_transport_beside_another_reuses_its_connection() {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::<String>::new()));
        let (a, p) = (accepted.clone(), paths.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut w = c;
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 0 {
                        if let Some(path) = line.strip_prefix("GET ") {
                            let path = path.split_whitespace().next().unwrap_or("");
                            p.lock().unwrap().push(path.to_string());
                        } else if line == "\r\n" {
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            w.write_all(ok).unwrap();
                        }
                        line.clear();
                    }
                });
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let meta = HttpTransport::new(&format!("{base}/metadata"), None, true).unwrap();
        let targets = meta.beside(&format!("{base}/targets"), true).unwrap();
        let lim = FetchLimits::default();
        assert_eq!(meta.fetch("1.root.json", &lim).unwrap(), b"ok");
        assert_eq!(targets.fetch("releases/f.json", &lim).unwrap(), b"ok");
        assert_eq!(
            *paths.lock().unwrap(),
            ["/metadata/1.root.json", "/targets/releases/f.json"]
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the second fetch reused the connection"
        );
    }
}
