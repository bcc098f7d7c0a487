//! Finding and installing a new agent: after every verified refresh the
//! agent looks up its architecture's target `agent/berth-agent-<arch>` in
//! the trusted targets metadata (delegations included). A target whose
//! sha256 is neither the running agent's nor one that failed its trial,
//! and whose signed version is newer than the running agent's (or whose
//! downgrade the operator allowed, see [`super::version`]), is streamed
//! into a temporary file in the slots' directory — its length capped at
//! the signed length and its hashes computed as it arrives, never held in
//! memory — fsynced, and renamed to the inactive slot (mode 0755) only once
//! both matched; a mismatch leaves the slots as they were. It is then put
//! on trial in the record, and the agent asks its launcher for a restart.
//! A build that is not newer is refused once, with both versions, in the
//! record's history (the status) and as an `agent-refused` event.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use berth_trust::updater::UpdateError;
use berth_trust::Updater;
use tokio::sync::Notify;

use super::record::{Record, SlotInfo};
use super::version::{self, Offered};
use super::{file_sha256, now_ms, slot_path, SelfUpdateError, Slot};
use crate::link::Link;

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
    pub restart: Restart,
    running_sha: OnceLock<String>,
    /// Where refusals are reported as events, once the link is up.
    link: OnceLock<Link>,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No agent target for this architecture.
    None,
    /// The target is the running agent, or one that failed its trial.
    Current,
    Rejected(String),
    /// Not newer than the running agent (and no downgrade allowed): why.
    Refused(String),
    /// Installed into this slot and put on trial.
    Installed(Slot, String),
}

impl Installer {
    pub fn new(state: PathBuf, target: String, running: Slot, exe: PathBuf) -> Installer {
        Installer {
            state,
            target,
            running,
            exe,
            restart: Restart::default(),
            running_sha: OnceLock::new(),
            link: OnceLock::new(),
        }
    }

    /// Reports refusals on `link` from now on.
    pub fn set_link(&self, link: Link) {
        let _ = self.link.set(link);
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
        let offered = Offered::from_custom(info.custom.as_ref());
        let running = version::running(&record, self.running);
        if let Err(why) = version::admit(&offered, &running) {
            if record.refuse(&sha, why.clone(), now_ms()) {
                record.save(&self.state)?;
                tracing::warn!(target = %self.target, sha256 = %sha, reason = %why, "agent update refused; the running agent stays");
                if let Some(link) = self.link.get() {
                    super::trial::report_outcomes(&self.state, link);
                }
            }
            return Ok(Found::Refused(why));
        }
        let slot = record.inactive();
        let dest = slot_path(&self.state, slot, &self.exe);
        let dir = super::dir(&self.state);
        std::fs::create_dir_all(&dir).map_err(|source| SelfUpdateError::Io {
            what: "create",
            path: dir,
            source,
        })?;
        u.download_to(&self.target, &dest, 0o755)
            .map_err(|e| bad(crate::error_chain(&e)))?;
        record.begin_trial(
            slot,
            SlotInfo {
                sha256: sha.clone(),
                version: offered.version,
                installed_ms: now_ms(),
            },
        );
        record.save(&self.state)?;
        tracing::info!(target = %self.target, sha256 = %sha, slot = %slot, "a new agent is installed; restarting into its trial");
        self.restart.request();
        Ok(Found::Installed(slot, sha))
    }
}

/// The hook the TUF source runs after each refresh.
pub fn hook(installer: Arc<Installer>) -> crate::source::AfterRefresh {
    Arc::new(move |u: &mut Updater<'_>| match installer.check(u) {
        Ok(Found::Rejected(sha)) => {
            tracing::debug!(sha256 = %sha, "the published agent failed its trial here before; not trying it again");
        }
        Ok(Found::Refused(why)) => {
            tracing::debug!(reason = %why, "the published agent is not installed");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "agent update failed; the running agent stays")
        }
    })
}
