//! The targets role: target file entries and the delegations (listed roles or
//! succinct hash bins) that decide which role may list a target.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{check_threshold, Common, MetadataError, Role, RoleKeys};
use crate::keys::PublicKey;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
