//! Agent self-update: a new `berth-agent` arrives as the TUF target
//! `agent/berth-agent-<arch>` (signed by `berth agent publish` with its
//! version), is taken only when newer than the running agent unless the
//! operator allowed a downgrade ([`version`]), is streamed and verified
//! through the same chain as releases into the inactive of two slots
//! (`<state>/agent/a`, `<state>/agent/b`, see [`install`]) and started on
//! trial;
//! it becomes the committed agent only once it has reconnected, reconciled
//! and reported healthy within a deadline. Otherwise the committed agent
//! is started again, and the status says why.
//!
//! With `[self_update]` configured, the installed `berth-agent` is a thin
//! launcher (see [`launch`]): it reads the slot record ([`record`]),
//! counts a trial start (persisted before the start), and runs the chosen
//! slot as its child — the trial one with a deadline: if the child exits
//! before it commits, or the deadline passes (it is then killed), the
//! failure is recorded and the launcher retries it until its
//! `self_update.tries` starts are used up, then falls back to the committed
//! slot. Starts that never reported back (a power cut, a reset) count too:
//! the next start after the last try falls back. The agent child (see
//! [`install`]) checks for a new agent target after every refresh; it
//! installs one and exits with [`EXIT_RESTART`], which makes the launcher
//! start the trial. The trial agent commits (see [`trial`]).
//!
//! Workloads are not restarted by an agent update: the old agent stops
//! without stopping them (as on any stop), the new one adopts them, as
//! after a crash of the agent alone.
//!
//! The record, the slots and the trial's progress note live in
//! `<state>/agent/`; every write is atomic (temporary file, fsync, rename).

pub mod install;
pub mod launch;
pub mod record;
pub mod trial;
pub mod version;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use record::{Record, Slot};

use crate::release::document::Arch;

/// The agent asks its launcher to start it again (a new agent is on trial).
pub const EXIT_RESTART: u8 = 75;
/// Set by the launcher in its child: the slot it runs.
pub const ENV_SLOT: &str = "BERTH_AGENT_SLOT";
/// Set by the launcher in a trial child.
pub const ENV_TRIAL: &str = "BERTH_AGENT_TRIAL";
/// Set by the launcher in its child: the launcher's pid.
pub const ENV_LAUNCHER: &str = "BERTH_AGENT_LAUNCHER";
/// Set by the launcher in a trial child: sha256 of the installed binary.
pub const ENV_INSTALLED_SHA256: &str = "BERTH_AGENT_INSTALLED_SHA256";

/// Errors of the self-update.
#[derive(Debug, thiserror::Error)]
pub enum SelfUpdateError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the slot record {path} is damaged: {message}")]
    Record { path: PathBuf, message: String },
    #[error("slot {slot} is not on trial: nothing to commit")]
    NotOnTrial { slot: &'static str },
    #[error("the agent target {target}: {message}")]
    Target { target: String, message: String },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The TUF target holding the agent for `arch`.
pub fn agent_target(arch: Arch) -> String {
    format!("agent/berth-agent-{arch}")
}

/// The directory of slots and the record.
pub fn dir(state: &Path) -> PathBuf {
    state.join("agent")
}

/// Where the binary of `slot` is; `installed` for the installed one.
pub fn slot_path(state: &Path, slot: Slot, installed: &Path) -> PathBuf {
    match slot {
        Slot::Installed => installed.to_path_buf(),
        Slot::A | Slot::B => dir(state).join(slot.name()),
    }
}

/// The trial's progress note (what it is waiting for), for the launcher's
/// report when the trial misses its deadline.
pub fn progress_path(state: &Path) -> PathBuf {
    dir(state).join("trial-progress")
}

/// The sha256 (lowercase hex) of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, SelfUpdateError> {
    use sha2::Digest as _;
    let io = |source| SelfUpdateError::Io {
        what: "hash",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// This process as its launcher started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub slot: Slot,
    pub trial: bool,
}

/// The slot this process runs from, when a launcher started it.
pub fn running() -> Option<Running> {
    let slot = Slot::parse(&std::env::var(ENV_SLOT).ok()?)?;
    Some(Running {
        slot,
        trial: std::env::var_os(ENV_TRIAL).is_some(),
    })
}

/// Ties this process's life to its launcher's: killed when the launcher
/// dies (a launcher killed with SIGKILL leaves no agent behind). Returns
/// false when the launcher is already gone.
pub fn tie_to_launcher() -> bool {
    let Some(pid) = std::env::var(ENV_LAUNCHER)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return true;
    };
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        tracing::warn!(error = %e, "cannot tie the agent to its launcher's life");
    }
    rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(pid)
}

/// The agent part of the state report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentReport {
    /// The slot this agent runs from.
    pub running: String,
    /// The committed slot.
    pub active: String,
    /// The slot on trial and its starts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial: Option<record::Trial>,
    /// The latest finished agent update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<record::Outcome>,
    /// Finished agent updates, newest last.
    pub history: Vec<record::Outcome>,
}

/// The agent report, when this agent was started by a launcher.
pub fn report(state: &Path) -> Option<AgentReport> {
    let me = running()?;
    let r = match Record::load(state) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the slot record for the report");
            return None;
        }
    };
    Some(AgentReport {
        running: me.slot.name().into(),
        active: r.active.name().into(),
        trial: r.trial,
        last: r.history.last().cloned(),
        history: r.history,
    })
}

/// The wall clock, in milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    crate::reconcile::engine::wall_ms()
}

/// Checks that `head` (the first bytes of a file to publish as the agent
/// for `arch`) starts an executable the device can run: an ELF file for
/// that architecture, or a script (`#!`).
pub fn check_agent_file(head: &[u8], arch: Arch) -> Result<(), String> {
    if head.starts_with(b"#!") {
        return Ok(());
    }
    if !head.starts_with(b"\x7fELF") || head.len() < 20 {
        return Err("it is neither an ELF executable nor a script (#!): build berth-agent for the device's architecture".into());
    }
    let raw = [head[18], head[19]];
    let machine = match head[5] {
        2 => u16::from_be_bytes(raw),
        _ => u16::from_le_bytes(raw),
    };
    let (want, name) = match arch {
        Arch::Amd64 => (62, "x86-64"),
        Arch::Arm64 => (183, "AArch64"),
        Arch::Arm => (40, "ARM"),
    };
    if machine != want {
        return Err(format!(
            "it is an ELF executable for machine {machine}, not {name} ({arch}): build it for {arch} \
             (see cross/) or pass the --arch it was built for"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executables_for_the_architecture_are_published() {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(20, 0);
        elf[18] = 62;
        assert!(check_agent_file(&elf, Arch::Amd64).is_ok());
        let e = check_agent_file(&elf, Arch::Arm64).unwrap_err();
        assert!(e.contains("not AArch64 (arm64)"), "{e}");
        elf[18] = 183;
        assert!(check_agent_file(&elf, Arch::Arm64).is_ok());
        assert!(check_agent_file(b"#!/bin/sh\nexit 1\n", Arch::Arm).is_ok());
        let e = check_agent_file(b"hello", Arch::Amd64).unwrap_err();
        assert!(e.contains("neither an ELF executable nor a script"), "{e}");
        assert_eq!(agent_target(Arch::Arm64), "agent/berth-agent-arm64");
    }
}
