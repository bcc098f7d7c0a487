//! Device lifecycle: enrollment and identity.
//!
//! - [`keys`]: the device's private keys in its state directory (0600);
//! - [`enroll`]: the device side — keys, CSR, the signed enrollment
//!   request, installing the issued certificate;
//! - [`approve`]: the operator side — checking a request and issuing the
//!   MQTT client certificate with the fleet CA;
//! - [`directory`]: the operator's record of approved devices.

pub mod approve;
pub mod directory;
pub mod enroll;
pub mod keys;

use std::path::PathBuf;

/// An enrollment step that cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the certificate signing request: {0}")]
    Csr(String),
    #[error("enrollment request of device {device:?} refused: {reason}")]
    Request { device: String, reason: String },
    #[error("root of trust {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("certificate refused: {0}")]
    Certificate(String),
    #[error("fleet CA: {0}")]
    Ca(String),
    #[error("fleet directory {path}: {reason}")]
    Directory { path: PathBuf, reason: String },
    #[error("device {device:?} is already approved with identity key {identity}; pass --replace to approve its new key (a re-flashed device), after checking it really is that device")]
    Known { device: String, identity: String },
    #[error("device {device:?} is not in the fleet directory {directory}: approve it first (berth device approve)")]
    Unknown { device: String, directory: PathBuf },
    #[error("no device of fleet {fleet:?} is in the fleet directory {directory}: approve the fleet's devices first")]
    EmptyFleet { fleet: String, directory: PathBuf },
}
