//! Signing: an envelope over the canonical bytes of a `signed` object, written the way
//! python-tuf writes metadata (sorted keys, indented).

use serde_json::{json, Value};

use crate::canonical::{self, CanonicalError};
use crate::keys::PrivateKey;

/// Signs `signed` with each key and returns the envelope's JSON bytes.
pub fn sign(signed: &Value, keys: &[&PrivateKey]) -> Result<Vec<u8>, CanonicalError> {
    let msg = canonical::encode(signed)?;
    let mut seen = std::collections::BTreeSet::new();
    let signatures: Vec<Value> = keys
        .iter()
        .filter(|k| seen.insert(k.public().keyid()))
        .map(|k| json!({"keyid": k.public().keyid(), "sig": hex::encode(k.sign(&msg))}))
        .collect();
    let env = json!({"signed": signed, "signatures": signatures});
    let mut out = serde_json::to_vec_pretty(&env).unwrap_or_default();
    out.push(b'\n');
    Ok(out)
}
