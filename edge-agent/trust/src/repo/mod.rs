//! The signer: a TUF repository on disk that `berth repo …` builds, signs and
//! publishes. Layout of a repository directory:
//!
//! - `metadata/` — what is served: `N.root.json` for every root version, and for the
//!   other roles both `N.<role>.json` (consistent snapshots) and `<role>.json`;
//! - `targets/` — target files as `<dir>/<sha256>.<name>` (consistent snapshots);
//! - `staged/` — the unsigned `signed` part of each targets role being edited;
//!   `publish` signs the changed ones with new versions, then snapshot and timestamp.

mod publish;
pub mod sign;

pub use publish::{publish, refresh_timestamp, rotate_root, Expiries};

/// Expiry periods in days for `publish`.
pub fn publish_expiries(targets: i64, snapshot: i64, timestamp: i64) -> Expiries {
    Expiries {
        targets,
        snapshot,
        timestamp,
    }
}

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::keys::{PrivateKey, PublicKey};
use crate::metadata::{format_time, Envelope, MetadataError, RoleKeys, Root};
use crate::names::{self, NameError};
use crate::store::{write_atomic, StoreError};

/// The TUF specification version Berth writes.
pub const SPEC_VERSION: &str = "1.0.31";

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0}")]
    Canonical(#[from] crate::canonical::CanonicalError),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "{role}: {have} of the given keys may sign it, threshold is {threshold}; \
         pass more private keys among: {keyids}"
    )]
    NotEnoughKeys {
        role: String,
        have: usize,
        threshold: u64,
        keyids: String,
    },
    #[error("{0} already exists: choose an empty directory")]
    Exists(String),
    #[error("role {0} is not staged: delegate to it first (berth repo delegate)")]
    UnknownRole(String),
}

/// What was signed, for the operator's record.
#[derive(Debug, Clone)]
pub struct SignedRecord {
    pub role: String,
    pub version: u64,
    pub keyids: Vec<String>,
    pub expires: String,
}

impl std::fmt::Display for SignedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keyids.iter().map(|k| &k[..k.len().min(12)]).collect();
        write!(
            f,
            "signed {} v{} with {} key(s) [{}], expires {}",
            self.role,
            self.version,
            self.keyids.len(),
            ids.join(", "),
            self.expires
        )
    }
}

/// A repository directory.
#[derive(Debug, Clone)]
pub struct Repo {
    pub dir: PathBuf,
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> RepoError {
    RepoError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn expiry(days: i64) -> String {
    format_time(Utc::now() + Duration::days(days))
}

/// Role keys and threshold, as initial or replacement key sets.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub keys: Vec<PublicKey>,
    pub threshold: u64,
}

impl RoleSpec {
    fn role_keys(&self) -> RoleKeys {
        RoleKeys {
            keyids: self.keys.iter().map(PublicKey::keyid).collect(),
            threshold: self.threshold,
        }
    }
}

impl Repo {
    pub fn open(dir: &Path) -> Repo {
        Repo {
            dir: dir.to_path_buf(),
        }
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    fn staged(&self, role: &str) -> Result<PathBuf, RepoError> {
        Ok(self
            .dir
            .join("staged")
            .join(format!("{}.json", names::role_file_stem(role)?)))
    }

    pub(crate) fn read_json(&self, path: &Path) -> Result<Value, RepoError> {
        let bytes = fs::read(path).map_err(|e| io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| RepoError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn write_json(&self, path: &Path, v: &Value) -> Result<(), RepoError> {
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).map_err(|e| io(p, e))?;
        }
        let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
        bytes.push(b'\n');
        write_atomic(path, &bytes)?;
        Ok(())
    }

    /// The staged `signed` object of a targets role.
    pub fn staged_role(&self, role: &str) -> Result<Value, RepoError> {
        let p = self.staged(role)?;
        if !p.exists() {
            return Err(RepoError::UnknownRole(role.into()));
        }
        self.read_json(&p)
    }

    pub(crate) fn stage(&self, role: &str, v: &Value) -> Result<(), RepoError> {
        self.write_json(&self.staged(role)?, v)
    }

    /// Names of all staged targets roles.
    pub fn staged_roles(&self) -> Result<Vec<String>, RepoError> {
        let d = self.dir.join("staged");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(|e| io(&d, e))? {
            let e = e.map_err(|e| io(&d, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".json") {
                if !stem.starts_with('.') {
                    let v = self.read_json(&e.path())?;
                    let role = v["x-berth-role"].as_str().unwrap_or(stem).to_string();
                    out.push(role);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The published envelope of `role` (`metadata/<role>.json`), if any.
    pub fn published(&self, role: &str) -> Result<Option<Envelope>, RepoError> {
        let p = self
            .metadata_dir()
            .join(format!("{}.json", names::role_file_stem(role)?));
        match fs::read(&p) {
            Ok(b) => Ok(Some(Envelope::parse(role, &b)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    /// The current root.
    pub fn root(&self) -> Result<(Root, Envelope), RepoError> {
        let env = self.published("root")?.ok_or_else(|| RepoError::Invalid {
            path: self.metadata_dir().join("root.json").display().to_string(),
            reason: "no root: run berth repo init".into(),
        })?;
        Ok((env.typed("root")?, env))
    }

    /// Creates a repository: root v1 signed by `root_signers` (a threshold of
    /// `roles["root"]`), and an empty staged top-level targets role.
    pub fn init(
        dir: &Path,
        roles: &BTreeMap<String, RoleSpec>,
        root_signers: &[PrivateKey],
        root_expires_days: i64,
    ) -> Result<(Repo, SignedRecord), RepoError> {
        if dir.join("metadata").join("root.json").exists() {
            return Err(RepoError::Exists(dir.display().to_string()));
        }
        let repo = Repo::open(dir);
        let mut keys = BTreeMap::new();
        let mut role_map = BTreeMap::new();
        for name in ["root", "timestamp", "snapshot", "targets"] {
            let spec = roles.get(name).ok_or_else(|| RepoError::Invalid {
                path: dir.display().to_string(),
                reason: format!("no keys given for the {name} role"),
            })?;
            for k in &spec.keys {
                keys.insert(k.keyid(), k.clone());
            }
            role_map.insert(name.to_string(), spec.role_keys());
        }
        let signed = json!({
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": 1,
            "expires": expiry(root_expires_days),
            "consistent_snapshot": true,
            "keys": keys,
            "roles": role_map,
        });
        let rec = publish::write_root(&repo, &signed, root_signers, None)?;
        repo.stage(
            "targets",
            &json!({"_type": "targets", "spec_version": SPEC_VERSION, "version": 0,
                    "expires": expiry(90), "targets": {}}),
        )?;
        Ok((repo, rec))
    }

    /// Adds (or replaces) target `path` with the contents of `file`, in targets `role`.
    pub fn add_target(
        &self,
        role: &str,
        path: &str,
        file: &Path,
        custom: Option<Value>,
    ) -> Result<String, RepoError> {
        names::check_target_path(path)?;
        let bytes = fs::read(file).map_err(|e| io(file, e))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let mut staged = self.staged_role(role)?;
        let mut entry = json!({"length": bytes.len(), "hashes": {"sha256": sha}});
        if let Some(c) = custom {
            entry["custom"] = c;
        }
        staged["targets"][path] = entry;
        let dest = match path.rsplit_once('/') {
            Some((d, base)) => self.targets_dir().join(d).join(format!("{sha}.{base}")),
            None => self.targets_dir().join(format!("{sha}.{path}")),
        };
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).map_err(|e| io(p, e))?;
        }
        write_atomic(&dest, &bytes)?;
        self.stage(role, &staged)?;
        Ok(sha)
    }

    /// Delegates `paths` from `from` to a new (or updated) role `to`.
    pub fn delegate(
        &self,
        from: &str,
        to: &str,
        spec: &RoleSpec,
        paths: &[String],
        terminating: bool,
    ) -> Result<(), RepoError> {
        names::role_file_stem(to)?;
        let mut parent = self.staged_role(from)?;
        if parent.get("delegations").is_none_or(Value::is_null) {
            parent["delegations"] = json!({"keys": {}, "roles": []});
        }
        for k in &spec.keys {
            parent["delegations"]["keys"][k.keyid()] = serde_json::to_value(k).unwrap_or_default();
        }
        let rk = spec.role_keys();
        let entry = json!({
            "name": to, "keyids": rk.keyids, "threshold": rk.threshold,
            "terminating": terminating, "paths": paths,
        });
        let roles = parent["delegations"]["roles"]
            .as_array_mut()
            .ok_or_else(|| RepoError::Invalid {
                path: from.into(),
                reason: "delegations.roles is not a list".into(),
            })?;
        match roles.iter_mut().find(|r| r["name"] == to) {
            Some(r) => *r = entry,
            None => roles.push(entry),
        }
        self.stage(from, &parent)?;
        if self.staged_role(to).is_err() {
            self.stage(
                to,
                &json!({"_type": "targets", "spec_version": SPEC_VERSION, "version": 0,
                        "expires": expiry(90), "targets": {}, "x-berth-role": to}),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
