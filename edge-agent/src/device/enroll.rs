//! The device side of enrollment: keys, the certificate signing request,
//! the signed enrollment request the operator approves, and installing the
//! certificate that comes back.
//!
//! The request binds, under the identity key's signature, the device id,
//! its fleet, the X25519 recipient for sealed secrets and a CSR for the MQTT
//! client certificate whose subject key is the identity key itself:
//!
//! ```text
//! signature = ed25519(identity, "berth-enrollment-v1" || len‖device || len‖fleet || len‖recipient || len‖csr)
//! ```
//!
//! (each `len` a big-endian u64), so no part can be swapped or altered
//! after the device made it.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use serde::{Deserialize, Serialize};

use super::keys;
use super::DeviceError;

/// The request's format tag (also the signature's domain).
pub const FORMAT: &str = "berth-enrollment-v1";

/// What a device sends to be approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub format: String,
    pub device: String,
    pub fleet: String,
    /// Hex of the ed25519 identity public key.
    pub identity: String,
    /// The age X25519 recipient (`age1…`) secrets are sealed to.
    pub recipient: String,
    /// PEM of the CSR for the MQTT client certificate (CN = device id).
    pub csr: String,
    /// Hex of the identity key's signature (see the module docs).
    pub signature: String,
}

/// The bytes the identity key signs.
pub fn signed_bytes(device: &str, fleet: &str, recipient: &str, csr: &str) -> Vec<u8> {
    let mut m = FORMAT.as_bytes().to_vec();
    for part in [device, fleet, recipient, csr] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m
}

/// The files of an enrolled device in its state directory.
#[derive(Debug, Clone)]
pub struct Files {
    pub identity: PathBuf,
    pub secrets: PathBuf,
    pub certificate: PathBuf,
}

impl Files {
    pub fn in_state(state: &Path) -> Files {
        Files {
            identity: state.join("device.key"),
            secrets: state.join("secrets.key"),
            certificate: state.join("device.pem"),
        }
    }
}

/// What enrolling produced.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub request: Request,
    /// Whether keys already present were kept.
    pub reused_identity: bool,
    pub reused_secrets_key: bool,
}

/// A CSR for `device` whose subject key is `key`, asking for client auth.
pub fn csr(device: &str, key: &SigningKey) -> Result<String, DeviceError> {
    let der = keys::pkcs8_der(key);
    let pair = KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &rcgen::PKCS_ED25519)
        .map_err(|e| DeviceError::Csr(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, device);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
        .serialize_request(&pair)
        .and_then(|r| r.pem())
        .map_err(|e| DeviceError::Csr(e.to_string()))
}

/// Creates (or reuses) the device's keys in `state` and the signed request.
/// An identity in the legacy hex form is rewritten as PEM (same key).
pub fn enroll(state: &Path, device: &str, fleet: &str) -> Result<Enrolled, DeviceError> {
    std::fs::create_dir_all(state).map_err(|source| DeviceError::Io {
        path: state.to_path_buf(),
        source,
    })?;
    let files = Files::in_state(state);
    let existing = keys::read_identity(&files.identity)?;
    let reused_identity = existing.is_some();
    let identity = match existing {
        Some(k) => {
            let pem = keys::pkcs8_pem(&k);
            if std::fs::read_to_string(&files.identity).ok().as_deref() != Some(pem.as_str()) {
                keys::write_private(&files.identity, pem.as_bytes())?;
            }
            k
        }
        None => keys::identity(&files.identity)?,
    };
    let reused_secrets_key = keys::read_secrets_key(&files.secrets)?.is_some();
    let recipient = keys::secrets_key(&files.secrets)?.to_public().to_string();
    let csr = csr(device, &identity)?;
    let signature = identity.sign(&signed_bytes(device, fleet, &recipient, &csr));
    Ok(Enrolled {
        request: Request {
            format: FORMAT.into(),
            device: device.into(),
            fleet: fleet.into(),
            identity: hex::encode(identity.verifying_key().as_bytes()),
            recipient,
            csr,
            signature: hex::encode(signature.to_bytes()),
        },
        reused_identity,
        reused_secrets_key,
    })
}

impl Request {
    /// The identity public key, checked to be a valid ed25519 point.
    pub fn identity_key(&self) -> Result<VerifyingKey, DeviceError> {
        let bytes: [u8; 32] = hex::decode(&self.identity)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.bad("identity", "must be 64 hex digits"))?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| self.bad("identity", "is not a valid ed25519 public key"))
    }

    fn bad(&self, field: &'static str, reason: &str) -> DeviceError {
        DeviceError::Request {
            device: self.device.clone(),
            reason: format!("{field} {reason}"),
        }
    }

    /// Checks the format and the identity key's signature over every part.
    pub fn verify_signature(&self) -> Result<VerifyingKey, DeviceError> {
        if self.format != FORMAT {
            return Err(self.bad("format", &format!("must be {FORMAT:?}")));
        }
        let key = self.identity_key()?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.bad("signature", "must be 128 hex digits"))?;
        key.verify(
            &signed_bytes(&self.device, &self.fleet, &self.recipient, &self.csr),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| DeviceError::Request {
            device: self.device.clone(),
            reason: "its signature does not verify with its identity key: the request was \
                     altered after the device made it; enrol the device again"
                .into(),
        })?;
        Ok(key)
    }
}

/// Installs the certificate the operator issued: it must be for `device`
/// and carry this device's identity key. Returns the certificate's subject.
pub fn install_certificate(
    state: &Path,
    device: &str,
    cert_pem: &[u8],
) -> Result<String, DeviceError> {
    let files = Files::in_state(state);
    let key = keys::read_identity(&files.identity)?.ok_or_else(|| DeviceError::Key {
        path: files.identity.clone(),
        reason: "does not exist: enrol the device first (berth device enroll)".into(),
    })?;
    let info = super::approve::certificate_info(cert_pem)?;
    if info.subject != device {
        return Err(DeviceError::Certificate(format!(
            "it is issued to {:?}, but this device is {device:?}: install the certificate \
             approved for this device",
            info.subject
        )));
    }
    if info.public_key != key.verifying_key().as_bytes().as_slice() {
        return Err(DeviceError::Certificate(
            "its public key is not this device's identity key: it was issued for another \
             enrollment; approve this device's current request"
                .into(),
        ));
    }
    keys::write_atomic(&files.certificate, cert_pem, 0o644)?;
    Ok(info.subject)
}

/// Whether [`pin_root`] pinned the root now or found one pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    Now,
    Already,
}

/// Pins `root` (a fleet's `root.json`) as the trusted root in the agent's
/// state database, as the agent itself does on its first start: it must be
/// a valid, self-signed TUF root. A database that already trusts a root
/// keeps it (rotations may have advanced it). The agent must not be running.
pub fn pin_root(state: &Path, root: &Path) -> Result<Pinned, DeviceError> {
    use berth_trust::StateStore as _;
    let err = |reason: String| DeviceError::Root {
        path: root.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(root).map_err(|e| err(format!("cannot read: {e}")))?;
    let db_path = state.join("db");
    let db = crate::reconcile::store::db_config(&db_path)
        .open()
        .map_err(|e| {
            err(format!(
                "cannot open the state database {}: {e}; stop berth-agent while enrolling",
                db_path.display()
            ))
        })?;
    let store = berth_trust::SledStore::in_db(&db, &db_path.display().to_string())
        .map_err(|e| err(crate::error_chain(&e)))?;
    if store
        .load("root")
        .map_err(|e| err(crate::error_chain(&e)))?
        .is_some()
    {
        return Ok(Pinned::Already);
    }
    berth_trust::updater::init(&store, &bytes).map_err(|e| {
        err(format!(
            "not a valid self-signed TUF root: {}; use the fleet's root.json (berth repo init wrote \
             metadata/1.root.json)",
            crate::error_chain(&e)
        ))
    })?;
    db.flush()
        .map_err(|e| err(format!("cannot flush the state database: {e}")))?;
    Ok(Pinned::Now)
}
