//! Finding and installing a new agent: after every verified refresh the
//! agent looks up its architecture's target `agent/berth-agent-<arch>` in
//! the trusted targets metadata (delegations included). A target whose
//! sha256 is neither the running agent's nor one that failed its trial is
//! downloaded and verified (length and hashes, by the TUF client), copied
//! into the inactive slot (temporary file, fsync, rename; mode 0755), put
//! on trial in the record, and the agent asks its launcher for a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use berth_trust::updater::UpdateError;
use berth_trust::Updater;
use tokio::sync::Notify;

use super::record::{write_atomic, Record, SlotInfo};
use super::{file_sha256, now_ms, slot_path, SelfUpdateError, Slot};

/// A restart the agent asked of its launcher.
#[derive(Debug, Clone, Default)]
pub struct Restart(Arc<(AtomicBool, Notify)>);

impl Restart {
    pub fn request(&self) {
        self.0 .0.store(true, Ordering::Release);
        self.0 .1.notify_waiters();
    }

    pub fn requested(&self) -> bool {
        self.0 .0.load(Ordering::Acquire)
    }

    /// Resolves once a restart is requested.
    pub async fn wait(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

/// Installs new agents for the agent that runs from `running`.
#[derive(Debug)]
pub struct Installer {
    pub state: PathBuf,
    pub target: String,
    pub running: Slot,
    /// The running binary (for its sha256 when it is the installed one).
    pub exe: PathBuf,
    /// Where the TUF client keeps downloaded targets.
    pub cache: PathBuf,
    pub restart: Restart,
    running_sha: OnceLock<String>,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No agent target for this architecture.
    None,
    /// The target is the running agent, or one that failed its trial.
    Current,
    Rejected(String),
    /// Installed into this slot and put on trial.
    Installed(Slot, String),
}

impl Installer {
    pub fn new(
        state: PathBuf,
        target: String,
        running: Slot,
        exe: PathBuf,
        cache: PathBuf,
    ) -> Installer {
        Installer {
            state,
            target,
            running,
            exe,
            cache,
            restart: Restart::default(),
            running_sha: OnceLock::new(),
        }
    }

    fn running_sha(&self, record: &Record) -> Result<String, SelfUpdateError> {
        if let Some(s) = self.running_sha.get() {
            return Ok(s.clone());
        }
        let sha = match record.slots.get(&self.running) {
            Some(info) if self.running != Slot::Installed => info.sha256.clone(),
            _ => file_sha256(&self.exe)?,
        };
        Ok(self.running_sha.get_or_init(|| sha).clone())
    }

    /// Looks the target up in the freshly refreshed metadata of `u`, and
    /// installs it when it is new.
    pub fn check(&self, u: &mut Updater<'_>) -> Result<Found, SelfUpdateError> {
        let bad = |message: String| SelfUpdateError::Target {
            target: self.target.clone(),
            message,
        };
        if self.restart.requested() {
            return Ok(Found::Current);
        }
        let info = match u.target_info(&self.target) {
            Ok(i) => i,
            Err(UpdateError::TargetNotFound { .. }) => return Ok(Found::None),
            Err(e) => return Err(bad(crate::error_chain(&e))),
        };
        let sha = info.hashes.get("sha256").cloned().ok_or_else(|| {
            bad("its metadata has no sha256 hash; publish it with `berth agent publish`".into())
        })?;
        let mut record = Record::load(&self.state)?;
        if record.trial.is_some() {
            // A trial is pending or running: one at a time.
            return Ok(Found::Current);
        }
        if sha == self.running_sha(&record)? {
            return Ok(Found::Current);
        }
        if record.is_rejected(&sha) {
            return Ok(Found::Rejected(sha));
        }
        let version = info
            .custom
            .as_ref()
            .and_then(|c| c["version"].as_str())
            .map(str::to_string);
        std::fs::create_dir_all(&self.cache).map_err(|source| SelfUpdateError::Io {
            what: "create",
            path: self.cache.clone(),
            source,
        })?;
        let file = u
            .download(&self.target, &self.cache)
            .map_err(|e| bad(crate::error_chain(&e)))?;
        let slot = record.inactive();
        let dest = slot_path(&self.state, slot, &self.exe);
        install_file(&file, &dest)?;
        let _ = std::fs::remove_file(&file);
        record.begin_trial(
            slot,
            SlotInfo {
                sha256: sha.clone(),
                version,
                installed_ms: now_ms(),
            },
        );
        record.save(&self.state)?;
        tracing::info!(target = %self.target, sha256 = %sha, slot = %slot, "a new agent is installed; restarting into its trial");
        self.restart.request();
        Ok(Found::Installed(slot, sha))
    }
}

/// Copies a verified file into a slot, durably, executable by its owner.
fn install_file(from: &Path, to: &Path) -> Result<(), SelfUpdateError> {
    let bytes = std::fs::read(from).map_err(|source| SelfUpdateError::Io {
        what: "read the verified agent",
        path: from.to_path_buf(),
        source,
    })?;
    write_atomic(to, &bytes, 0o755).map_err(|source| SelfUpdateError::Io {
        what: "install the new agent into",
        path: to.to_path_buf(),
        source,
    })
}

/// The hook the TUF source runs after each refresh.
pub fn hook(installer: Arc<Installer>) -> crate::source::AfterRefresh {
    Arc::new(move |u: &mut Updater<'_>| match installer.check(u) {
        Ok(Found::Rejected(sha)) => {
            tracing::debug!(sha256 = %sha, "the published agent failed its trial here before; not trying it again");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "agent update failed; the running agent stays")
        }
    })
}
