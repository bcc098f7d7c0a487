//! Keys: the TUF key dictionary, key IDs as securesystemslib computes them, signature
//! verification (`ed25519`, `ecdsa-sha2-nistp256`) and private keys for the signer.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical;

/// Why a key could not be used or a signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported key type {keytype:?} with scheme {scheme:?}: use ed25519 or ecdsa-sha2-nistp256")]
    Unsupported { keytype: String, scheme: String },
    #[error("malformed {keytype} public key: {reason}")]
    MalformedPublic { keytype: String, reason: String },
    #[error("malformed private key: {reason}")]
    MalformedPrivate { reason: String },
    #[error("signature is not valid hex or has the wrong encoding: {reason}")]
    MalformedSignature { reason: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("cannot encode key: {0}")]
    Encode(String),
}

/// The key types Berth signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    EcdsaP256,
}

impl KeyType {
    /// Parses `ed25519` or `p256` / `ecdsa` / `ecdsa-sha2-nistp256`.
    pub fn parse(s: &str) -> Option<KeyType> {
        match s {
            "ed25519" => Some(KeyType::Ed25519),
            "p256" | "ecdsa" | "ecdsa-sha2-nistp256" => Some(KeyType::EcdsaP256),
            _ => None,
        }
    }
}

/// The `keyval` of a key: the public part (and, in private key files, the private part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    pub public: String,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// A TUF public key as it appears in `root.json` and in delegations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

impl PublicKey {
    /// The key ID securesystemslib and python-tuf compute: the sha256 of the canonical
    /// JSON of `{"keytype", "scheme", "keyval"}`.
    pub fn keyid(&self) -> String {
        let keyval = serde_json::to_value(&self.keyval).unwrap_or(Value::Null);
        let v = serde_json::json!({
            "keytype": self.keytype,
            "scheme": self.scheme,
            "keyval": keyval,
        });
        let bytes = canonical::encode(&v).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }

    /// Which supported algorithm this key is.
    pub fn key_type(&self) -> Result<KeyType, KeyError> {
        match (self.keytype.as_str(), self.scheme.as_str()) {
            ("ed25519", "ed25519") => Ok(KeyType::Ed25519),
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => Ok(KeyType::EcdsaP256),
            _ => Err(KeyError::Unsupported {
                keytype: self.keytype.clone(),
                scheme: self.scheme.clone(),
            }),
        }
    }

    /// The identity of the key material, so the same key listed under two IDs counts once.
    pub fn material(&self) -> (String, String) {
        (self.keytype.clone(), self.keyval.public.trim().to_string())
    }

    /// Verifies `sig` over `msg` (the canonical bytes of a `signed` object).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        match self.key_type()? {
            KeyType::Ed25519 => {
                let raw = hex::decode(&self.keyval.public).map_err(|e| self.malformed(e))?;
                let raw: [u8; 32] = raw
                    .try_into()
                    .map_err(|_| self.malformed("an ed25519 key is 32 bytes"))?;
                let key =
                    ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|e| self.malformed(e))?;
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|e| {
                    KeyError::MalformedSignature {
                        reason: e.to_string(),
                    }
                })?;
                key.verify_strict(msg, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            KeyType::EcdsaP256 => {
                let key = p256::ecdsa::VerifyingKey::from_public_key_pem(&self.keyval.public)
                    .map_err(|e| self.malformed(e))?;
                let sig = p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
                    .map_err(|e| KeyError::MalformedSignature {
                        reason: e.to_string(),
                    })?;
                key.verify(msg, &sig).map_err(|_| KeyError::BadSignature)
            }
        }
    }

    fn malformed(&self, reason: impl fmt::Display) -> KeyError {
        KeyError::MalformedPublic {
            keytype: self.keytype.clone(),
            reason: reason.to_string(),
        }
    }
}

/// A private signing key (the signer's side).
pub enum PrivateKey {
    Ed25519(ed25519_dalek::SigningKey),
    EcdsaP256(p256::ecdsa::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.public().keyid())
    }
}

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(kind: KeyType) -> PrivateKey {
        let mut rng = rand_core::OsRng;
        match kind {
            KeyType::Ed25519 => PrivateKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
            KeyType::EcdsaP256 => PrivateKey::EcdsaP256(p256::ecdsa::SigningKey::random(&mut rng)),
        }
    }

    /// The public key in TUF form.
    pub fn public(&self) -> PublicKey {
        let (keytype, scheme, public) = match self {
            PrivateKey::Ed25519(k) => (
                "ed25519",
                "ed25519",
                hex::encode(k.verifying_key().as_bytes()),
            ),
            PrivateKey::EcdsaP256(k) => (
                "ecdsa",
                "ecdsa-sha2-nistp256",
                k.verifying_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap_or_default(),
            ),
        };
        PublicKey {
            keytype: keytype.into(),
            scheme: scheme.into(),
            keyval: KeyVal {
                public,
                unknown: BTreeMap::new(),
            },
            unknown: BTreeMap::new(),
        }
    }

    /// Signs `msg`; ECDSA signatures are DER, as securesystemslib writes them.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            PrivateKey::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
            PrivateKey::EcdsaP256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
        }
    }

    /// The private key file: the public key dictionary with `keyval.private` added
    /// (hex seed for ed25519, PKCS#8 PEM for P-256).
    pub fn to_file(&self) -> Result<Value, KeyError> {
        let private = match self {
            PrivateKey::Ed25519(k) => hex::encode(k.to_bytes()),
            PrivateKey::EcdsaP256(k) => k
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeyError::Encode(e.to_string()))?
                .to_string(),
        };
        let mut v =
            serde_json::to_value(self.public()).map_err(|e| KeyError::Encode(e.to_string()))?;
        v["keyval"]["private"] = Value::String(private);
        Ok(v)
    }

    /// Reads a private key file written by [`PrivateKey::to_file`].
    pub fn from_file(v: &Value) -> Result<PrivateKey, KeyError> {
        let bad = |reason: &str| KeyError::MalformedPrivate {
            reason: reason.to_string(),
        };
        let private = v["keyval"]["private"]
            .as_str()
            .ok_or_else(|| bad("no keyval.private: this is a public key file"))?;
        let public: PublicKey = serde_json::from_value(v.clone())
            .map_err(|e| bad(&format!("not a key dictionary: {e}")))?;
        let key = match public.key_type()? {
            KeyType::Ed25519 => {
                let raw =
                    hex::decode(private).map_err(|_| bad("ed25519 private key is not hex"))?;
                let raw: [u8; 32] = raw
                    .try_into()
                    .map_err(|_| bad("ed25519 private key is not 32 bytes"))?;
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&raw))
            }
            KeyType::EcdsaP256 => PrivateKey::EcdsaP256(
                p256::ecdsa::SigningKey::from_pkcs8_pem(private)
                    .map_err(|e| bad(&format!("P-256 private key: {e}")))?,
            ),
        };
        if key.public().material() != public.material() {
            return Err(bad("keyval.public does not match keyval.private"));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_both_types() {
        for kind in [KeyType::Ed25519, KeyType::EcdsaP256] {
            let k = PrivateKey::generate(kind);
            let sig = k.sign(b"hello");
            k.public().verify(b"hello", &sig).unwrap();
            assert!(matches!(
                k.public().verify(b"hellO", &sig),
                Err(KeyError::BadSignature)
            ));
            let again = PrivateKey::from_file(&k.to_file().unwrap()).unwrap();
            assert_eq!(again.public(), k.public());
        }
    }

    #[test]
    fn keyid_matches_securesystemslib() {
        // python3 -c 'from securesystemslib.signer import SSlibKey; ...' for this keyval.
        let k = PublicKey {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: "4f66dabebcf30628963786001984c0b75c175cdcf3bc4855933a2628f0cd0a0f".into(),
                unknown: BTreeMap::new(),
            },
            unknown: BTreeMap::new(),
        };
        let expected = hex::encode(Sha256::digest(
            br#"{"keytype":"ed25519","keyval":{"public":"4f66dabebcf30628963786001984c0b75c175cdcf3bc4855933a2628f0cd0a0f"},"scheme":"ed25519"}"#,
        ));
        assert_eq!(k.keyid(), expected);
    }

    #[test]
    fn unsupported_scheme_is_named() {
        let mut k = PrivateKey::generate(KeyType::Ed25519).public();
        k.scheme = "rsassa-pss-sha512".into();
        let err = k.verify(b"x", &[0; 64]).unwrap_err();
        assert!(err.to_string().contains("rsassa-pss-sha512"), "{err}");
    }
}
