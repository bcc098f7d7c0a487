//! The agent's local API: one JSON request per line on a unix socket
//! (mode 0600, so only root — or the socket's owner — may ask), one JSON
//! answer per line. `berth status`, `berth history`, `berth logs` and
//! `berth attest` are its clients.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// The largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    History,
    Logs {
        workload: String,
    },
    Attest {
        nonce: String,
    },
    /// Import an offline bundle (a path the agent can read).
    Import {
        path: String,
    },
}

/// What answers requests (the agent).
pub trait Handler: Send + Sync + 'static {
    /// The JSON answer, or an error message for the client to print.
    fn handle(&self, req: Request) -> Result<serde_json::Value, String>;
}

/// A problem with the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {path}: {source}; is another agent running?")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the agent at {path}: {source}; is berth-agent running (and are you root)?"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent at {path} answered badly: {reason}")]
    Protocol { path: PathBuf, reason: String },
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// Binds the socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let err = |source| ApiError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "a process is already answering on it",
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(30), one(stream, handler)).await;
                });
            }
        }
    }
}

async fn one(stream: tokio::net::UnixStream, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        // Each request line is bounded (not the connection: a client may
        // ask as often as it likes).
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST {
            let answer = serde_json::json!({
                "error": format!("bad request: longer than {MAX_REQUEST} bytes")
            });
            let mut bytes = serde_json::to_vec(&answer).expect("json");
            bytes.push(b'\n');
            return write.write_all(&bytes).await;
        }
        let answer = match serde_json::from_slice::<Request>(line.trim_ascii_end()) {
            Ok(req) => {
                let h = handler.clone();
                match tokio::task::spawn_blocking(move || h.handle(req)).await {
                    Ok(Ok(v)) => serde_json::json!({ "ok": v }),
                    Ok(Err(e)) => serde_json::json!({ "error": e }),
                    Err(e) => serde_json::json!({ "error": format!("the agent failed: {e}") }),
                }
            }
            Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
        };
        let mut bytes = serde_json::to_vec(&answer).expect("json");
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
    }
}

/// Sends one request and returns the answer (blocking client).
pub fn request(path: &Path, req: &Request) -> Result<serde_json::Value, ApiError> {
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ApiError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let proto = |reason: String| ApiError::Protocol {
        path: path.to_path_buf(),
        reason,
    };
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| proto(e.to_string()))?;
    let mut line = serde_json::to_vec(req).expect("json");
    line.push(b'\n');
    s.write_all(&line).map_err(|e| proto(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| proto(e.to_string()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&answer).map_err(|e| proto(format!("{e}: {answer:?}")))?;
    if let Some(e) = v.get("error") {
        return Err(ApiError::Refused(e.as_str().unwrap_or("?").to_string()));
    }
    v.get_mut("ok")
        .map(serde_json::Value::take)
        .ok_or_else(|| proto("no \"ok\" field".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: Request) -> Result<serde_json::Value, String> {
            match req {
                Request::Logs { workload } if workload == "nope" => {
                    Err("no workload named nope".into())
                }
                other => Ok(serde_json::to_value(other).unwrap()),
            }
        }
    }

    #[test]
    fn requests_round_trip_and_the_socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = rt.block_on(async { bind(&path) }).unwrap();
        let server = rt.spawn(serve(listener, Arc::new(Echo), async {
            let _ = rx.await;
        }));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let v = request(&path, &Request::Attest { nonce: "n1".into() }).unwrap();
        assert_eq!(v["nonce"], "n1");
        let e = request(
            &path,
            &Request::Logs {
                workload: "nope".into(),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no workload named nope"), "{e}");
        // A second agent cannot take over a live socket.
        let again = rt.block_on(async { bind(&path) }).unwrap_err();
        assert!(again.to_string().contains("already"), "{again}");
        // Garbage gets an error, not a hang.
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"cmd\":\"reboot\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("bad request"), "{line}");
        // One connection may carry any number of requests (more than
        // MAX_REQUEST bytes in all); one line may not pass the bound.
        let mut r = BufReader::new(s.try_clone().unwrap());
        let one = serde_json::to_vec(&Request::Attest {
            nonce: "n".repeat(200),
        })
        .unwrap();
        for _ in 0..(2 * MAX_REQUEST / one.len() + 1) {
            s.write_all(&one).unwrap();
            s.write_all(b"\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"ok\""), "{line}");
        }
        // (The agent may close before it has read all of it.)
        let _ = s.write_all(&vec![b' '; MAX_REQUEST + 10]);
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("longer than"), "{line}");
        tx.send(()).unwrap();
        rt.block_on(server).unwrap();
        drop(rt);
        let e = request(&path, &Request::Status).unwrap_err();
        assert!(e.to_string().contains("is berth-agent running"), "{e}");
    }
}
