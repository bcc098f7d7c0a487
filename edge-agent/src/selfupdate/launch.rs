//! The launcher: what the installed `berth-agent` does when
//! `[self_update]` is configured. It stays a small parent process (the
//! service's main process) and runs the agent as its child:
//!
//! 1. read the record; count a trial start, or fall back when the trial's
//!    starts are used up — persisted before anything starts;
//! 2. start the chosen slot's binary with the same arguments, marked
//!    ([`super::ENV_SLOT`], [`super::ENV_TRIAL`]) so it runs as the agent;
//! 3. a trial child must commit within `deadline_s`: if it exits first, or
//!    the deadline passes (it is killed), the failure is recorded (with
//!    the trial's note of what it waited for) and the loop starts over;
//! 4. a committed child's exit ends the launcher with the same status,
//!    except [`super::EXIT_RESTART`] (a new agent was installed), which
//!    starts over.
//!
//! SIGTERM and SIGINT are passed on to the child; the launcher then waits
//! for it. The child dies with the launcher (parent-death signal).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::record::{write_atomic, Record};
use super::{
    file_sha256, now_ms, progress_path, slot_path, SelfUpdateError, Slot, ENV_INSTALLED_SHA256,
    ENV_LAUNCHER, ENV_SLOT, ENV_TRIAL, EXIT_RESTART,
};

/// How often a trial child and the record are looked at (a committed
/// child is waited for on `SIGCHLD`, without polling).
const TICK: Duration = Duration::from_millis(100);

/// The signals the launcher waits on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// A child changed state: registered before the first child starts,
    /// so an exit is never missed between a check and the wait.
    chld: tokio::signal::unix::Signal,
}

/// What the launcher needs.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub state: PathBuf,
    /// The installed binary (this process's executable).
    pub installed: PathBuf,
    /// The arguments the agent is started with.
    pub args: Vec<OsString>,
    pub deadline: Duration,
    pub tries: u32,
}

/// How a wait for the child ended.
enum Waited {
    Exited(ExitStatus),
    Committed,
    Deadline,
    Signalled(ExitStatus),
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => st.to_string(),
    }
}

fn exit_code(st: ExitStatus) -> u8 {
    match (st.code(), st.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
        _ => 1,
    }
}

fn note(state: &Path) -> String {
    match std::fs::read_to_string(progress_path(state)) {
        Ok(n) if !n.trim().is_empty() => format!("; it was waiting for {}", n.trim()),
        _ => String::new(),
    }
}

/// The file naming the launcher's child: `PID STARTTIME`.
fn child_file(state: &Path) -> PathBuf {
    super::dir(state).join("child")
}

/// A process's start time (clock ticks since boot), from `/proc`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // anything: the start time is field 22 of the whole line.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn remember(state: &Path, pid: u32) {
    let Some(t) = start_time(pid) else { return };
    if let Err(e) = write_atomic(&child_file(state), format!("{pid} {t}").as_bytes(), 0o600) {
        tracing::warn!(error = %e, "cannot record the agent's pid");
    }
}

/// Kills the child of an earlier launcher that was itself killed, when
/// that child did not die with it (a foreign build ignores the
/// parent-death signal the agent sets for itself).
fn reap_leftover(state: &Path) {
    let Ok(text) = std::fs::read_to_string(child_file(state)) else {
        return;
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(t))) = (it.next(), it.next()) else {
        return;
    };
    let (Ok(pid), Ok(raw)) = (u32::try_from(pid), i32::try_from(pid)) else {
        return;
    };
    if pid != std::process::id() && start_time(pid) == Some(t) {
        if let Some(p) = rustix::process::Pid::from_raw(raw) {
            tracing::warn!(pid, "killing the agent an earlier launcher left behind");
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

impl Launcher {
    /// Runs until the agent ends (its exit code) or a signal stops both.
    pub async fn run(&self) -> Result<u8, SelfUpdateError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sig = Signals {
            term: signal(SignalKind::terminate()).map_err(|e| self.io("handle SIGTERM", e))?,
            int: signal(SignalKind::interrupt()).map_err(|e| self.io("handle SIGINT", e))?,
            chld: signal(SignalKind::child()).map_err(|e| self.io("handle SIGCHLD", e))?,
        };
        reap_leftover(&self.state);
        let mut record = Record::load(&self.state)?;
        if record.active != Slot::Installed {
            let own = file_sha256(&self.installed)?;
            if record.installed_replaced(&own, now_ms()) {
                tracing::warn!(installed = %self.installed.display(), "the installed agent changed: it runs instead of the committed slot");
                record.save(&self.state)?;
            }
        }
        loop {
            let mut record = Record::load(&self.state)?;
            let start = record.next_start(self.tries, now_ms());
            record.save(&self.state)?;
            let _ = std::fs::remove_file(progress_path(&self.state));
            let mut child = match self.spawn(start.slot, start.trial) {
                Ok(c) => c,
                Err(e) if start.slot == Slot::Installed => return Err(e),
                Err(e) => {
                    let mut r = Record::load(&self.state)?;
                    if start.trial {
                        r.trial_failed(e.to_string());
                    } else {
                        let why = format!("{e}: the installed agent runs instead");
                        r.run_installed(String::new(), why, now_ms());
                    }
                    r.save(&self.state)?;
                    tracing::error!(error = %e, slot = %start.slot, "cannot start the agent");
                    continue;
                }
            };
            tracing::info!(slot = %start.slot, trial = start.trial, pid = child.id(), "agent started");
            remember(&self.state, child.id());
            let deadline = start.trial.then(|| Instant::now() + self.deadline);
            let waited = self.wait(&mut child, start.slot, deadline, &mut sig).await;
            let waited = match waited {
                Waited::Committed => {
                    tracing::info!(slot = %start.slot, "the new agent committed");
                    self.wait(&mut child, start.slot, None, &mut sig).await
                }
                w => w,
            };
            let trial_open = |state: &Path| -> Result<bool, SelfUpdateError> {
                let r = Record::load(state)?;
                Ok(start.trial && r.trial.as_ref().is_some_and(|t| t.slot == start.slot))
            };
            match waited {
                Waited::Signalled(st) => return Ok(exit_code(st)),
                Waited::Exited(st) if trial_open(&self.state)? => {
                    let why = format!(
                        "the new agent (slot {}) exited with {} before it committed{}",
                        start.slot,
                        describe(st),
                        note(&self.state)
                    );
                    self.failed(why)?;
                }
                Waited::Exited(st) if st.code() == Some(i32::from(EXIT_RESTART)) => {
                    tracing::info!("the agent asked for a restart");
                }
                Waited::Exited(st) => return Ok(exit_code(st)),
                Waited::Deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if trial_open(&self.state)? {
                        let why = format!(
                            "the new agent (slot {}) did not reconnect, reconcile and report \
                             healthy within {} s{}",
                            start.slot,
                            self.deadline.as_secs(),
                            note(&self.state)
                        );
                        self.failed(why)?;
                    }
                }
                Waited::Committed => unreachable!("a committed wait has no deadline"),
            }
        }
    }

    fn io(&self, what: &'static str, source: std::io::Error) -> SelfUpdateError {
        SelfUpdateError::Io {
            what,
            path: self.installed.clone(),
            source,
        }
    }

    fn failed(&self, why: String) -> Result<(), SelfUpdateError> {
        tracing::warn!(reason = %why, "agent trial failed");
        let mut r = Record::load(&self.state)?;
        r.trial_failed(why);
        r.save(&self.state)
    }

    fn spawn(&self, slot: Slot, trial: bool) -> Result<Child, SelfUpdateError> {
        let path = slot_path(&self.state, slot, &self.installed);
        let mut cmd = Command::new(&path);
        cmd.arg0("berth-agent")
            .args(&self.args)
            .env(ENV_SLOT, slot.name())
            .env(ENV_LAUNCHER, std::process::id().to_string())
            .env_remove(ENV_TRIAL)
            .env_remove(ENV_INSTALLED_SHA256);
        if trial {
            cmd.env(ENV_TRIAL, "1")
                .env(ENV_INSTALLED_SHA256, file_sha256(&self.installed)?);
        }
        cmd.spawn()
            .map_err(|source| SelfUpdateError::Spawn { path, source })
    }

    /// Waits for the child to exit, to commit (a trial), or the deadline.
    async fn wait(
        &self,
        child: &mut Child,
        slot: Slot,
        deadline: Option<Instant>,
        sig: &mut Signals,
    ) -> Waited {
        let pid = rustix::process::Pid::from_child(child);
        let mut forwarded = false;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return if forwarded {
                    Waited::Signalled(st)
                } else {
                    Waited::Exited(st)
                };
            }
            if let (Some(d), false) = (deadline, forwarded) {
                if Record::load(&self.state).is_ok_and(|r| r.trial.is_none() && r.active == slot) {
                    return Waited::Committed;
                }
                if Instant::now() >= d {
                    return Waited::Deadline;
                }
            }
            // A trial is polled (its commit is a file); otherwise the
            // launcher sleeps until a signal arrives.
            tokio::select! {
                _ = sig.term.recv() => forwarded = true,
                _ = sig.int.recv() => forwarded = true,
                _ = sig.chld.recv() => continue,
                () = tokio::time::sleep(TICK), if deadline.is_some() && !forwarded => continue,
            }
            tracing::info!("stopping the agent");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}
