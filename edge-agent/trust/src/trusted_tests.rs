use super::*;
use crate::keys::{KeyType, PrivateKey};
use crate::repo::sign::sign;
use chrono::Duration;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

struct Fx {
    root: PrivateKey,
    online: PrivateKey,
    now: DateTime<Utc>,
}

fn t(days: i64) -> String {
    crate::metadata::format_time(Utc::now() + Duration::days(days))
}

impl Fx {
    fn new() -> Fx {
        Fx {
            root: PrivateKey::generate(KeyType::Ed25519),
            online: PrivateKey::generate(KeyType::EcdsaP256),
            now: Utc::now(),
        }
    }

    fn root_v(&self, version: u64, root_key: &PrivateKey, signers: &[&PrivateKey]) -> Vec<u8> {
        let (r, o) = (root_key.public(), self.online.public());
        let s = json!({"_type": "root", "spec_version": "1.0.31", "version": version,
            "expires": t(30), "consistent_snapshot": true,
            "keys": {r.keyid(): r, o.keyid(): o},
            "roles": {"root": {"keyids": [r.keyid()], "threshold": 1},
                      "timestamp": {"keyids": [o.keyid()], "threshold": 1},
                      "snapshot": {"keyids": [o.keyid()], "threshold": 1},
                      "targets": {"keyids": [o.keyid()], "threshold": 1}}});
        sign(&s, signers).unwrap()
    }

    fn signed(&self, v: Value) -> Vec<u8> {
        sign(&v, &[&self.online]).unwrap()
    }

    fn timestamp(&self, version: u64, snap: &[u8], snap_version: u64, expires: i64) -> Vec<u8> {
        self.signed(
            json!({"_type": "timestamp", "spec_version": "1.0.31", "version": version,
            "expires": t(expires), "meta": {"snapshot.json": {"version": snap_version,
            "length": snap.len(), "hashes": {"sha256": hex::encode(Sha256::digest(snap))}}}}),
        )
    }

    fn snapshot(&self, version: u64, targets_version: u64) -> Vec<u8> {
        self.signed(
            json!({"_type": "snapshot", "spec_version": "1.0.31", "version": version,
            "expires": t(7), "meta": {"targets.json": {"version": targets_version}}}),
        )
    }

    fn targets(&self, version: u64) -> Vec<u8> {
        self.signed(
            json!({"_type": "targets", "spec_version": "1.0.31", "version": version,
            "expires": t(7), "targets": {}}),
        )
    }

    fn set(&self) -> TrustedSet {
        TrustedSet::new(&self.root_v(1, &self.root, &[&self.root]), self.now).unwrap()
    }
}

#[test]
fn full_chain_is_accepted() {
    let fx = Fx::new();
    let mut s = fx.set();
    let sn = fx.snapshot(1, 1);
    s.update_timestamp(&fx.timestamp(1, &sn, 1, 1)).unwrap();
    s.update_snapshot(&sn, false).unwrap();
    s.update_targets(&fx.targets(1), "targets", "root").unwrap();
    assert_eq!(s.targets("targets").unwrap().meta.common.version, 1);
}

#[test]
fn timestamp_rollback_and_snapshot_rollback_in_meta() {
    let fx = Fx::new();
    let mut s = fx.set();
    let sn = fx.snapshot(5, 1);
    s.update_timestamp(&fx.timestamp(5, &sn, 5, 1)).unwrap();
    let old = fx.timestamp(4, &sn, 5, 1);
    assert!(matches!(
        s.update_timestamp(&old),
        Err(TrustError::Rollback {
            new: 4,
            trusted: 5,
            ..
        })
    ));
    let older_snap = fx.timestamp(6, &sn, 4, 1);
    assert!(matches!(
        s.update_timestamp(&older_snap),
        Err(TrustError::Rollback { new: 4, .. })
    ));
    assert!(matches!(
        s.update_timestamp(&fx.timestamp(5, &sn, 5, 1)),
        Err(TrustError::EqualVersion { .. })
    ));
    assert_eq!(
        s.timestamp().unwrap().meta.common.version,
        5,
        "state unchanged"
    );
}

#[test]
fn expired_timestamp_is_refused_and_not_kept() {
    let fx = Fx::new();
    let mut s = fx.set();
    let sn = fx.snapshot(1, 1);
    let err = s
        .update_timestamp(&fx.timestamp(1, &sn, 1, -1))
        .unwrap_err();
    assert!(matches!(err, TrustError::Expired { .. }), "{err}");
    assert!(s.timestamp().is_none());
}

#[test]
fn snapshot_hash_and_version_mix_and_match() {
    let fx = Fx::new();
    let mut s = fx.set();
    let sn = fx.snapshot(2, 1);
    s.update_timestamp(&fx.timestamp(1, &sn, 2, 1)).unwrap();
    let other = fx.snapshot(1, 1);
    assert!(matches!(
        s.update_snapshot(&other, false),
        Err(TrustError::Hash(_))
    ));
    // A local (stored) snapshot skips the hash but must still be the listed version.
    assert!(matches!(
        s.update_snapshot(&other, true),
        Err(TrustError::VersionMismatch {
            got: 1,
            expected: 2,
            ..
        })
    ));
    s.update_snapshot(&sn, false).unwrap();
    assert!(matches!(
        s.update_targets(&fx.targets(2), "targets", "root"),
        Err(TrustError::VersionMismatch {
            got: 2,
            expected: 1,
            ..
        })
    ));
}

#[test]
fn snapshot_may_not_roll_back_targets_versions() {
    let fx = Fx::new();
    let mut s = fx.set();
    let local = fx.snapshot(1, 3);
    let sn = fx.snapshot(2, 2);
    s.update_timestamp(&fx.timestamp(1, &sn, 2, 1)).unwrap();
    assert!(
        s.update_snapshot(&local, true).is_err(),
        "not final, but kept for rollback"
    );
    let err = s.update_snapshot(&sn, false).unwrap_err();
    assert!(
        matches!(
            err,
            TrustError::Rollback {
                new: 2,
                trusted: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn root_rotation_needs_both_thresholds_and_next_version() {
    let fx = Fx::new();
    let mut s = fx.set();
    let new_key = PrivateKey::generate(KeyType::Ed25519);
    let only_new = fx.root_v(2, &new_key, &[&new_key]);
    assert!(matches!(
        s.update_root(&only_new),
        Err(TrustError::Verify(_))
    ));
    let only_old = fx.root_v(2, &new_key, &[&fx.root]);
    assert!(matches!(
        s.update_root(&only_old),
        Err(TrustError::Verify(_))
    ));
    let skip = fx.root_v(3, &new_key, &[&fx.root, &new_key]);
    assert!(matches!(
        s.update_root(&skip),
        Err(TrustError::RootVersion {
            expected: 2,
            got: 3
        })
    ));
    assert_eq!(s.root().meta.common.version, 1);
    s.update_root(&fx.root_v(2, &new_key, &[&fx.root, &new_key]))
        .unwrap();
    assert_eq!(s.root().meta.common.version, 2);
}

#[test]
fn wrong_role_signature_is_refused() {
    let fx = Fx::new();
    let mut s = fx.set();
    let sn = fx.snapshot(1, 1);
    let v: Value = serde_json::from_slice(&fx.timestamp(1, &sn, 1, 1)).unwrap();
    let forged = sign(&v["signed"], &[&fx.root]).unwrap();
    assert!(matches!(
        s.update_timestamp(&forged),
        Err(TrustError::Verify(_))
    ));
}
