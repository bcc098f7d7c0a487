//! The launch log and attestation.
//!
//! Every verified launch appends a record (workload, image manifest digest,
//! rootfs measurement, time) and *extends* a hash chain, like a TPM PCR:
//!
//! ```text
//! head_0 = 32 zero bytes
//! head_n = sha256(head_{n-1} || sha256(record_n as canonical JSON))
//! ```
//!
//! so no record can be dropped, reordered or altered without changing every
//! later head. `berth attest` returns the records and the head signed with
//! the device's ed25519 key over `berth-attestation-v1 || nonce || head`; the
//! operator's `berth verify-attestation` recomputes the chain from the
//! records and checks the signature against the key it enrolled for the device.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

const DOMAIN: &[u8] = b"berth-attestation-v1";

/// One verified launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub time_ms: u64,
    pub workload: String,
    pub image: String,
    pub measurement: String,
    pub generation: u64,
}

impl LaunchRecord {
    fn digest(&self) -> [u8; 32] {
        // Field order is fixed by the struct: serde_json writes it as declared.
        Sha256::digest(serde_json::to_vec(self).expect("record serializes")).into()
    }
}

/// `head_n` from `head_{n-1}` and record n.
pub fn extend(head: &[u8; 32], record: &LaunchRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(head);
    h.update(record.digest());
    h.finalize().into()
}

/// The chain head over `records` from the zero head.
pub fn chain(records: &[LaunchRecord]) -> [u8; 32] {
    records.iter().fold([0u8; 32], |h, r| extend(&h, r))
}

/// A problem with the launch log or an attestation.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("launch log in {path}: {source}; the state directory may be full or damaged")]
    Store { path: String, source: sled::Error },
    #[error("launch log in {path}: record {seq} is unreadable: {source}")]
    Corrupt {
        path: String,
        seq: u64,
        source: serde_json::Error,
    },
    #[error("device key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("attestation from {device}: the records do not hash to the signed head (the log was altered, truncated or reordered)")]
    ChainMismatch { device: String },
    #[error("attestation from {device}: the signature does not verify with the enrolled key {key}; the device's key changed or the attestation was forged")]
    BadSignature { device: String, key: String },
    #[error("attestation from {device}: it answers nonce {got:?}, not the nonce {want:?} that was asked (a replay)")]
    WrongNonce {
        device: String,
        got: String,
        want: String,
    },
    #[error("attestation: malformed {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
}

/// The append-only launch log, in its own sled tree.
#[derive(Debug, Clone)]
pub struct LaunchLog {
    path: String,
    db: sled::Db,
    tree: sled::Tree,
}

impl LaunchLog {
    pub fn new(path: &Path, db: sled::Db) -> Result<Self, AttestError> {
        let path = path.display().to_string();
        let tree = db
            .open_tree("launch-log")
            .map_err(|source| AttestError::Store {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, db, tree })
    }

    fn store_err(&self) -> impl Fn(sled::Error) -> AttestError + '_ {
        |source| AttestError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a record, flushed before this returns; returns the new head.
    pub fn append(&self, record: &LaunchRecord) -> Result<[u8; 32], AttestError> {
        let seq = self.tree.len() as u64;
        let bytes = serde_json::to_vec(record).expect("record serializes");
        self.tree
            .insert(seq.to_be_bytes(), bytes)
            .map_err(self.store_err())?;
        self.db.flush().map_err(self.store_err())?;
        Ok(chain(&self.records()?))
    }

    /// Every record, oldest first.
    pub fn records(&self) -> Result<Vec<LaunchRecord>, AttestError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(self.store_err())?;
                let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
                serde_json::from_slice(&v).map_err(|source| AttestError::Corrupt {
                    path: self.path.clone(),
                    seq,
                    source,
                })
            })
            .collect()
    }
}

/// What a device returns to `berth attest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub device: String,
    pub nonce: String,
    pub records: Vec<LaunchRecord>,
    /// Hex of the chain head.
    pub head: String,
    /// Hex of the device's ed25519 public key.
    pub key: String,
    /// Hex of the signature over `DOMAIN || nonce || head`.
    pub signature: String,
}

fn message(nonce: &str, head: &[u8; 32]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&(nonce.len() as u64).to_be_bytes());
    m.extend_from_slice(nonce.as_bytes());
    m.extend_from_slice(head);
    m
}

/// Signs the log for a verifier's `nonce`.
pub fn attest(
    device: &str,
    nonce: &str,
    records: Vec<LaunchRecord>,
    key: &SigningKey,
) -> Attestation {
    let head = chain(&records);
    let signature = key.sign(&message(nonce, &head));
    Attestation {
        device: device.to_string(),
        nonce: nonce.to_string(),
        records,
        head: hex::encode(head),
        key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(signature.to_bytes()),
    }
}

/// Checks an attestation against the device's enrolled key and the nonce
/// that was asked; returns the verified records.
pub fn verify(
    a: &Attestation,
    enrolled: &VerifyingKey,
    nonce: &str,
) -> Result<Vec<LaunchRecord>, AttestError> {
    if a.nonce != nonce {
        return Err(AttestError::WrongNonce {
            device: a.device.clone(),
            got: a.nonce.clone(),
            want: nonce.to_string(),
        });
    }
    let head = chain(&a.records);
    if hex::encode(head) != a.head {
        return Err(AttestError::ChainMismatch {
            device: a.device.clone(),
        });
    }
    let sig: [u8; 64] = hex::decode(&a.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AttestError::Malformed {
            field: "signature",
            reason: "must be 128 hex digits".into(),
        })?;
    enrolled
        .verify(&message(nonce, &head), &Signature::from_bytes(&sig))
        .map_err(|_| AttestError::BadSignature {
            device: a.device.clone(),
            key: hex::encode(enrolled.as_bytes()),
        })?;
    Ok(a.records.clone())
}

/// Loads the device's identity key (see [`crate::device::keys`]) or
/// creates it, mode 0600.
pub fn device_key(path: &Path) -> Result<SigningKey, AttestError> {
    crate::device::keys::identity(path).map_err(|e| AttestError::Key {
        path: path.display().to_string(),
        reason: match e {
            crate::device::DeviceError::Key { reason, .. } => reason,
            other => other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> LaunchRecord {
        LaunchRecord {
            time_ms: 1000 + i,
            workload: format!("w{i}"),
            image: format!("sha256:{i:064}"),
            measurement: format!("sha256:{:064}", i + 7),
            generation: 1,
        }
    }

    #[test]
    fn a_log_attests_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = LaunchLog::new(dir.path(), db).unwrap();
        let mut head = [0u8; 32];
        for i in 0..3 {
            let h = log.append(&rec(i)).unwrap();
            assert_eq!(h, extend(&head, &rec(i)));
            head = h;
        }
        let key = device_key(&dir.path().join("device.key")).unwrap();
        let again = device_key(&dir.path().join("device.key")).unwrap();
        assert_eq!(key.to_bytes(), again.to_bytes());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("device.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let a = attest("gw-1", "n-42", log.records().unwrap(), &key);
        assert_eq!(a.head, hex::encode(head));
        let ok = verify(&a, &key.verifying_key(), "n-42").unwrap();
        assert_eq!(ok.len(), 3);
    }

    #[test]
    fn tampering_truncation_reordering_replay_and_other_keys_fail() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let a = attest("gw-1", "n", (0..3).map(rec).collect(), &key);
        let vk = key.verifying_key();

        let mut t = a.clone();
        t.records[1].measurement = format!("sha256:{:064}", 99);
        assert!(matches!(
            verify(&t, &vk, "n"),
            Err(AttestError::ChainMismatch { .. })
        ));
        let mut t = a.clone();
        t.records.pop();
        assert!(matches!(
            verify(&t, &vk, "n"),
            Err(AttestError::ChainMismatch { .. })
        ));
        let mut t = a.clone();
        t.records.swap(0, 1);
        assert!(matches!(
            verify(&t, &vk, "n"),
            Err(AttestError::ChainMismatch { .. })
        ));
        assert!(matches!(
            verify(&a, &vk, "fresh"),
            Err(AttestError::WrongNonce { .. })
        ));
        let forged = attest("gw-1", "n", (0..3).map(rec).collect(), &other);
        let e = verify(&forged, &vk, "n").unwrap_err();
        assert!(matches!(e, AttestError::BadSignature { .. }), "{e}");
        // Records and head rewritten consistently still need the device key.
        let mut t = forged.clone();
        t.signature = a.signature.clone();
        t.records[0].workload = "evil".into();
        t.head = hex::encode(chain(&t.records));
        assert!(matches!(
            verify(&t, &vk, "n"),
            Err(AttestError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_damaged_key_file_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("device.key");
        std::fs::write(&p, "xyz").unwrap();
        let e = device_key(&p).unwrap_err().to_string();
        assert!(e.contains("device.key") && e.contains("64 hex"), "{e}");
    }
}
