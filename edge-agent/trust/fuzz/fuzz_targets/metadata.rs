//! Metadata parsing and verification on arbitrary bytes: the envelope parser, the
//! canonical encoder (whose output must parse back to the same value), every typed
//! role view, and the trusted-set updates against a fixed trusted root.

#![no_main]

use std::sync::OnceLock;

use berth_trust::chrono::{DateTime, Utc};
use berth_trust::metadata::{Envelope, Root, Snapshot, Targets, Timestamp};
use berth_trust::{canonical, TrustedSet};
use libfuzzer_sys::fuzz_target;

/// The seed corpus's root (corpus/metadata/root.json): a fixed, valid trusted root.
fn root() -> &'static [u8] {
    static ROOT: OnceLock<Vec<u8>> = OnceLock::new();
    ROOT.get_or_init(|| include_bytes!("../corpus/metadata/root.json").to_vec())
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("fixed time")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse("fuzz", data) {
        let again = canonical::encode(&env.signed).expect("encoded once, encodes again");
        assert_eq!(again, env.canonical);
        // Canonical JSON writes control characters raw (as securesystemslib does), so
        // only output without them is also standard JSON that must parse back.
        if !env.canonical.iter().any(|&b| b < 0x20) {
            let back: serde_json::Value =
                serde_json::from_slice(&env.canonical).expect("canonical JSON parses");
            assert_eq!(back, env.signed);
        }
        let _ = env.typed::<Root>("root");
        let _ = env.typed::<Timestamp>("timestamp");
        let _ = env.typed::<Snapshot>("snapshot");
        let _ = env.typed::<Targets>("targets");
    }
    let Ok(mut set) = TrustedSet::new(root(), now()) else {
        return;
    };
    let _ = set.update_root(data);
    if set.update_timestamp(data).is_ok() {
        let _ = set.update_snapshot(data, false);
        let _ = set.update_targets(data, "targets", "root");
    }
});
