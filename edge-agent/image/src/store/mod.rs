//! The content-addressed blob store: `blobs/sha256/<hex>`, each file written
//! under `ingest/` and renamed into place only after its digest and size were
//! verified; reference counts in sled; garbage collection; a free-space check.

mod gate;
mod ingest;
mod refs;
mod unpack;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use gate::{Gate, GatedBlob};
pub use ingest::Ingest;
pub use refs::GcReport;

use crate::registry::limits::Verifier;
use crate::registry::Digest;

/// Space kept free beyond what a pull needs (sled, directory entries, logs).
pub const RESERVE_BYTES: u64 = 1 << 20;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot open the store database under {}: {source}; is another berth process using this store?", path.display())]
    Db { path: PathBuf, source: sled::Error },
    #[error("store database under {} failed to {what}: {source}", path.display())]
    DbOp {
        what: &'static str,
        path: PathBuf,
        source: sled::Error,
    },
    #[error("the store at {} has {available} bytes free but needs {needed} (plus a {reserve}-byte reserve); free space (garbage-collect unused images) or use a larger filesystem", path.display())]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
        reserve: u64,
    },
    #[error("the filesystem of {} is full while writing {digest}; the partial blob was removed — free space and pull again", path.display())]
    Full { path: PathBuf, digest: Digest },
    #[error(
        "blob {digest} in the store is {size} bytes, over the {limit}-byte limit for this use"
    )]
    TooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("blob {0} is not in the store; pull the image first")]
    Missing(Digest),
    #[error("verified content {verified} does not belong to the ingest of {ingest}")]
    WrongProof { ingest: Digest, verified: Digest },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn make_dirs(root: &Path) -> Result<(), StoreError> {
    for d in [root.join("blobs/sha256"), root.join("ingest")] {
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    Ok(())
}

/// A blob store on disk. Cloning shares the same database.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    db: sled::Db,
    counts: sled::Tree,
    owners: sled::Tree,
}

/// What [`Store::check`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreCheck {
    pub blobs: usize,
    pub partials: usize,
    pub problems: Vec<String>,
}

impl Store {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        make_dirs(root)?;
        let dbp = root.join("db");
        let db = sled::Config::new()
            .path(&dbp)
            .cache_capacity(4 << 20)
            .open()
            .map_err(|source| StoreError::Db {
                path: dbp.clone(),
                source,
            })?;
        Self::in_db(root, db, dbp)
    }

    /// Opens (creating if needed) the store rooted at `root`, keeping its
    /// reference counts in trees of `db`, a database the caller already
    /// holds (one cache and one flusher for a whole process).
    pub fn with_db(root: &Path, db: &sled::Db) -> Result<Self, StoreError> {
        make_dirs(root)?;
        Self::in_db(root, db.clone(), root.to_path_buf())
    }

    fn in_db(root: &Path, db: sled::Db, dbp: PathBuf) -> Result<Self, StoreError> {
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::DbOp {
                what: "open a tree",
                path: dbp.clone(),
                source,
            })
        };
        let (counts, owners) = (tree("blob-refcounts")?, tree("owners")?);
        Ok(Self {
            root: root.to_path_buf(),
            db,
            counts,
            owners,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a verified blob lives (whether or not it is present).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}.partial", d.hex()))
    }

    /// Whether a verified copy of `d` is present.
    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Bytes already fetched towards `d` by an interrupted pull.
    pub fn partial_len(&self, d: &Digest) -> u64 {
        fs::metadata(self.partial_path(d))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Removes what an interrupted download of `d` left (nothing if none).
    pub fn remove_partial(&self, d: &Digest) -> Result<(), StoreError> {
        let p = self.partial_path(d);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
                what: "remove",
                path: p,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Reads a whole (small) blob: manifests and configs.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let f = fs::File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing(d.clone()),
            _ => StoreError::Io {
                what: "open",
                path: p.clone(),
                source: e,
            },
        })?;
        let size = f.metadata().map_err(io_err("stat", &p))?.len();
        if size > limit {
            return Err(StoreError::TooLarge {
                digest: d.clone(),
                size,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        f.take(limit)
            .read_to_end(&mut buf)
            .map_err(io_err("read", &p))?;
        Ok(buf)
    }

    /// Opens the ingest of `d`, keeping what an interrupted pull already wrote.
    pub fn ingest(&self, d: &Digest) -> Result<Ingest, StoreError> {
        Ingest::open(self, d)
    }

    /// Free bytes on the store's filesystem for an unprivileged writer.
    pub fn available(&self) -> Result<u64, StoreError> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| StoreError::Io {
            what: "statvfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Fails with a clear error unless `needed` bytes plus a reserve are free.
    pub fn check_space(&self, needed: u64) -> Result<(), StoreError> {
        let available = self.available()?;
        if available < needed.saturating_add(RESERVE_BYTES) {
            return Err(StoreError::NoSpace {
                path: self.root.clone(),
                needed,
                available,
                reserve: RESERVE_BYTES,
            });
        }
        Ok(())
    }

    /// Re-hashes every blob and cross-checks the reference counts.
    pub fn check(&self) -> Result<StoreCheck, StoreError> {
        let mut out = StoreCheck::default();
        let dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                out.problems
                    .push(format!("stray file {name} in {}", dir.display()));
                continue;
            };
            out.blobs += 1;
            let p = e.path();
            let size = e.metadata().map_err(io_err("stat", &p))?.len();
            let mut v = Verifier::new(d.clone(), size);
            let mut f = fs::File::open(&p).map_err(io_err("open", &p))?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = f.read(&mut buf).map_err(io_err("read", &p))?;
                if n == 0 {
                    break;
                }
                if v.update(&buf[..n]).is_err() {
                    break;
                }
            }
            if let Err(e) = v.finish() {
                out.problems.push(format!("blob {d}: {e}"));
            }
        }
        let ing = self.root.join("ingest");
        out.partials = fs::read_dir(&ing).map_err(io_err("list", &ing))?.count();
        for (d, n) in self.ref_counts()? {
            if n > 0 && !self.has(&d) {
                out.problems
                    .push(format!("blob {d} has {n} references but is missing"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_check_reports_numbers() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        assert!(s.check_space(1).is_ok());
        let e = s.check_space(u64::MAX / 2).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("bytes free but needs") && msg.contains(&t.path().display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn remove_partial_drops_only_the_partial() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"abc");
        let mut i = s.ingest(&d).unwrap();
        i.append(b"ab").unwrap();
        i.flush().unwrap();
        assert_eq!(s.partial_len(&d), 2);
        s.remove_partial(&d).unwrap();
        assert_eq!(s.partial_len(&d), 0);
        s.remove_partial(&d).unwrap();
        assert_eq!(s.check().unwrap().partials, 0);
    }

    #[test]
    fn missing_blob_says_so() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"x");
        assert!(matches!(s.read_blob(&d, 10), Err(StoreError::Missing(_))));
        assert!(!s.has(&d));
        assert_eq!(s.check().unwrap(), StoreCheck::default());
    }
}
