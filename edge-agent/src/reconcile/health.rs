//! The health gate: every workload of a new generation must pass its check
//! before its deadline, or the generation is rolled back.
//!
//! Checks (from the release document):
//! - `uptime`: running, with the same process, for N seconds;
//! - `command`: a command run *inside* the container (`berth-runtime exec`,
//!   with the container's own profile) exits 0;
//! - `tcp`: a connection to 127.0.0.1:PORT succeeds (host network);
//! - `http`: `GET PATH` on 127.0.0.1:PORT answers 2xx (host network).
//!
//! A workload that exits during the gate fails it at once. A failure's
//! reason names the workload, how its process ended (exit status or
//! signal) when it did, and the last lines it printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::runtime::ContainerRuntime;
use crate::names::WorkloadName;
use crate::release::document::Check;
use crate::release::Resolved;

/// Why a generation failed its gate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workload {workload} failed its health check: {reason}")]
pub struct GateFailure {
    pub workload: String,
    pub reason: String,
}

/// One check's verdict at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Healthy,
    NotYet(String),
}

/// Polls every workload's check until all pass (`Ok`), one fails, or one's
/// deadline passes. `interval` is the polling period.
pub fn gate(
    rt: &dyn ContainerRuntime,
    workloads: &[Resolved],
    interval: Duration,
) -> Result<(), GateFailure> {
    let start = Instant::now();
    let mut first_pid: Vec<Option<i32>> = vec![None; workloads.len()];
    let mut healthy = vec![false; workloads.len()];
    let mut last: Vec<String> = vec!["not checked yet".into(); workloads.len()];
    loop {
        let running = rt.states().map_err(|e| GateFailure {
            workload: "*".into(),
            reason: e.to_string(),
        })?;
        for (i, r) in workloads.iter().enumerate() {
            let w = &r.workload;
            let name = w.name.as_str();
            let fail = |reason: String| GateFailure {
                workload: name.into(),
                reason: with_output(rt, &w.name, reason),
            };
            let c = running.iter().find(|c| c.name == name);
            let pid = match c {
                Some(c) if c.status == "running" => c.pid,
                Some(c) => {
                    let how = c.exit.map_or(String::new(), |e| format!(" ({e})"));
                    return Err(fail(format!(
                        "it {} during the health gate{how}",
                        word(&c.status)
                    )));
                }
                None => {
                    return Err(fail(
                        "its container disappeared during the health gate".into(),
                    ))
                }
            };
            match (first_pid[i], pid) {
                (None, p) => first_pid[i] = p,
                (Some(a), Some(b)) if a != b => {
                    return Err(fail(format!("it restarted (pid {a} became {b})")))
                }
                _ => {}
            }
            if healthy[i] {
                continue;
            }
            match probe(rt, r, start.elapsed()) {
                Probe::Healthy => healthy[i] = true,
                Probe::NotYet(why) => last[i] = why,
            }
            if !healthy[i] && start.elapsed() >= Duration::from_secs(w.health.deadline_s) {
                return Err(fail(format!(
                    "not healthy within its {} s deadline (last: {})",
                    w.health.deadline_s, last[i]
                )));
            }
        }
        if healthy.iter().all(|h| *h) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// `reason`, then the workload's last output when its runtime keeps one.
pub fn with_output(rt: &dyn ContainerRuntime, name: &WorkloadName, reason: String) -> String {
    match rt.last_output(name) {
        Some(out) if out.is_empty() => format!("{reason}; it printed nothing"),
        Some(out) => format!("{reason}; last output: \"{out}\""),
        None => reason,
    }
}

fn word(status: &str) -> &str {
    match status {
        "stopped" => "stopped",
        "paused" => "was paused",
        other => other,
    }
}

fn probe(rt: &dyn ContainerRuntime, r: &Resolved, elapsed: Duration) -> Probe {
    let name = &r.workload.name;
    match &r.workload.health.check {
        Check::Uptime { seconds } => {
            if elapsed >= Duration::from_secs(*seconds) {
                Probe::Healthy
            } else {
                Probe::NotYet(format!("up {} ms of {seconds} s", elapsed.as_millis()))
            }
        }
        Check::Command { command } => match rt.exec(name, command) {
            Ok(0) => Probe::Healthy,
            Ok(code) => Probe::NotYet(format!("{:?} exited with {code}", command.join(" "))),
            Err(e) => Probe::NotYet(e.to_string()),
        },
        Check::Tcp { port } => match connect(*port) {
            Ok(_) => Probe::Healthy,
            Err(e) => Probe::NotYet(format!("tcp 127.0.0.1:{port}: {e}")),
        },
        Check::Http { port, path } => match http_get(*port, path) {
            Ok(code) if (200..300).contains(&code) => Probe::Healthy,
            Ok(code) => Probe::NotYet(format!("GET {path} on port {port} answered {code}")),
            Err(e) => Probe::NotYet(format!("GET {path} on port {port}: {e}")),
        },
    }
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// A minimal `GET` returning the status code (the body is not read).
fn http_get(port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = connect(port)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: berth-agent\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {:?}", line.trim()),
        )),
    }
}
