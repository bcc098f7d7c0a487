//! The TUF 1.0 metadata model: the signed envelope and the four top-level roles plus
//! delegated targets. Parsing keeps the exact bytes and the `signed` value, so unknown
//! fields stay covered by the signature; the typed structs are views for the checks.

mod hashes;
mod targets;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical;
use crate::keys::PublicKey;

pub use hashes::{check_hashes, HashError, StreamHashes};
pub use targets::{DelegatedRole, Delegations, SuccinctRoles, TargetFile, Targets};

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
}
