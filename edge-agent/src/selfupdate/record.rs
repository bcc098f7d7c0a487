//! The slot record, `<state>/agent/slots.json`: which agent binary is
//! committed, which one is on trial and how often it was started, and the
//! outcomes of past agent updates. Written whole, atomically (temporary
//! file, fsync, rename, fsync of the directory), before the side effect it
//! guards. The transitions are pure and unit-tested.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SelfUpdateError;

/// Outcomes and rejected binaries kept in the record.
pub const KEEP: usize = 16;

/// Where an agent binary lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// The binary the service manager starts (the launcher itself).
    #[default]
    Installed,
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Installed => "installed",
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "installed" => Some(Slot::Installed),
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A binary installed into slot `a` or `b`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub sha256: String,
    /// The target's `custom.version`, when the operator gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub installed_ms: u64,
}

/// A new agent on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub slot: Slot,
    pub sha256: String,
    /// Starts so far (counted before each start).
    pub tries: u32,
    /// Why each earlier start did not commit.
    #[serde(default)]
    pub failures: Vec<String>,
}

/// How an agent update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    Committed,
    FellBack,
    /// The installed binary changed under the record (a package upgrade):
    /// it is run again.
    Reinstalled,
    /// A published build was not installed (not newer than the running
    /// agent, and no downgrade allowed): the running agent stays.
    Refused,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Committed => "committed",
            Ending::FellBack => "fell-back",
            Ending::Reinstalled => "reinstalled",
            Ending::Refused => "refused",
        }
    }
}

/// One finished agent update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub result: Ending,
    pub slot: Slot,
    pub sha256: String,
    pub reason: String,
    pub time_ms: u64,
    /// Published as an event by an agent that was connected.
    #[serde(default)]
    pub reported: bool,
}

/// The whole record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The committed agent.
    pub active: Slot,
    #[serde(default)]
    pub slots: BTreeMap<Slot, SlotInfo>,
    #[serde(default)]
    pub trial: Option<Trial>,
    /// Binaries that failed their trial (not tried again), newest last.
    #[serde(default)]
    pub rejected: Vec<String>,
    /// sha256 of the installed binary when a slot was committed: if the
    /// installed binary changes later (a package upgrade), it wins.
    #[serde(default)]
    pub installed_sha256: Option<String>,
    /// Finished agent updates, newest last.
    #[serde(default)]
    pub history: Vec<Outcome>,
}

/// What the launcher starts next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub slot: Slot,
    pub trial: bool,
}

fn push_bounded<T>(v: &mut Vec<T>, item: T) {
    v.push(item);
    if v.len() > KEEP {
        let extra = v.len() - KEEP;
        v.drain(..extra);
    }
}

impl Record {
    /// The record file under the state directory.
    pub fn path(state: &Path) -> PathBuf {
        state.join("agent/slots.json")
    }

    /// Reads the record; an absent file is a fresh device (the installed
    /// binary, nothing on trial).
    pub fn load(state: &Path) -> Result<Record, SelfUpdateError> {
        let path = Record::path(state);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SelfUpdateError::Record {
                path,
                message: format!("{e}; move it away to start over from the installed agent"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(SelfUpdateError::Io {
                what: "read the slot record",
                path,
                source: e,
            }),
        }
    }

    /// Writes the record atomically and durably.
    pub fn save(&self, state: &Path) -> Result<(), SelfUpdateError> {
        let path = Record::path(state);
        let bytes = serde_json::to_vec_pretty(self).expect("the record serializes");
        write_atomic(&path, &bytes, 0o600).map_err(|source| SelfUpdateError::Io {
            what: "write the slot record",
            path,
            source,
        })
    }

    /// The slot a new binary goes into: never the committed one.
    pub fn inactive(&self) -> Slot {
        match self.active {
            Slot::A => Slot::B,
            Slot::Installed | Slot::B => Slot::A,
        }
    }

    /// Whether `sha256` failed its trial before.
    pub fn is_rejected(&self, sha256: &str) -> bool {
        self.rejected.iter().any(|r| r == sha256)
    }

    /// Records a verified binary installed into `slot` and puts it on
    /// trial (not yet started).
    pub fn begin_trial(&mut self, slot: Slot, info: SlotInfo) {
        self.trial = Some(Trial {
            slot,
            sha256: info.sha256.clone(),
            tries: 0,
            failures: Vec::new(),
        });
        self.slots.insert(slot, info);
    }

    /// Decides what to start, counting a trial start first (the caller
    /// persists the record before starting). A trial whose starts are used
    /// up falls back to the committed agent, recording why.
    pub fn next_start(&mut self, max_tries: u32, now_ms: u64) -> Start {
        if let Some(t) = &mut self.trial {
            if t.tries < max_tries {
                t.tries += 1;
                return Start {
                    slot: t.slot,
                    trial: true,
                };
            }
            let reason = match t.failures.last() {
                Some(last) if t.failures.len() as u32 >= t.tries => {
                    format!("it failed {} start(s): {last}", t.tries)
                }
                Some(last) => format!(
                    "it was started {} time(s) without committing (the device restarted during \
                     its trial; before that: {last})",
                    t.tries
                ),
                None => format!(
                    "it was started {} time(s) without committing (the device restarted during \
                     its trial)",
                    t.tries
                ),
            };
            self.fall_back(reason, now_ms);
        }
        Start {
            slot: self.active,
            trial: false,
        }
    }

    /// One start of the trial agent failed (it exited, or missed its
    /// deadline); the next start retries it or falls back.
    pub fn trial_failed(&mut self, why: String) {
        if let Some(t) = &mut self.trial {
            push_bounded(&mut t.failures, why);
        }
    }

    /// Gives up the trial: its binary is rejected, the committed agent
    /// stays.
    pub fn fall_back(&mut self, reason: String, now_ms: u64) {
        let Some(t) = self.trial.take() else { return };
        if !self.is_rejected(&t.sha256) {
            push_bounded(&mut self.rejected, t.sha256.clone());
        }
        push_bounded(
            &mut self.history,
            Outcome {
                result: Ending::FellBack,
                slot: t.slot,
                sha256: t.sha256,
                reason: format!(
                    "the new agent was given up, {} stays: {reason}",
                    self.active
                ),
                time_ms: now_ms,
                reported: false,
            },
        );
    }

    /// A published build (sha256 `sha256`) is not installed, for `reason`;
    /// the committed agent stays. Recorded once per build and reason (it
    /// is offered again at every refresh): returns whether it was new.
    pub fn refuse(&mut self, sha256: &str, reason: String, now_ms: u64) -> bool {
        let known = self.history.iter().any(|o| {
            o.result == Ending::Refused && o.sha256 == sha256 && o.reason.ends_with(&reason)
        });
        if known {
            return false;
        }
        push_bounded(
            &mut self.history,
            Outcome {
                result: Ending::Refused,
                slot: self.active,
                sha256: sha256.to_string(),
                reason: format!(
                    "the new agent was not installed, {} stays: {reason}",
                    self.active
                ),
                time_ms: now_ms,
                reported: false,
            },
        );
        true
    }

    /// The trial agent in `slot` is healthy: it becomes the committed one.
    pub fn commit(
        &mut self,
        slot: Slot,
        installed_sha256: Option<String>,
        now_ms: u64,
    ) -> Result<(), SelfUpdateError> {
        let t = match &self.trial {
            Some(t) if t.slot == slot => t.clone(),
            _ => return Err(SelfUpdateError::NotOnTrial { slot: slot.name() }),
        };
        let before = self.active;
        self.active = slot;
        self.trial = None;
        self.installed_sha256 = installed_sha256;
        push_bounded(
            &mut self.history,
            Outcome {
                result: Ending::Committed,
                slot,
                sha256: t.sha256,
                reason: format!(
                    "reconnected, reconciled and reported healthy after {} start(s); replaced {before}",
                    t.tries
                ),
                time_ms: now_ms,
                reported: false,
            },
        );
        Ok(())
    }

    /// The installed binary (sha256 `own`) is not the one a slot was
    /// committed over: the operator installed another agent, which runs.
    /// Returns whether anything changed.
    pub fn installed_replaced(&mut self, own: &str, now_ms: u64) -> bool {
        let changed = self.active != Slot::Installed
            && self.installed_sha256.as_deref().is_some_and(|s| s != own);
        if changed {
            let reason = format!(
                "the installed berth-agent changed since slot {} was committed: it runs instead",
                self.active
            );
            self.run_installed(own.to_string(), reason, now_ms);
        }
        changed
    }

    /// Goes back to the installed binary (sha256 `sha`, when known), e.g.
    /// when the committed slot cannot be started.
    pub fn run_installed(&mut self, sha: String, reason: String, now_ms: u64) {
        self.active = Slot::Installed;
        self.trial = None;
        self.installed_sha256 = None;
        push_bounded(
            &mut self.history,
            Outcome {
                result: Ending::Reinstalled,
                slot: Slot::Installed,
                sha256: sha,
                reason,
                time_ms: now_ms,
                reported: false,
            },
        );
    }
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory: fsync, rename, fsync of the directory. The directory is
/// created (0700) if missing.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sha: &str) -> SlotInfo {
        SlotInfo {
            sha256: sha.into(),
            version: None,
            installed_ms: 1,
        }
    }

    #[test]
    fn a_fresh_device_runs_the_installed_agent_and_installs_into_a() {
        let mut r = Record::default();
        assert_eq!(
            r.next_start(2, 0),
            Start {
                slot: Slot::Installed,
                trial: false
            }
        );
        assert_eq!(r.inactive(), Slot::A);
        r.active = Slot::A;
        assert_eq!(r.inactive(), Slot::B);
        r.active = Slot::B;
        assert_eq!(r.inactive(), Slot::A);
    }

    #[test]
    fn each_trial_start_is_counted_and_used_up_starts_fall_back() {
        let mut r = Record::default();
        r.begin_trial(Slot::A, info("new"));
        for n in 1..=2 {
            assert_eq!(
                r.next_start(2, 0),
                Start {
                    slot: Slot::A,
                    trial: true
                }
            );
            assert_eq!(r.trial.as_ref().unwrap().tries, n);
            r.trial_failed(format!("exited with status {n}"));
        }
        assert_eq!(
            r.next_start(2, 7),
            Start {
                slot: Slot::Installed,
                trial: false
            }
        );
        assert!(r.trial.is_none());
        assert!(r.is_rejected("new"));
        let o = r.history.last().unwrap();
        assert_eq!(o.result, Ending::FellBack);
        assert_eq!(o.time_ms, 7);
        assert!(
            o.reason.contains("failed 2 start(s): exited with status 2"),
            "{}",
            o.reason
        );
        assert!(o.reason.contains("installed stays"), "{}", o.reason);
    }

    #[test]
    fn a_start_that_never_reported_back_is_a_restart_during_the_trial() {
        let mut r = Record::default();
        r.begin_trial(Slot::A, info("new"));
        r.next_start(1, 0);
        // Power lost: nothing recorded a failure.
        let s = r.next_start(1, 0);
        assert!(!s.trial);
        assert!(r.history[0].reason.contains("restarted during its trial"));
    }

    #[test]
    fn commit_makes_the_trial_slot_active_and_only_the_trial_slot() {
        let mut r = Record::default();
        r.begin_trial(Slot::A, info("new"));
        r.next_start(2, 0);
        assert!(r.commit(Slot::B, None, 0).is_err());
        r.commit(Slot::A, Some("pkg".into()), 5).unwrap();
        assert_eq!(r.active, Slot::A);
        assert!(r.trial.is_none());
        assert_eq!(r.history.last().unwrap().result, Ending::Committed);
        assert_eq!(
            r.next_start(2, 0),
            Start {
                slot: Slot::A,
                trial: false
            }
        );
        assert_eq!(r.inactive(), Slot::B);
        assert!(r.commit(Slot::A, None, 0).is_err(), "nothing on trial");
        // The same installed binary: nothing changes; another one wins.
        assert!(!r.installed_replaced("pkg", 9));
        assert!(r.installed_replaced("pkg2", 9));
        assert_eq!(r.active, Slot::Installed);
        assert_eq!(r.history.last().unwrap().result, Ending::Reinstalled);
    }

    #[test]
    fn history_and_rejections_stay_bounded() {
        let mut r = Record::default();
        for i in 0..40 {
            r.begin_trial(Slot::A, info(&format!("sha{i}")));
            r.fall_back("broken".into(), i);
        }
        assert_eq!(r.history.len(), KEEP);
        assert_eq!(r.rejected.len(), KEEP);
        assert!(r.is_rejected("sha39") && !r.is_rejected("sha0"));
    }

    #[test]
    fn the_record_survives_a_round_trip_and_a_damaged_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Record::load(d.path()).unwrap(), Record::default());
        let mut r = Record::default();
        r.begin_trial(Slot::B, info("x"));
        r.save(d.path()).unwrap();
        assert_eq!(Record::load(d.path()).unwrap(), r);
        std::fs::write(Record::path(d.path()), b"{").unwrap();
        let e = Record::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("slots.json") && e.contains("move it away"),
            "{e}"
        );
    }

    #[test]
    fn a_refused_build_is_recorded_once_per_reason_and_changes_no_slot() {
        let mut r = Record {
            active: Slot::A,
            ..Record::default()
        };
        let before = (r.active, r.slots.clone(), r.trial.clone());
        assert!(r.refuse(
            "old",
            "agent 0.1.0 is older than the running agent 0.2.0".into(),
            5
        ));
        assert!(!r.refuse(
            "old",
            "agent 0.1.0 is older than the running agent 0.2.0".into(),
            6
        ));
        assert_eq!(r.history.len(), 1);
        let o = &r.history[0];
        assert_eq!(
            (o.result, o.slot, o.time_ms, o.reported),
            (Ending::Refused, Slot::A, 5, false)
        );
        assert_eq!(
            o.reason,
            "the new agent was not installed, a stays: agent 0.1.0 is older than the running agent 0.2.0"
        );
        assert_eq!(before, (r.active, r.slots.clone(), r.trial.clone()));
        // Against another running version, it is news again.
        assert!(r.refuse(
            "old",
            "agent 0.1.0 is older than the running agent 0.3.0".into(),
            7
        ));
        assert!(!r.is_rejected("old"));
    }
}
