//! Reference counts: each owner (an image pull, a generation) holds a set of
//! digests; a blob no owner holds is garbage. Every change is one sled
//! transaction over both trees, flushed before it returns.

use std::collections::BTreeSet;
use std::fs;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{io_err, Store, StoreError};
use crate::registry::Digest;

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<Digest>,
    pub freed_bytes: u64,
    pub partials_removed: usize,
}

fn decode(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Store {
    /// Makes `owner` hold exactly `digests` (replacing what it held), in one
    /// transaction. Every digest must already be present: nothing is ever
    /// half-referenced.
    pub fn set_refs(&self, owner: &str, digests: &[Digest]) -> Result<(), StoreError> {
        let new: BTreeSet<String> = digests.iter().map(Digest::to_string).collect();
        for d in digests {
            if !self.has(d) {
                return Err(StoreError::Missing(d.clone()));
            }
        }
        let encoded = serde_json::to_vec(&new).expect("a set of strings serializes");
        self.update(owner, Some(&new), &encoded)
    }

    /// Drops `owner` and its references (its blobs become garbage if no one else holds them).
    pub fn release(&self, owner: &str) -> Result<(), StoreError> {
        self.update(owner, None, &[])
    }

    /// The digests `owner` holds.
    pub fn refs(&self, owner: &str) -> Result<Vec<Digest>, StoreError> {
        let v = self
            .owners
            .get(owner.as_bytes())
            .map_err(|e| self.db_err("read", e))?;
        let set: BTreeSet<String> = v
            .map(|v| serde_json::from_slice(&v).unwrap_or_default())
            .unwrap_or_default();
        Ok(set.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// Every digest with its reference count.
    pub fn ref_counts(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.counts.iter() {
            let (k, v) = kv.map_err(|e| self.db_err("read", e))?;
            if let Ok(d) = String::from_utf8_lossy(&k).parse() {
                out.push((d, decode(&v)));
            }
        }
        Ok(out)
    }

    fn update(
        &self,
        owner: &str,
        new: Option<&BTreeSet<String>>,
        encoded: &[u8],
    ) -> Result<(), StoreError> {
        let r = (&self.owners, &self.counts).transaction(|(owners, counts)| {
            let old: BTreeSet<String> = owners
                .get(owner.as_bytes())?
                .map(|v| serde_json::from_slice(&v).unwrap_or_default())
                .unwrap_or_default();
            let empty = BTreeSet::new();
            let new = new.unwrap_or(&empty);
            for gone in old.difference(new) {
                let n = counts
                    .get(gone.as_bytes())?
                    .map(|v| decode(&v))
                    .unwrap_or(0);
                if n <= 1 {
                    counts.remove(gone.as_bytes())?;
                } else {
                    counts.insert(gone.as_bytes(), &(n - 1).to_be_bytes())?;
                }
            }
            for added in new.difference(&old) {
                let n = counts
                    .get(added.as_bytes())?
                    .map(|v| decode(&v))
                    .unwrap_or(0);
                counts.insert(added.as_bytes(), &(n + 1).to_be_bytes())?;
            }
            if new.is_empty() {
                owners.remove(owner.as_bytes())?;
            } else {
                owners.insert(owner.as_bytes(), encoded)?;
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match r {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(self.db_err("update references", e)),
            Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
        }
        self.db.flush().map_err(|e| self.db_err("flush", e))?;
        Ok(())
    }

    /// Removes every blob no owner references, and abandoned partial downloads.
    /// Run it when no pull is in progress.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>()
            else {
                continue;
            };
            let held = self
                .counts
                .get(d.to_string().as_bytes())
                .map_err(|e| self.db_err("read", e))?
                .is_some_and(|v| decode(&v) > 0);
            if !held {
                let p = e.path();
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
                report.freed_bytes += size;
                report.removed.push(d);
            }
        }
        let ing = self.root.join("ingest");
        for e in fs::read_dir(&ing).map_err(io_err("list", &ing))? {
            let p = e.map_err(io_err("list", &ing))?.path();
            report.freed_bytes += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
            report.partials_removed += 1;
        }
        tracing::info!(
            removed = report.removed.len(),
            freed = report.freed_bytes,
            "store gc"
        );
        Ok(report)
    }

    fn db_err(&self, what: &'static str, source: sled::Error) -> StoreError {
        StoreError::DbOp {
            what,
            path: self.root.join("db"),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::limits::Verifier;

    fn put(s: &Store, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let mut i = s.ingest(&d).unwrap();
        let mut v = Verifier::new(d.clone(), data.len() as u64);
        v.update(data).unwrap();
        i.append(data).unwrap();
        i.commit(v.finish().unwrap()).unwrap();
        d
    }

    #[test]
    fn refcounts_and_gc() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let (a, b, c) = (put(&s, b"a"), put(&s, b"b"), put(&s, b"c"));
        s.set_refs("gen-1", &[a.clone(), b.clone()]).unwrap();
        s.set_refs("gen-2", std::slice::from_ref(&b)).unwrap();
        let counts: Vec<u64> = s
            .ref_counts()
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 3);
        let g = s.gc().unwrap();
        assert_eq!(g.removed, vec![c.clone()]);
        assert!(s.has(&a) && s.has(&b) && !s.has(&c));
        s.set_refs("gen-1", std::slice::from_ref(&b)).unwrap();
        assert_eq!(s.gc().unwrap().removed, vec![a.clone()]);
        s.release("gen-1").unwrap();
        assert!(s.gc().unwrap().removed.is_empty(), "gen-2 still holds b");
        assert_eq!(s.refs("gen-2").unwrap(), vec![b.clone()]);
        s.release("gen-2").unwrap();
        assert_eq!(s.gc().unwrap().removed, vec![b]);
        assert!(s.ref_counts().unwrap().is_empty());
        assert!(s.check().unwrap().problems.is_empty());
    }

    #[test]
    fn refs_to_absent_blobs_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let e = s.set_refs("x", &[Digest::of(b"nope")]).unwrap_err();
        assert!(matches!(e, StoreError::Missing(_)));
        assert!(s.refs("x").unwrap().is_empty());
    }
}
