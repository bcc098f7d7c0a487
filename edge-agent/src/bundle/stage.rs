//! Staging helpers: a state store that keeps an update's writes aside until
//! the whole import succeeded, a transport that records what the TUF client
//! fetched, and a private temporary directory removed on drop.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use berth_trust::store::StoreError;
use berth_trust::transport::{FetchLimits, TransportError};
use berth_trust::updater::Time;
use berth_trust::{StateStore, Transport};

/// One write the TUF client made, in order.
#[derive(Debug, Clone)]
enum Op {
    Save(String, Vec<u8>),
    Remove(String),
    Floor(Time),
}

/// A [`StateStore`] that reads through to `base` and keeps every write in
/// memory; [`Staged::commit`] replays them on `base` in their order. Without
/// a commit, `base` is never written.
pub struct Staged<'a> {
    base: Option<&'a dyn StateStore>,
    view: RefCell<BTreeMap<String, Option<Vec<u8>>>>,
    floor: RefCell<Option<Time>>,
    log: RefCell<Vec<Op>>,
}

impl std::fmt::Debug for Staged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("writes", &self.log.borrow().len())
            .finish_non_exhaustive()
    }
}

impl<'a> Staged<'a> {
    /// Over `base`, or over nothing (an empty, throw-away store).
    pub fn new(base: Option<&'a dyn StateStore>) -> Self {
        Self {
            base,
            view: RefCell::new(BTreeMap::new()),
            floor: RefCell::new(None),
            log: RefCell::new(Vec::new()),
        }
    }

    /// Applies the staged writes to the base store, in order.
    pub fn commit(self) -> Result<(), StoreError> {
        let Some(base) = self.base else {
            return Ok(());
        };
        for op in self.log.into_inner() {
            match op {
                Op::Save(role, bytes) => base.save(&role, &bytes)?,
                Op::Remove(role) => base.remove(&role)?,
                Op::Floor(t) => base.raise_time_floor(t)?,
            }
        }
        Ok(())
    }
}

impl StateStore for Staged<'_> {
    fn load(&self, role: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.view.borrow().get(role) {
            return Ok(v.clone());
        }
        match self.base {
            Some(b) => b.load(role),
            None => Ok(None),
        }
    }

    fn save(&self, role: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.view
            .borrow_mut()
            .insert(role.to_string(), Some(bytes.to_vec()));
        self.log
            .borrow_mut()
            .push(Op::Save(role.to_string(), bytes.to_vec()));
        Ok(())
    }

    fn remove(&self, role: &str) -> Result<(), StoreError> {
        self.view.borrow_mut().insert(role.to_string(), None);
        self.log.borrow_mut().push(Op::Remove(role.to_string()));
        Ok(())
    }

    fn time_floor(&self) -> Result<Option<Time>, StoreError> {
        let base = match self.base {
            Some(b) => b.time_floor()?,
            None => None,
        };
        Ok(base.max(*self.floor.borrow()))
    }

    fn raise_time_floor(&self, t: Time) -> Result<(), StoreError> {
        let mut f = self.floor.borrow_mut();
        if f.is_none_or(|f| f < t) {
            *f = Some(t);
        }
        self.log.borrow_mut().push(Op::Floor(t));
        Ok(())
    }
}

/// Passes fetches to `inner` and remembers every file it served.
pub struct Recording<T> {
    inner: T,
    pub fetched: RefCell<BTreeMap<String, Vec<u8>>>,
}

impl<T> std::fmt::Debug for Recording<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("fetched", &self.fetched.borrow().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<T: Transport> Recording<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            fetched: RefCell::new(BTreeMap::new()),
        }
    }
}

impl<T: Transport> Transport for Recording<T> {
    fn fetch(&self, name: &str, limits: &FetchLimits) -> Result<Vec<u8>, TransportError> {
        let bytes = self.inner.fetch(name, limits)?;
        self.fetched
            .borrow_mut()
            .insert(name.to_string(), bytes.clone());
        Ok(bytes)
    }
}

/// A private (0700) directory removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new directory under `parent` named `.{prefix}-<pid>-<n>`.
    pub fn new(parent: &Path, prefix: &str) -> std::io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!(".{prefix}-{}-{nanos}-{n}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_trust::DirStore;

    #[test]
    fn staged_writes_reach_the_base_only_on_commit() {
        let d = tempfile::tempdir().unwrap();
        let base = DirStore::open(d.path()).unwrap();
        base.save("root", b"r1").unwrap();
        base.save("timestamp", b"t1").unwrap();
        let t = |s| Time::from_timestamp(s, 0).unwrap();
        base.raise_time_floor(t(100)).unwrap();

        let s = Staged::new(Some(&base));
        s.save("root", b"r2").unwrap();
        s.remove("timestamp").unwrap();
        s.raise_time_floor(t(200)).unwrap();
        assert_eq!(s.load("root").unwrap().as_deref(), Some(&b"r2"[..]));
        assert_eq!(s.load("timestamp").unwrap(), None);
        assert_eq!(s.time_floor().unwrap(), Some(t(200)));
        // Dropped without commit: nothing changed.
        drop(s);
        assert_eq!(base.load("root").unwrap().as_deref(), Some(&b"r1"[..]));
        assert_eq!(base.load("timestamp").unwrap().as_deref(), Some(&b"t1"[..]));
        assert_eq!(base.time_floor().unwrap(), Some(t(100)));

        let s = Staged::new(Some(&base));
        s.save("root", b"r2").unwrap();
        s.remove("timestamp").unwrap();
        s.save("timestamp", b"t2").unwrap();
        s.raise_time_floor(t(200)).unwrap();
        s.commit().unwrap();
        assert_eq!(base.load("root").unwrap().as_deref(), Some(&b"r2"[..]));
        assert_eq!(base.load("timestamp").unwrap().as_deref(), Some(&b"t2"[..]));
        assert_eq!(base.time_floor().unwrap(), Some(t(200)));
    }

    #[test]
    fn temp_dir_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = {
            let t = TempDir::new(d.path(), "x").unwrap();
            fs::write(t.path().join("f"), b"1").unwrap();
            let mode = fs::metadata(t.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            t.path().to_path_buf()
        };
        assert!(!p.exists());
    }
}
