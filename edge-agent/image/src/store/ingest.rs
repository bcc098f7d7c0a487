//! Writing one blob: appended under `ingest/`, resumable, renamed into
//! `blobs/sha256/` only with a proof of verification.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::{Store, StoreError};
use crate::registry::limits::{Verified, Verifier};
use crate::registry::Digest;

const ENOSPC: i32 = 28;

/// An in-progress blob. Bytes reach the file in order; `len` counts them.
#[derive(Debug)]
pub struct Ingest {
    digest: Digest,
    partial: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
    len: u64,
}

impl Ingest {
    pub(super) fn open(store: &Store, d: &Digest) -> Result<Self, StoreError> {
        let partial = store.partial_path(d);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(|e| map(e, "create", &partial, d))?;
        let len = file
            .metadata()
            .map_err(|e| map(e, "stat", &partial, d))?
            .len();
        Ok(Self {
            digest: d.clone(),
            partial,
            dest: store.blob_path(d),
            file: Some(BufWriter::with_capacity(256 << 10, file)),
            len,
        })
    }

    /// Bytes written so far (including those of an interrupted earlier pull).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Feeds what is already on disk to `v`, so a fetch resumes after it. A
    /// partial longer than the declared size is discarded.
    pub fn resume_into(&mut self, v: &mut Verifier) -> Result<(), StoreError> {
        v.reset();
        self.flush()?;
        let mut f =
            File::open(&self.partial).map_err(|e| map(e, "open", &self.partial, &self.digest))?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| map(e, "read", &self.partial, &self.digest))?;
            if n == 0 {
                return Ok(());
            }
            if v.update(&buf[..n]).is_err() {
                v.reset();
                return self.truncate();
            }
        }
    }

    /// Appends verified-so-far bytes.
    pub fn append(&mut self, b: &[u8]) -> Result<(), StoreError> {
        let f = self.writer()?;
        if let Err(e) = f.write_all(b) {
            return Err(self.fail(e, "write"));
        }
        self.len += b.len() as u64;
        Ok(())
    }

    /// Pushes buffered bytes to the file (before a resume computes its offset).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let f = self.writer()?;
        if let Err(e) = f.flush() {
            return Err(self.fail(e, "write"));
        }
        Ok(())
    }

    /// Drops everything written (the server ignored a Range request, or sent bad content).
    pub fn truncate(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        let f = self.writer()?.get_ref();
        f.set_len(0)
            .map_err(|e| map(e, "truncate", &self.partial, &self.digest))?;
        self.len = 0;
        Ok(())
    }

    /// Makes the blob visible under its digest: flush, fsync, rename, fsync dir.
    pub fn commit(mut self, proof: Verified) -> Result<PathBuf, StoreError> {
        if proof.digest() != &self.digest || proof.size() != self.len {
            return Err(StoreError::WrongProof {
                ingest: self.digest.clone(),
                verified: proof.digest().clone(),
            });
        }
        self.flush()?;
        let f = self.file.take().expect("ingest file present until commit");
        let f = f.into_inner().map_err(|e| {
            let (e, _) = e.into_parts();
            map(e, "write", &self.partial, &self.digest)
        })?;
        if let Err(e) = f.sync_all() {
            return Err(self.fail(e, "fsync"));
        }
        drop(f);
        fs::rename(&self.partial, &self.dest)
            .map_err(|e| map(e, "rename", &self.dest, &self.digest))?;
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = File::open(dir) {
                d.sync_all()
                    .map_err(|e| map(e, "fsync", dir, &self.digest))?;
            }
        }
        Ok(self.dest.clone())
    }

    /// Removes the partial file (bad content, or a full disk).
    pub fn discard(mut self) -> Result<(), StoreError> {
        self.file.take();
        match fs::remove_file(&self.partial) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map(e, "remove", &self.partial, &self.digest)),
        }
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, StoreError> {
        let (p, d) = (&self.partial, &self.digest);
        self.file.as_mut().ok_or_else(|| StoreError::Io {
            what: "write",
            path: p.clone(),
            source: io::Error::other(format!("the ingest of {d} was already closed")),
        })
    }

    /// On a full disk the partial file is removed at once: a pull never keeps
    /// the filesystem full.
    fn fail(&mut self, e: io::Error, what: &'static str) -> StoreError {
        if e.raw_os_error() == Some(ENOSPC) {
            self.file.take();
            let _ = fs::remove_file(&self.partial);
            self.len = 0;
            return StoreError::Full {
                path: self.partial.clone(),
                digest: self.digest.clone(),
            };
        }
        map(e, what, &self.partial, &self.digest)
    }
}

fn map(e: io::Error, what: &'static str, p: &std::path::Path, d: &Digest) -> StoreError {
    if e.raw_os_error() == Some(ENOSPC) {
        return StoreError::Full {
            path: p.to_path_buf(),
            digest: d.clone(),
        };
    }
    StoreError::Io {
        what,
        path: p.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_needs_matching_proof_and_resume_rehashes() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let data = b"0123456789";
        let d = Digest::of(data);
        let mut i = s.ingest(&d).unwrap();
        i.append(&data[..4]).unwrap();
        drop(i);
        assert_eq!(s.partial_len(&d), 4);
        let mut i = s.ingest(&d).unwrap();
        let mut v = Verifier::new(d.clone(), 10);
        i.resume_into(&mut v).unwrap();
        assert_eq!((i.len(), v.received()), (4, 4));
        v.update(&data[4..]).unwrap();
        i.append(&data[4..]).unwrap();
        let other = Digest::of(b"other");
        let mut w = Verifier::new(other.clone(), 5);
        w.update(b"other").unwrap();
        let wrong = w.finish().unwrap();
        let mut i2 = s.ingest(&other).unwrap();
        i2.append(b"other").unwrap();
        assert!(matches!(
            s.ingest(&d).unwrap().commit(wrong),
            Err(StoreError::WrongProof { .. })
        ));
        let p = i.commit(v.finish().unwrap()).unwrap();
        assert_eq!(fs::read(p).unwrap(), data);
        assert!(s.has(&d));
        assert_eq!(s.partial_len(&d), 0);
        i2.discard().unwrap();
        assert_eq!(s.check().unwrap().partials, 0);
    }

    #[test]
    fn overlong_partial_is_discarded_on_resume() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"ab");
        let mut i = s.ingest(&d).unwrap();
        i.append(b"abc").unwrap();
        let mut v = Verifier::new(d, 2);
        i.resume_into(&mut v).unwrap();
        assert_eq!((i.len(), v.received()), (0, 0));
    }
}
