//! The fleet directory: one JSON file (`devices.json` in the operator's
//! fleet directory) recording every approved device — its identity key
//! (attestations), its X25519 recipient (sealed secrets) and its
//! certificate. Written atomically; the operator keeps it with the CA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DeviceError;

/// The file's name inside the fleet directory.
pub const FILE: &str = "devices.json";

/// One approved device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub fleet: String,
    /// Hex of the ed25519 identity public key.
    pub identity: String,
    /// The age X25519 recipient (`age1…`).
    pub recipient: String,
    /// sha256 (hex) of the issued certificate's PEM.
    pub certificate_sha256: String,
    /// Unix seconds.
    pub not_after: i64,
    pub approved_ms: u64,
}

/// Every approved device, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub devices: BTreeMap<String, Entry>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

impl Directory {
    /// Loads the directory of `dir` (empty when there is none yet).
    pub fn load(dir: &Path) -> Result<Directory, DeviceError> {
        let p = path(dir);
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DeviceError::Directory {
                path: p,
                reason: format!("not a fleet directory: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Directory::default()),
            Err(source) => Err(DeviceError::Io { path: p, source }),
        }
    }

    /// Writes the directory into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), DeviceError> {
        std::fs::create_dir_all(dir).map_err(|source| DeviceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let json = serde_json::to_vec_pretty(self).expect("directory serializes");
        super::keys::write_atomic(&path(dir), &json, 0o644)
    }

    /// Records `id`; a device already approved with another identity key
    /// is replaced only when `replace` says so.
    pub fn record(&mut self, id: &str, entry: Entry, replace: bool) -> Result<(), DeviceError> {
        if let Some(old) = self.devices.get(id) {
            if old.identity != entry.identity && !replace {
                return Err(DeviceError::Known {
                    device: id.to_string(),
                    identity: old.identity.clone(),
                });
            }
        }
        self.devices.insert(id.to_string(), entry);
        Ok(())
    }

    /// The recipients of the named devices and of every device of the named
    /// fleets (each device once), by device id.
    pub fn recipients(
        &self,
        dir: &Path,
        devices: &[String],
        fleets: &[String],
    ) -> Result<BTreeMap<String, age::x25519::Recipient>, DeviceError> {
        let mut out = BTreeMap::new();
        let parse = |id: &str, e: &Entry| {
            age::x25519::Recipient::from_str(&e.recipient).map_err(|_| DeviceError::Directory {
                path: path(dir),
                reason: format!("device {id}: {:?} is not an age recipient", e.recipient),
            })
        };
        for id in devices {
            let e = self.devices.get(id).ok_or_else(|| DeviceError::Unknown {
                device: id.clone(),
                directory: path(dir),
            })?;
            out.insert(id.clone(), parse(id, e)?);
        }
        for fleet in fleets {
            let mut any = false;
            for (id, e) in self.devices.iter().filter(|(_, e)| &e.fleet == fleet) {
                out.insert(id.clone(), parse(id, e)?);
                any = true;
            }
            if !any {
                return Err(DeviceError::EmptyFleet {
                    fleet: fleet.clone(),
                    directory: path(dir),
                });
            }
        }
        Ok(out)
    }
}
