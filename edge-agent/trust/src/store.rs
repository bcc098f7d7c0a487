//! Where trusted metadata and the time floor persist: a directory of non-versioned
//! files (the conformance layout, offline tooling) or a sled tree (the device agent).
//! Writes are durable before they return, so a power cut keeps either the old or the
//! new file, never a torn one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::names;

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state store {path}: {source}; check the database is not used by another process")]
    Sled {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("state store: {0}")]
    Name(#[from] names::NameError),
    #[error("state store {path}: time floor {value:?} is not a Unix time; delete it to reset")]
    Floor { path: String, value: String },
}

/// Persistent trusted state: metadata files by role name, and the time floor.
pub trait StateStore {
    /// The trusted bytes of `role` (`root`, `timestamp`, …, or a delegated role).
    fn load(&self, role: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the trusted bytes of `role`, durably.
    fn save(&self, role: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Forgets `role` (fast-forward recovery after a key rotation).
    fn remove(&self, role: &str) -> Result<(), StoreError>;
    /// The newest time this device has trusted.
    fn time_floor(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Raises the time floor (never lowers it).
    fn raise_time_floor(&self, t: DateTime<Utc>) -> Result<(), StoreError>;
}

const FLOOR: &str = ".berth-time-floor";

/// Trusted metadata as `DIR/<role>.json` (role names percent-encoded), the time floor
/// in `DIR/.berth-time-floor`.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn open(dir: &Path) -> Result<DirStore, StoreError> {
        fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        Ok(DirStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, role: &str) -> Result<PathBuf, StoreError> {
        Ok(self
            .dir
            .join(format!("{}.json", names::role_file_stem(role)?)))
    }
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    if let Ok(d) = fs::File::open(dir) {
        d.sync_all().map_err(|e| io(dir, e))?;
    }
    Ok(())
}

impl StateStore for DirStore {
    fn load(&self, role: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.path(role)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    fn save(&self, role: &str, bytes: &[u8]) -> Result<(), StoreError> {
        write_atomic(&self.path(role)?, bytes)
    }

    fn remove(&self, role: &str) -> Result<(), StoreError> {
        let p = self.path(role)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, e)),
            _ => Ok(()),
        }
    }

    fn time_floor(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let p = self.dir.join(FLOOR);
        match fs::read_to_string(&p) {
            Ok(s) => parse_floor(&p, s.trim()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    fn raise_time_floor(&self, t: DateTime<Utc>) -> Result<(), StoreError> {
        if self.time_floor()?.is_some_and(|f| f >= t) {
            return Ok(());
        }
        write_atomic(&self.dir.join(FLOOR), t.timestamp().to_string().as_bytes())
    }
}

fn parse_floor(path: &Path, s: &str) -> Result<DateTime<Utc>, StoreError> {
    s.parse::<i64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| StoreError::Floor {
            path: path.display().to_string(),
            value: s.into(),
        })
}

/// Trusted metadata in a sled tree `tuf` (keys `meta/<role>` and `time_floor`);
/// every write is flushed before it returns.
#[derive(Debug, Clone)]
pub struct SledStore {
    tree: sled::Tree,
    path: String,
}

impl SledStore {
    /// Opens (creating) a sled database at `path`.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let db = sled::open(path).map_err(|source| StoreError::Sled {
            path: path.display().to_string(),
            source,
        })?;
        SledStore::in_db(&db, &path.display().to_string())
    }

    /// Uses the `tuf` tree of an already open database (the agent's state database).
    pub fn in_db(db: &sled::Db, path: &str) -> Result<SledStore, StoreError> {
        let tree = db.open_tree("tuf").map_err(|source| StoreError::Sled {
            path: path.into(),
            source,
        })?;
        Ok(SledStore {
            tree,
            path: path.into(),
        })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush().map(|_| ()).map_err(|e| self.err(e))
    }
}

impl StateStore for SledStore {
    fn load(&self, role: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self
            .tree
            .get(format!("meta/{role}"))
            .map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn save(&self, role: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.tree
            .insert(format!("meta/{role}"), bytes)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    fn remove(&self, role: &str) -> Result<(), StoreError> {
        self.tree
            .remove(format!("meta/{role}"))
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    fn time_floor(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let v = self.tree.get("time_floor").map_err(|e| self.err(e))?;
        match v {
            None => Ok(None),
            Some(v) => {
                let s = String::from_utf8_lossy(&v).to_string();
                parse_floor(Path::new(&self.path), &s).map(Some)
            }
        }
    }

    fn raise_time_floor(&self, t: DateTime<Utc>) -> Result<(), StoreError> {
        let new = t.timestamp();
        self.tree
            .fetch_and_update("time_floor", |old| {
                let old = old
                    .and_then(|o| std::str::from_utf8(o).ok())
                    .and_then(|s| s.parse::<i64>().ok());
                Some(old.map_or(new, |o| o.max(new)).to_string().into_bytes())
            })
            .map_err(|e| self.err(e))?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn StateStore) {
        assert_eq!(s.load("root").unwrap(), None);
        s.save("root", b"one").unwrap();
        s.save("root", b"two").unwrap();
        assert_eq!(s.load("root").unwrap().as_deref(), Some(&b"two"[..]));
        s.save("team/a", b"d").unwrap();
        assert_eq!(s.load("team/a").unwrap().as_deref(), Some(&b"d"[..]));
        s.remove("root").unwrap();
        s.remove("root").unwrap();
        assert_eq!(s.load("root").unwrap(), None);
        let t1 = DateTime::from_timestamp(2_000_000_000, 0).unwrap();
        let t0 = DateTime::from_timestamp(1_000_000_000, 0).unwrap();
        s.raise_time_floor(t1).unwrap();
        s.raise_time_floor(t0).unwrap();
        assert_eq!(s.time_floor().unwrap(), Some(t1));
    }

    #[test]
    fn dir_store() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::open(d.path()).unwrap();
        exercise(&s);
        assert!(d.path().join("team%2Fa.json").exists());
    }

    #[test]
    fn sled_store() {
        let d = tempfile::tempdir().unwrap();
        exercise(&SledStore::open(&d.path().join("db")).unwrap());
    }
}
