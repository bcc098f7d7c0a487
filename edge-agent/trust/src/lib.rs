//! Berth's chain of trust: a TUF 1.0 client (device side) and signer (operator side).
//!
//! - [`canonical`]: the canonical JSON every signature covers;
//! - [`keys`]: public keys, key IDs, signature verification, private keys for signing;
//! - [`metadata`]: the typed role metadata and the signed envelope;
//! - [`verify`]: threshold verification of an envelope against a role's keys;
//! - [`trusted`]: the pure state machine of trusted metadata (no I/O);
//! - [`store`]: where trusted metadata and the time floor persist (directory, sled);
//! - [`transport`]: fetching named files with size caps, deadlines and a minimum rate;
//! - [`updater`]: the client workflow (refresh, delegation search, target download);
//! - [`repo`]: the signer — building, signing and publishing a repository.

#![forbid(unsafe_code)]

pub mod canonical;
pub mod keys;
pub mod metadata;
pub mod names;
pub mod repo;
pub mod store;
pub mod transport;
pub mod trusted;
pub mod updater;
pub mod verify;

/// The time library of the public API (`updater::Time`).
pub use chrono;
pub use keys::{KeyType, PrivateKey, PublicKey};
pub use metadata::{Envelope, Root, Snapshot, Targets, Timestamp};
pub use store::{DirStore, SledStore, StateStore};
pub use transport::{DirTransport, FetchLimits, HttpTransport, Transport};
pub use trusted::TrustedSet;
pub use updater::{Config, Updater};
