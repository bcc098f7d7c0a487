//! The TUF 1.0 metadata model: the signed envelope and the four top-level roles plus
//! delegated targets. Parsing keeps the exact bytes and the `signed` value, so unknown
//! fields stay covered by the signature; the typed structs are views for the checks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::canonical;
use crate::keys::PublicKey;

/// Why a metadata file could not be parsed or does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(
        "{role}: not a JSON signed envelope: {reason}; the file is corrupt or not TUF metadata"
    )]
    Envelope { role: String, reason: String },
    #[error("{role}: signed part has no canonical form")]
    Canonical {
        role: String,
        #[source]
        source: canonical::CanonicalError,
    },
    #[error("{role}: {reason}")]
    Invalid { role: String, reason: String },
    #[error("{role}: expected _type {expected:?}, found {found:?}")]
    WrongType {
        role: String,
        expected: String,
        found: String,
    },
    #[error("{role}: unsupported spec_version {version:?}: this client implements TUF 1.x")]
    SpecVersion { role: String, version: String },
    #[error("{role}: expires {value:?} is not an RFC 3339 UTC time like 2030-01-01T00:00:00Z")]
    Expires { role: String, value: String },
}

/// One signature of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

/// A parsed metadata file: the exact bytes, the `signed` value and its canonical bytes.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub raw: Vec<u8>,
    pub signed: Value,
    pub canonical: Vec<u8>,
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Parses `{"signed": …, "signatures": […]}`; `role` names the file in errors.
    pub fn parse(role: &str, raw: &[u8]) -> Result<Envelope, MetadataError> {
        let env = |reason: String| MetadataError::Envelope {
            role: role.to_string(),
            reason,
        };
        let mut v: Value = serde_json::from_slice(raw).map_err(|e| env(e.to_string()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| env("not an object".into()))?;
        let signed = obj
            .remove("signed")
            .filter(Value::is_object)
            .ok_or_else(|| env("no \"signed\" object".into()))?;
        let signatures = obj
            .remove("signatures")
            .ok_or_else(|| env("no \"signatures\" list".into()))?;
        let signatures: Vec<Signature> =
            serde_json::from_value(signatures).map_err(|e| env(format!("signatures: {e}")))?;
        let canonical = canonical::encode(&signed).map_err(|source| MetadataError::Canonical {
            role: role.to_string(),
            source,
        })?;
        Ok(Envelope {
            raw: raw.to_vec(),
            signed,
            canonical,
            signatures,
        })
    }

    /// The typed view of the signed part, checking `_type` and `spec_version`.
    pub fn typed<T: Role>(&self, role: &str) -> Result<T, MetadataError> {
        let found = self.signed["_type"].as_str().unwrap_or("").to_string();
        if found != T::TYPE {
            return Err(MetadataError::WrongType {
                role: role.into(),
                expected: T::TYPE.into(),
                found,
            });
        }
        let t: T =
            serde_json::from_value(self.signed.clone()).map_err(|e| MetadataError::Invalid {
                role: role.into(),
                reason: e.to_string(),
            })?;
        let spec = t.common().spec_version.clone();
        if spec.split('.').next() != Some("1") {
            return Err(MetadataError::SpecVersion {
                role: role.into(),
                version: spec,
            });
        }
        t.common().expires_at(role)?;
        t.validate(role)?;
        Ok(t)
    }
}

/// Fields every role has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Common {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
}

impl Common {
    /// `expires` as a time.
    pub fn expires_at(&self, role: &str) -> Result<DateTime<Utc>, MetadataError> {
        parse_time(&self.expires).ok_or_else(|| MetadataError::Expires {
            role: role.into(),
            value: self.expires.clone(),
        })
    }
}

/// Parses the `YYYY-MM-DDTHH:MM:SSZ` form TUF metadata uses.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if !s.ends_with('Z') {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats a time the way TUF metadata does.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A role type: its `_type` and its own validity rules.
pub trait Role: serde::de::DeserializeOwned {
    const TYPE: &'static str;
    fn common(&self) -> &Common;
    fn validate(&self, _role: &str) -> Result<(), MetadataError> {
        Ok(())
    }
}

/// Key IDs and threshold of a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u64,
}

/// `root.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Root {
    #[serde(flatten)]
    pub common: Common,
    pub consistent_snapshot: Option<bool>,
    pub keys: BTreeMap<String, PublicKey>,
    pub roles: BTreeMap<String, RoleKeys>,
}

impl Role for Root {
    const TYPE: &'static str = "root";
    fn common(&self) -> &Common {
        &self.common
    }
    fn validate(&self, role: &str) -> Result<(), MetadataError> {
        for name in ["root", "timestamp", "snapshot", "targets"] {
            let r = self.roles.get(name).ok_or_else(|| MetadataError::Invalid {
                role: role.into(),
                reason: format!("no {name} role defined"),
            })?;
            check_threshold(role, name, r)?;
        }
        Ok(())
    }
}

impl Root {
    /// The keys and threshold of a top-level role.
    pub fn role(&self, name: &str) -> Option<&RoleKeys> {
        self.roles.get(name)
    }
}

fn check_threshold(role: &str, name: &str, r: &RoleKeys) -> Result<(), MetadataError> {
    if r.threshold < 1 {
        return Err(MetadataError::Invalid {
            role: role.into(),
            reason: format!(
                "role {name} has threshold {} (must be at least 1)",
                r.threshold
            ),
        });
    }
    Ok(())
}

/// An entry of timestamp or snapshot `meta`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// `timestamp.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(flatten)]
    pub common: Common,
    pub meta: BTreeMap<String, MetaFile>,
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";
    fn common(&self) -> &Common {
        &self.common
    }
    fn validate(&self, role: &str) -> Result<(), MetadataError> {
        if self.meta.len() != 1 || !self.meta.contains_key("snapshot.json") {
            return Err(MetadataError::Invalid {
                role: role.into(),
                reason: "meta must hold exactly snapshot.json".into(),
            });
        }
        Ok(())
    }
}

impl Timestamp {
    /// The snapshot entry (validated to exist).
    pub fn snapshot_meta(&self) -> &MetaFile {
        &self.meta["snapshot.json"]
    }
}

/// `snapshot.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub common: Common,
    pub meta: BTreeMap<String, MetaFile>,
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn common(&self) -> &Common {
        &self.common
    }
}

/// A target file entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
}

/// A delegation from a targets role to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelegatedRole {
    pub name: String,
    pub keyids: Vec<String>,
    pub threshold: u64,
    #[serde(default)]
    pub terminating: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
}

impl DelegatedRole {
    /// Whether this delegation covers `target` (fnmatch per `/`-separated component,
    /// as python-tuf matches, or a sha256 prefix of the path).
    pub fn covers(&self, target: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| crate::names::path_matches(p, target));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let h = hex::encode(Sha256::digest(target.as_bytes()));
            return prefixes.iter().any(|p| h.starts_with(p.as_str()));
        }
        false
    }
}

/// TAP 15 succinct hash-bin delegations: `2^bit_length` roles named
/// `<name_prefix>-<bin in hex>`, one per prefix of the target path's sha256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuccinctRoles {
    pub keyids: Vec<String>,
    pub threshold: u64,
    pub bit_length: u32,
    pub name_prefix: String,
}

impl SuccinctRoles {
    fn suffix_len(&self) -> usize {
        format!("{:x}", self.bins() - 1).len()
    }

    fn bins(&self) -> u64 {
        1u64 << self.bit_length
    }

    /// The bin role responsible for `target`.
    pub fn role_for(&self, target: &str) -> String {
        let h = Sha256::digest(target.as_bytes());
        let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
        let bin = first >> (32 - self.bit_length);
        format!(
            "{}-{:0width$x}",
            self.name_prefix,
            bin,
            width = self.suffix_len()
        )
    }

    /// Whether `name` is one of the bin roles.
    pub fn is_role(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(&self.name_prefix)
            .and_then(|r| r.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && u64::from_str_radix(suffix, 16).is_ok_and(|b| b < self.bins())
    }
}

/// The `delegations` of a targets role: either a list of roles or succinct bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delegations {
    pub keys: BTreeMap<String, PublicKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succinct_roles: Option<SuccinctRoles>,
}

impl Delegations {
    /// The delegated roles that may list `target`, in search order, with whether each
    /// is terminating.
    pub fn roles_for(&self, target: &str) -> Vec<(String, bool)> {
        if let Some(s) = &self.succinct_roles {
            return vec![(s.role_for(target), false)];
        }
        self.roles
            .iter()
            .flatten()
            .filter(|r| r.covers(target))
            .map(|r| (r.name.clone(), r.terminating))
            .collect()
    }

    /// The keys and threshold of delegated role `name`.
    pub fn role_keys(&self, name: &str) -> Option<RoleKeys> {
        if let Some(s) = &self.succinct_roles {
            return s.is_role(name).then(|| RoleKeys {
                keyids: s.keyids.clone(),
                threshold: s.threshold,
            });
        }
        self.roles
            .iter()
            .flatten()
            .find(|r| r.name == name)
            .map(|r| RoleKeys {
                keyids: r.keyids.clone(),
                threshold: r.threshold,
            })
    }
}

/// `targets.json` and delegated targets roles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(flatten)]
    pub common: Common,
    pub targets: BTreeMap<String, TargetFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
}

impl Role for Targets {
    const TYPE: &'static str = "targets";
    fn common(&self) -> &Common {
        &self.common
    }
    fn validate(&self, role: &str) -> Result<(), MetadataError> {
        if let Some(d) = &self.delegations {
            if d.roles.is_some() == d.succinct_roles.is_some() {
                return Err(MetadataError::Invalid {
                    role: role.into(),
                    reason: "delegations need exactly one of roles and succinct_roles".into(),
                });
            }
            if let Some(s) = &d.succinct_roles {
                if !(1..=32).contains(&s.bit_length) {
                    return Err(MetadataError::Invalid {
                        role: role.into(),
                        reason: format!("succinct_roles bit_length {} is not 1..=32", s.bit_length),
                    });
                }
                let rk = RoleKeys {
                    keyids: s.keyids.clone(),
                    threshold: s.threshold,
                };
                check_threshold(role, &s.name_prefix, &rk)?;
            }
            let mut seen = std::collections::BTreeSet::new();
            for r in d.roles.iter().flatten() {
                let rk = RoleKeys {
                    keyids: r.keyids.clone(),
                    threshold: r.threshold,
                };
                check_threshold(role, &r.name, &rk)?;
                if r.paths.is_some() == r.path_hash_prefixes.is_some() {
                    return Err(MetadataError::Invalid {
                        role: role.into(),
                        reason: format!(
                            "delegated role {} needs exactly one of paths and path_hash_prefixes",
                            r.name
                        ),
                    });
                }
                if ["root", "timestamp", "snapshot", "targets"].contains(&r.name.as_str())
                    || !seen.insert(r.name.clone())
                {
                    return Err(MetadataError::Invalid {
                        role: role.into(),
                        reason: format!("delegated role name {:?} is reserved or repeated", r.name),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why bytes do not match their declared length or hashes.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{file}: length {actual} differs from the declared {expected}")]
    Length {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: {algorithm} is {actual}, but the signed metadata says {expected}")]
    Mismatch {
        file: String,
        algorithm: String,
        expected: String,
        actual: String,
    },
    #[error("{file}: no supported hash (sha256, sha512) among {algorithms:?}")]
    NoSupportedHash {
        file: String,
        algorithms: Vec<String>,
    },
}

/// Checks `bytes` against a declared length and hashes; every supported hash must match
/// and at least one must be present when any hashes are declared.
pub fn check_hashes(
    file: &str,
    bytes: &[u8],
    length: Option<u64>,
    hashes: Option<&BTreeMap<String, String>>,
) -> Result<(), HashError> {
    let mut h = StreamHashes::for_hashes(hashes);
    h.update(bytes);
    h.check(file, length, hashes)
}

/// The length and hashes of a file computed while it streams past, to be
/// checked like [`check_hashes`] at its end (sha512 only when declared).
#[derive(Clone, Debug, Default)]
pub struct StreamHashes {
    len: u64,
    sha256: Sha256,
    sha512: Option<Sha512>,
}

impl StreamHashes {
    /// Computes what `hashes` declares that this client supports.
    pub fn for_hashes(hashes: Option<&BTreeMap<String, String>>) -> StreamHashes {
        StreamHashes {
            sha512: hashes
                .is_some_and(|h| h.contains_key("sha512"))
                .then(Sha512::new),
            ..StreamHashes::default()
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.sha256.update(bytes);
        if let Some(h) = &mut self.sha512 {
            h.update(bytes);
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks what streamed past against a declared length and hashes.
    pub fn check(
        self,
        file: &str,
        length: Option<u64>,
        hashes: Option<&BTreeMap<String, String>>,
    ) -> Result<(), HashError> {
        if let Some(expected) = length {
            if self.len != expected {
                return Err(HashError::Length {
                    file: file.into(),
                    expected,
                    actual: self.len,
                });
            }
        }
        let Some(hashes) = hashes else {
            return Ok(());
        };
        let sha256 = hex::encode(self.sha256.finalize());
        let sha512 = self.sha512.map(|h| hex::encode(h.finalize()));
        let mut checked = 0;
        for (alg, expected) in hashes {
            let actual = match (alg.as_str(), &sha512) {
                ("sha256", _) => sha256.clone(),
                ("sha512", Some(h)) => h.clone(),
                _ => continue,
            };
            checked += 1;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(HashError::Mismatch {
                    file: file.into(),
                    algorithm: alg.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if checked == 0 {
            return Err(HashError::NoSupportedHash {
                file: file.into(),
                algorithms: hashes.keys().cloned().collect(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_unknown_fields_in_canonical_bytes() {
        let raw = br#"{"signed":{"_type":"timestamp","spec_version":"1.0.31","version":3,"expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":{"version":2}},"x-extra":"kept"},"signatures":[]}"#;
        let env = Envelope::parse("timestamp", raw).unwrap();
        assert!(String::from_utf8_lossy(&env.canonical).contains("x-extra"));
        let ts: Timestamp = env.typed("timestamp").unwrap();
        assert_eq!(ts.snapshot_meta().version, 2);
        assert!(matches!(
            env.typed::<Snapshot>("snapshot"),
            Err(MetadataError::WrongType { .. })
        ));
    }

    #[test]
    fn rejects_spec_version_2_and_bad_expiry() {
        let raw = br#"{"signed":{"_type":"snapshot","spec_version":"2.0.0","version":1,"expires":"2030-01-01T00:00:00Z","meta":{}},"signatures":[]}"#;
        let env = Envelope::parse("snapshot", raw).unwrap();
        assert!(matches!(
            env.typed::<Snapshot>("snapshot"),
            Err(MetadataError::SpecVersion { .. })
        ));
        let raw = br#"{"signed":{"_type":"snapshot","spec_version":"1.0.0","version":1,"expires":"2030-01-01T00:00:00+01:00","meta":{}},"signatures":[]}"#;
        let env = Envelope::parse("snapshot", raw).unwrap();
        assert!(matches!(
            env.typed::<Snapshot>("snapshot"),
            Err(MetadataError::Expires { .. })
        ));
    }

    #[test]
    fn succinct_bins_match_python_tuf_naming() {
        let s = SuccinctRoles {
            keyids: vec![],
            threshold: 1,
            bit_length: 8,
            name_prefix: "bin".into(),
        };
        // sha256("a.txt") starts with 0xc6; python-tuf: f"bin-{0xc6:02x}".
        let first = Sha256::digest(b"a.txt")[0];
        assert_eq!(s.role_for("a.txt"), format!("bin-{first:02x}"));
        assert!(s.is_role("bin-00") && s.is_role("bin-ff"));
        assert!(!s.is_role("bin-100") && !s.is_role("bin-0") && !s.is_role("bim-00"));
    }

    #[test]
    fn hashes_and_lengths() {
        let data = b"abc";
        let sha = hex::encode(Sha256::digest(data));
        let mut h = BTreeMap::new();
        h.insert("sha256".to_string(), sha);
        check_hashes("f", data, Some(3), Some(&h)).unwrap();
        assert!(matches!(
            check_hashes("f", data, Some(4), Some(&h)),
            Err(HashError::Length { .. })
        ));
        assert!(matches!(
            check_hashes("f", b"abd", None, Some(&h)),
            Err(HashError::Mismatch { .. })
        ));
        let mut only_md5 = BTreeMap::new();
        only_md5.insert("md5".to_string(), "00".to_string());
        assert!(check_hashes("f", data, None, Some(&only_md5)).is_err());
    }
}
