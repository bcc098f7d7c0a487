//! Threshold verification: an envelope is trusted for a role when signatures by at
//! least `threshold` distinct authorized keys verify over its canonical `signed` bytes.
//! Unknown key IDs and bad signatures are ignored; a key (by key ID or by key
//! material) counts once however often it signs or is listed.

use std::collections::{BTreeMap, BTreeSet};

use crate::keys::PublicKey;
use crate::metadata::{Envelope, RoleKeys};

/// Why a role's signatures fall short.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "{role} version {version}: {valid} valid signature(s) from distinct authorized keys, \
         threshold is {threshold} (authorized key IDs: {authorized}); \
         it must be signed by more of the role's keys"
    )]
    Threshold {
        role: String,
        version: u64,
        valid: usize,
        threshold: u64,
        authorized: String,
    },
}

/// Checks that `env` carries `role_keys.threshold` valid signatures by distinct keys
/// among `role_keys.keyids` (looked up in `keys`).
pub fn verify_role(
    role: &str,
    env: &Envelope,
    keys: &BTreeMap<String, PublicKey>,
    role_keys: &RoleKeys,
) -> Result<(), VerifyError> {
    let authorized: BTreeSet<&str> = role_keys.keyids.iter().map(String::as_str).collect();
    let mut counted_ids = BTreeSet::new();
    let mut counted_material = BTreeSet::new();
    for sig in &env.signatures {
        if !authorized.contains(sig.keyid.as_str()) || counted_ids.contains(sig.keyid.as_str()) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid) else {
            continue;
        };
        let Ok(bytes) = hex::decode(&sig.sig) else {
            continue;
        };
        match key.verify(&env.canonical, &bytes) {
            Ok(()) => {
                if counted_material.insert(key.material()) {
                    counted_ids.insert(sig.keyid.as_str());
                }
            }
            Err(e) => tracing::debug!(role, keyid = %sig.keyid, error = %e, "signature ignored"),
        }
    }
    if (counted_ids.len() as u64) < role_keys.threshold {
        return Err(VerifyError::Threshold {
            role: role.into(),
            version: env.signed["version"].as_u64().unwrap_or(0),
            valid: counted_ids.len(),
            threshold: role_keys.threshold,
            authorized: role_keys.keyids.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, PrivateKey};
    use crate::metadata::Signature;

    fn env_signed_by(signers: &[&PrivateKey]) -> Envelope {
        let raw = serde_json::json!({"signed": {"_type": "x", "version": 1}, "signatures": []});
        let mut env = Envelope::parse("x", raw.to_string().as_bytes()).unwrap();
        for k in signers {
            env.signatures.push(Signature {
                keyid: k.public().keyid(),
                sig: hex::encode(k.sign(&env.canonical)),
            });
        }
        env
    }

    fn setup(n: usize) -> (Vec<PrivateKey>, BTreeMap<String, PublicKey>) {
        let privs: Vec<PrivateKey> = (0..n)
            .map(|i| {
                PrivateKey::generate(if i % 2 == 0 {
                    KeyType::Ed25519
                } else {
                    KeyType::EcdsaP256
                })
            })
            .collect();
        let keys = privs
            .iter()
            .map(|k| (k.public().keyid(), k.public()))
            .collect();
        (privs, keys)
    }

    fn rk(privs: &[PrivateKey], threshold: u64) -> RoleKeys {
        RoleKeys {
            keyids: privs.iter().map(|k| k.public().keyid()).collect(),
            threshold,
        }
    }

    #[test]
    fn threshold_met_by_distinct_keys() {
        let (privs, keys) = setup(3);
        let env = env_signed_by(&[&privs[0], &privs[1]]);
        verify_role("x", &env, &keys, &rk(&privs, 2)).unwrap();
        assert!(verify_role("x", &env, &keys, &rk(&privs, 3)).is_err());
    }

    #[test]
    fn duplicate_signatures_count_once() {
        let (privs, keys) = setup(2);
        let env = env_signed_by(&[&privs[0], &privs[0]]);
        let err = verify_role("x", &env, &keys, &rk(&privs, 2)).unwrap_err();
        assert!(err.to_string().contains("1 valid signature"), "{err}");
    }

    #[test]
    fn same_key_under_two_ids_counts_once() {
        let (privs, mut keys) = setup(1);
        let mut env = env_signed_by(&[&privs[0]]);
        keys.insert("alias".into(), privs[0].public());
        env.signatures.push(Signature {
            keyid: "alias".into(),
            sig: env.signatures[0].sig.clone(),
        });
        let role = RoleKeys {
            keyids: vec![privs[0].public().keyid(), "alias".into()],
            threshold: 2,
        };
        assert!(verify_role("x", &env, &keys, &role).is_err());
    }

    #[test]
    fn unauthorized_and_unknown_keys_are_ignored() {
        let (privs, keys) = setup(2);
        let mut env = env_signed_by(&[&privs[1]]);
        env.signatures.push(Signature {
            keyid: "deadbeef".into(),
            sig: "00".into(),
        });
        assert!(verify_role("x", &env, &keys, &rk(&privs[..1], 1)).is_err());
        verify_role("x", &env, &keys, &rk(&privs[1..], 1)).unwrap();
    }
}
