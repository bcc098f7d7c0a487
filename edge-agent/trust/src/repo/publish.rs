//! Signing and publishing: new versions of changed targets roles, then snapshot and
//! timestamp; root rotation; the timestamp refresh the online key runs on a schedule.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{expiry, sign::sign, Repo, RepoError, RoleSpec, SignedRecord};
use crate::keys::{PrivateKey, PublicKey};
use crate::metadata::{Envelope, RoleKeys, Root, Snapshot};
use crate::names;
use crate::store::write_atomic;
use crate::verify::verify_role;

/// Expiry periods (days from now) of newly signed metadata.
#[derive(Debug, Clone, Copy)]
pub struct Expiries {
    pub targets: i64,
    pub snapshot: i64,
    pub timestamp: i64,
}

impl Default for Expiries {
    fn default() -> Self {
        Expiries {
            targets: 90,
            snapshot: 7,
            timestamp: 1,
        }
    }
}

/// The signers among `available` authorized for a role, at least `threshold` of them.
fn select<'k>(
    role: &str,
    rk: &RoleKeys,
    available: &'k [PrivateKey],
) -> Result<Vec<&'k PrivateKey>, RepoError> {
    let chosen: Vec<&PrivateKey> = available
        .iter()
        .filter(|k| rk.keyids.contains(&k.public().keyid()))
        .collect();
    if (chosen.len() as u64) < rk.threshold {
        return Err(RepoError::NotEnoughKeys {
            role: role.into(),
            have: chosen.len(),
            threshold: rk.threshold,
            keyids: rk.keyids.join(", "),
        });
    }
    Ok(chosen)
}

fn record(role: &str, signed: &Value, signers: &[&PrivateKey]) -> SignedRecord {
    SignedRecord {
        role: role.into(),
        version: signed["version"].as_u64().unwrap_or(0),
        keyids: signers.iter().map(|k| k.public().keyid()).collect(),
        expires: signed["expires"].as_str().unwrap_or("").into(),
    }
}

fn write_versioned(repo: &Repo, role: &str, version: u64, bytes: &[u8]) -> Result<(), RepoError> {
    let dir = repo.metadata_dir();
    std::fs::create_dir_all(&dir).map_err(|e| super::io(&dir, e))?;
    let stem = names::role_file_stem(role)?;
    write_atomic(&dir.join(format!("{version}.{stem}.json")), bytes)?;
    write_atomic(&dir.join(format!("{stem}.json")), bytes)?;
    Ok(())
}

/// Signs and writes a root; a rotation (`old` given) is signed by a threshold of the
/// old root keys as well as of the new.
pub(super) fn write_root(
    repo: &Repo,
    signed: &Value,
    signers: &[PrivateKey],
    old: Option<&Root>,
) -> Result<SignedRecord, RepoError> {
    let new: Root = serde_json::from_value(signed.clone()).map_err(|e| RepoError::Invalid {
        path: "root".into(),
        reason: e.to_string(),
    })?;
    let new_rk = new.role("root").cloned().unwrap_or(RoleKeys {
        keyids: vec![],
        threshold: 1,
    });
    let mut chosen = select("root (new keys)", &new_rk, signers)?;
    if let Some(old) = old {
        let old_rk = old.role("root").cloned().unwrap_or(RoleKeys {
            keyids: vec![],
            threshold: 1,
        });
        chosen.extend(select("root (previous keys)", &old_rk, signers)?);
    }
    let bytes = sign(signed, &chosen)?;
    let env = Envelope::parse("root", &bytes)?;
    let typed: Root = env.typed("root")?;
    let check = |keys: &BTreeMap<String, PublicKey>, rk: &RoleKeys| {
        verify_role("root", &env, keys, rk).map_err(|e| RepoError::Invalid {
            path: "root".into(),
            reason: e.to_string(),
        })
    };
    check(&typed.keys, &new_rk)?;
    if let Some(old) = old {
        check(&old.keys, old.role("root").unwrap_or(&new_rk))?;
    }
    write_versioned(repo, "root", typed.common.version, &bytes)?;
    Ok(record("root", signed, &chosen))
}

fn strip(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("version");
        o.remove("expires");
        o.remove("x-berth-role");
    }
    v
}

/// Signs every staged targets role that changed since it was last published (new
/// version), then a new snapshot and timestamp.
pub fn publish(
    repo: &Repo,
    signers: &[PrivateKey],
    days: Expiries,
) -> Result<Vec<SignedRecord>, RepoError> {
    let (root, _) = repo.root()?;
    let roles = repo.staged_roles()?;
    let mut authority: BTreeMap<String, (BTreeMap<String, PublicKey>, RoleKeys)> = BTreeMap::new();
    let targets_rk = root
        .role("targets")
        .cloned()
        .ok_or_else(|| RepoError::UnknownRole("targets".into()))?;
    authority.insert("targets".into(), (root.keys.clone(), targets_rk));
    for role in &roles {
        let staged = repo.staged_role(role)?;
        if let Some(d) = staged.get("delegations").filter(|d| !d.is_null()) {
            let keys: BTreeMap<String, PublicKey> = serde_json::from_value(d["keys"].clone())
                .map_err(|e| RepoError::Invalid {
                    path: format!("staged {role}"),
                    reason: format!("delegations.keys: {e}"),
                })?;
            for r in d["roles"].as_array().into_iter().flatten() {
                let rk: RoleKeys =
                    serde_json::from_value(r.clone()).map_err(|e| RepoError::Invalid {
                        path: format!("staged {role}"),
                        reason: format!("delegated role: {e}"),
                    })?;
                let name = r["name"].as_str().unwrap_or_default().to_string();
                authority.insert(name, (keys.clone(), rk));
            }
        }
    }
    let old_snapshot = match repo.published("snapshot")? {
        Some(env) => Some(env.typed::<Snapshot>("snapshot")?),
        None => None,
    };
    let mut meta: BTreeMap<String, Value> = old_snapshot
        .as_ref()
        .map(|s| {
            s.meta
                .iter()
                .map(|(k, m)| (k.clone(), json!({"version": m.version})))
                .collect()
        })
        .unwrap_or_default();
    let mut records = Vec::new();
    for role in &roles {
        let mut staged = repo.staged_role(role)?;
        let published = repo.published(role)?;
        if published
            .as_ref()
            .is_some_and(|p| strip(&p.signed) == strip(&staged))
        {
            continue;
        }
        let version = published
            .as_ref()
            .and_then(|p| p.signed["version"].as_u64())
            .unwrap_or(0)
            + 1;
        staged = strip(&staged);
        staged["version"] = json!(version);
        staged["expires"] = json!(expiry(days.targets));
        let (_, rk) = authority
            .get(role)
            .ok_or_else(|| RepoError::UnknownRole(role.clone()))?;
        let chosen = select(role, rk, signers)?;
        let bytes = sign(&staged, &chosen)?;
        write_versioned(repo, role, version, &bytes)?;
        meta.insert(format!("{role}.json"), json!({"version": version}));
        records.push(record(role, &staged, &chosen));
    }
    if records.is_empty() && old_snapshot.is_some() {
        return Ok(records);
    }
    let version = old_snapshot.map_or(0, |s| s.common.version) + 1;
    let snapshot = json!({
        "_type": "snapshot", "spec_version": super::SPEC_VERSION, "version": version,
        "expires": expiry(days.snapshot), "meta": meta,
    });
    let rk = root
        .role("snapshot")
        .cloned()
        .ok_or_else(|| RepoError::UnknownRole("snapshot".into()))?;
    let chosen = select("snapshot", &rk, signers)?;
    let bytes = sign(&snapshot, &chosen)?;
    write_versioned(repo, "snapshot", version, &bytes)?;
    records.push(record("snapshot", &snapshot, &chosen));
    records.push(write_timestamp(
        repo,
        &root,
        &bytes,
        version,
        signers,
        days.timestamp,
    )?);
    Ok(records)
}

fn write_timestamp(
    repo: &Repo,
    root: &Root,
    snapshot: &[u8],
    snapshot_version: u64,
    signers: &[PrivateKey],
    days: i64,
) -> Result<SignedRecord, RepoError> {
    let old = repo
        .published("timestamp")?
        .and_then(|e| e.signed["version"].as_u64())
        .unwrap_or(0);
    let ts = json!({
        "_type": "timestamp", "spec_version": super::SPEC_VERSION, "version": old + 1,
        "expires": expiry(days),
        "meta": {"snapshot.json": {
            "version": snapshot_version, "length": snapshot.len(),
            "hashes": {"sha256": hex::encode(Sha256::digest(snapshot))},
        }},
    });
    let rk = root
        .role("timestamp")
        .cloned()
        .ok_or_else(|| RepoError::UnknownRole("timestamp".into()))?;
    let chosen = select("timestamp", &rk, signers)?;
    let bytes = sign(&ts, &chosen)?;
    let dir = repo.metadata_dir();
    write_atomic(&dir.join("timestamp.json"), &bytes)?;
    Ok(record("timestamp", &ts, &chosen))
}

/// A new timestamp (version + 1, new expiry) over the current snapshot.
pub fn refresh_timestamp(
    repo: &Repo,
    signers: &[PrivateKey],
    days: i64,
) -> Result<SignedRecord, RepoError> {
    let (root, _) = repo.root()?;
    let path = repo.metadata_dir().join("snapshot.json");
    let bytes = std::fs::read(&path).map_err(|e| super::io(&path, e))?;
    let version = Envelope::parse("snapshot", &bytes)?
        .typed::<Snapshot>("snapshot")?
        .common
        .version;
    write_timestamp(repo, &root, &bytes, version, signers, days)
}

/// Root version N+1 with the given roles' keys replaced, signed by a threshold of the
/// old and of the new root keys. After rotating timestamp, snapshot or targets keys,
/// publish again so those roles are signed by the new keys.
pub fn rotate_root(
    repo: &Repo,
    changes: &BTreeMap<String, RoleSpec>,
    signers: &[PrivateKey],
    days: i64,
) -> Result<SignedRecord, RepoError> {
    let (root, env) = repo.root()?;
    let mut signed = env.signed.clone();
    for (name, spec) in changes {
        if !["root", "timestamp", "snapshot", "targets"].contains(&name.as_str()) {
            return Err(RepoError::UnknownRole(name.clone()));
        }
        for k in &spec.keys {
            signed["keys"][k.keyid()] = serde_json::to_value(k).unwrap_or_default();
        }
        signed["roles"][name] = serde_json::to_value(spec.role_keys()).unwrap_or_default();
    }
    let used: Vec<String> = signed["roles"]
        .as_object()
        .into_iter()
        .flat_map(|r| r.values())
        .flat_map(|r| r["keyids"].as_array().cloned().unwrap_or_default())
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    if let Some(keys) = signed["keys"].as_object_mut() {
        keys.retain(|id, _| used.contains(id));
    }
    signed["version"] = json!(root.common.version + 1);
    signed["expires"] = json!(expiry(days));
    write_root(repo, &signed, signers, Some(&root))
}
