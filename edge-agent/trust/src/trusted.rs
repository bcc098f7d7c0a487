//! The trusted metadata set: the TUF client workflow's checks as a pure state machine
//! (no I/O). Each `update_*` verifies a candidate file completely and changes the set
//! only when every check passes, so a rejection leaves the trusted state as it was.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::metadata::{
    check_hashes, Envelope, HashError, MetadataError, Role, RoleKeys, Root, Snapshot, Targets,
    Timestamp,
};
use crate::verify::{verify_role, VerifyError};

/// Why a metadata file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(
        "{role}: version {new} is older than the trusted version {trusted}: rollback refused; \
         the repository or a mirror serves stale metadata"
    )]
    Rollback {
        role: String,
        new: u64,
        trusted: u64,
    },
    #[error("root: the next root must be version {expected}, the file holds version {got}")]
    RootVersion { expected: u64, got: u64 },
    #[error(
        "{role} version {version} expired at {expires} (reference time {now}, the later of the \
         clock and the persisted time floor); the repository must re-sign it"
    )]
    Expired {
        role: String,
        version: u64,
        expires: String,
        now: String,
    },
    #[error("{role}: version {got} differs from version {expected} listed in {by}: mix-and-match refused")]
    VersionMismatch {
        role: String,
        got: u64,
        expected: u64,
        by: String,
    },
    #[error("{role}: not listed in snapshot meta, so it cannot be trusted")]
    NotListed { role: String },
    #[error("{role}: {needed} must be loaded first")]
    Order { role: String, needed: String },
    #[error("{role}: version {version} is the version already trusted")]
    EqualVersion { role: String, version: u64 },
    #[error("delegated role {role}: {delegator} does not delegate to it")]
    NotDelegated { role: String, delegator: String },
}

/// A verified file: the exact bytes and their typed view.
#[derive(Clone, Debug)]
pub struct Verified<T> {
    pub env: Envelope,
    pub meta: T,
}

/// The metadata trusted so far in one update, and the reference time for expiry.
#[derive(Debug)]
pub struct TrustedSet {
    root: Verified<Root>,
    timestamp: Option<Verified<Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: BTreeMap<String, Verified<Targets>>,
    now: DateTime<Utc>,
}

fn parse<T: Role>(role: &str, bytes: &[u8]) -> Result<Verified<T>, TrustError> {
    let env = Envelope::parse(role, bytes)?;
    let meta = env.typed::<T>(role)?;
    Ok(Verified { env, meta })
}

fn expired<T: Role>(role: &str, v: &Verified<T>, now: DateTime<Utc>) -> Result<(), TrustError> {
    let c = v.meta.common();
    if c.expires_at(role)? <= now {
        return Err(TrustError::Expired {
            role: role.into(),
            version: c.version,
            expires: c.expires.clone(),
            now: crate::metadata::format_time(now),
        });
    }
    Ok(())
}

impl TrustedSet {
    /// Starts from a trusted root (self-signed by a threshold of its own root keys;
    /// expiry is checked after the root update, not here).
    pub fn new(root: &[u8], now: DateTime<Utc>) -> Result<TrustedSet, TrustError> {
        let root: Verified<Root> = parse("root", root)?;
        let rk = root_role(&root.meta, "root")?;
        verify_role("root", &root.env, &root.meta.keys, rk)?;
        Ok(TrustedSet {
            root,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
            now,
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }
    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }
    pub fn timestamp(&self) -> Option<&Verified<Timestamp>> {
        self.timestamp.as_ref()
    }
    pub fn snapshot(&self) -> Option<&Verified<Snapshot>> {
        self.snapshot.as_ref()
    }
    pub fn targets(&self, role: &str) -> Option<&Verified<Targets>> {
        self.targets.get(role)
    }

    /// Accepts root version N+1: signed by a threshold of the trusted root's root keys
    /// and by a threshold of its own.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        if self.timestamp.is_some() {
            return Err(TrustError::Order {
                role: "root".into(),
                needed: "the root update (before timestamp)".into(),
            });
        }
        let new: Verified<Root> = parse("root", bytes)?;
        let old = &self.root.meta;
        verify_role(
            "root (by the trusted root's keys)",
            &new.env,
            &old.keys,
            root_role(old, "root")?,
        )?;
        let expected = old.common.version + 1;
        if new.meta.common.version != expected {
            return Err(TrustError::RootVersion {
                expected,
                got: new.meta.common.version,
            });
        }
        verify_role(
            "root (by its own keys)",
            &new.env,
            &new.meta.keys,
            root_role(&new.meta, "root")?,
        )?;
        self.root = new;
        Ok(())
    }

    /// Fails when the trusted root has expired (checked once the root chain is done).
    pub fn check_root_expiry(&self) -> Result<(), TrustError> {
        expired("root", &self.root, self.now)
    }

    /// Loads the locally stored timestamp as the reference for rollback checks (it may
    /// be expired; expiry is checked on the timestamp that the update ends with).
    pub fn load_local_timestamp(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        let ts = self.verify_timestamp(bytes)?;
        self.timestamp = Some(ts);
        Ok(())
    }

    /// Accepts a newly fetched timestamp.
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        let new = self.verify_timestamp(bytes)?;
        if let Some(old) = &self.timestamp {
            let (nv, ov) = (new.meta.common.version, old.meta.common.version);
            if nv < ov {
                return Err(TrustError::Rollback {
                    role: "timestamp".into(),
                    new: nv,
                    trusted: ov,
                });
            }
            if nv == ov {
                return Err(TrustError::EqualVersion {
                    role: "timestamp".into(),
                    version: nv,
                });
            }
            let (ns, os) = (
                new.meta.snapshot_meta().version,
                old.meta.snapshot_meta().version,
            );
            if ns < os {
                return Err(TrustError::Rollback {
                    role: "snapshot (as listed in timestamp)".into(),
                    new: ns,
                    trusted: os,
                });
            }
        }
        expired("timestamp", &new, self.now)?;
        self.timestamp = Some(new);
        Ok(())
    }

    fn verify_timestamp(&self, bytes: &[u8]) -> Result<Verified<Timestamp>, TrustError> {
        if self.snapshot.is_some() {
            return Err(TrustError::Order {
                role: "timestamp".into(),
                needed: "timestamp (before snapshot)".into(),
            });
        }
        let ts: Verified<Timestamp> = parse("timestamp", bytes)?;
        let root = &self.root.meta;
        verify_role(
            "timestamp",
            &ts.env,
            &root.keys,
            root_role(root, "timestamp")?,
        )?;
        Ok(ts)
    }

    /// Accepts a snapshot. A `local` one (from the state store) skips the hash check
    /// against timestamp meta and is kept even when it is not the final one, as the
    /// reference for rollback checks of the next; the error then says a fetch is needed.
    pub fn update_snapshot(&mut self, bytes: &[u8], local: bool) -> Result<(), TrustError> {
        let ts = self.timestamp.as_ref().ok_or_else(|| TrustError::Order {
            role: "snapshot".into(),
            needed: "timestamp".into(),
        })?;
        if !self.targets.is_empty() {
            return Err(TrustError::Order {
                role: "snapshot".into(),
                needed: "snapshot (before targets)".into(),
            });
        }
        expired("timestamp", ts, self.now)?;
        let meta = ts.meta.snapshot_meta();
        if !local {
            check_hashes("snapshot.json", bytes, meta.length, meta.hashes.as_ref())?;
        }
        let new: Verified<Snapshot> = parse("snapshot", bytes)?;
        let root = &self.root.meta;
        verify_role(
            "snapshot",
            &new.env,
            &root.keys,
            root_role(root, "snapshot")?,
        )?;
        if let Some(old) = &self.snapshot {
            for (name, om) in &old.meta.meta {
                match new.meta.meta.get(name) {
                    None => {
                        return Err(TrustError::Rollback {
                            role: format!("{name} (removed from snapshot)"),
                            new: 0,
                            trusted: om.version,
                        })
                    }
                    Some(nm) if nm.version < om.version => {
                        return Err(TrustError::Rollback {
                            role: format!("{name} (as listed in snapshot)"),
                            new: nm.version,
                            trusted: om.version,
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        if local {
            self.snapshot = Some(new);
            return self.check_final_snapshot();
        }
        let expected = meta.version;
        check_snapshot_final(&new, expected, self.now)?;
        self.snapshot = Some(new);
        Ok(())
    }

    fn check_final_snapshot(&self) -> Result<(), TrustError> {
        let (Some(ts), Some(sn)) = (&self.timestamp, &self.snapshot) else {
            return Err(TrustError::Order {
                role: "targets".into(),
                needed: "snapshot".into(),
            });
        };
        check_snapshot_final(sn, ts.meta.snapshot_meta().version, self.now)
    }

    /// Accepts `targets` (delegator `root`) or a delegated targets role.
    pub fn update_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<(), TrustError> {
        self.check_final_snapshot()?;
        let sn = self
            .snapshot
            .as_ref()
            .map(|s| &s.meta)
            .ok_or_else(|| TrustError::Order {
                role: role.into(),
                needed: "snapshot".into(),
            })?;
        let file = format!("{role}.json");
        let meta = sn
            .meta
            .get(&file)
            .ok_or_else(|| TrustError::NotListed { role: role.into() })?;
        check_hashes(&file, bytes, meta.length, meta.hashes.as_ref())?;
        let new: Verified<Targets> = parse(role, bytes)?;
        if delegator == "root" {
            let root = &self.root.meta;
            verify_role(role, &new.env, &root.keys, root_role(root, "targets")?)?;
        } else {
            let parent = self
                .targets
                .get(delegator)
                .ok_or_else(|| TrustError::Order {
                    role: role.into(),
                    needed: format!("its delegator {delegator}"),
                })?;
            let not_delegated = || TrustError::NotDelegated {
                role: role.into(),
                delegator: delegator.into(),
            };
            let d = parent.meta.delegations.as_ref().ok_or_else(not_delegated)?;
            let rk = d.role_keys(role).ok_or_else(not_delegated)?;
            verify_role(role, &new.env, &d.keys, &rk)?;
        }
        if new.meta.common.version != meta.version {
            return Err(TrustError::VersionMismatch {
                role: role.into(),
                got: new.meta.common.version,
                expected: meta.version,
                by: "snapshot".into(),
            });
        }
        expired(role, &new, self.now)?;
        self.targets.insert(role.to_string(), new);
        Ok(())
    }
}

fn check_snapshot_final(
    sn: &Verified<Snapshot>,
    expected: u64,
    now: DateTime<Utc>,
) -> Result<(), TrustError> {
    expired("snapshot", sn, now)?;
    if sn.meta.common.version != expected {
        return Err(TrustError::VersionMismatch {
            role: "snapshot".into(),
            got: sn.meta.common.version,
            expected,
            by: "timestamp".into(),
        });
    }
    Ok(())
}

fn root_role<'a>(root: &'a Root, name: &str) -> Result<&'a RoleKeys, TrustError> {
    root.role(name).ok_or_else(|| {
        TrustError::Metadata(MetadataError::Invalid {
            role: "root".into(),
            reason: format!("no {name} role defined"),
        })
    })
}

#[cfg(test)]
#[path = "trusted_tests.rs"]
mod tests;
