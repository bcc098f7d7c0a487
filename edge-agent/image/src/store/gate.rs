//! Between a pull and the unpack that overlaps it: the unpack opens a blob
//! only once the pull has verified and committed it, and stops as soon as
//! the pull fails.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::registry::Digest;

/// Which blobs are verified in the store, or why none more will be.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    aborted: AtomicBool,
}

#[derive(Debug, Default)]
struct GateState {
    ready: HashSet<String>,
    abort: Option<String>,
}

impl Gate {
    /// Lets readers of `d` through: it is verified and committed.
    pub fn ready(&self, d: &Digest) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.ready.insert(d.hex().to_string());
        self.changed.notify_all();
    }

    /// No more blobs will come: readers waiting or reading fail with `why`.
    pub fn abort(&self, why: String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.abort.get_or_insert(why);
        self.aborted.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Blocks until `d` is ready (Ok) or the pull was aborted (Err: why).
    pub fn wait(&self, d: &Digest) -> Result<(), String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(why) = &s.abort {
                return Err(why.clone());
            }
            if s.ready.contains(d.hex()) {
                return Ok(());
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn check(&self) -> io::Result<()> {
        if !self.aborted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Err(io::Error::other(s.abort.clone().unwrap_or_default()))
    }
}

/// A blob file opened on first read, once the gate lets it through; every
/// read fails once the pull was aborted.
#[derive(Debug)]
pub struct GatedBlob<'a> {
    gate: &'a Gate,
    digest: Digest,
    path: PathBuf,
    file: Option<File>,
}

impl<'a> GatedBlob<'a> {
    pub fn new(gate: &'a Gate, digest: Digest, path: PathBuf) -> Self {
        Self {
            gate,
            digest,
            path,
            file: None,
        }
    }
}

impl Read for GatedBlob<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.gate.check()?;
        if self.file.is_none() {
            self.gate.wait(&self.digest).map_err(io::Error::other)?;
            self.file = Some(File::open(&self.path)?);
        }
        self.file.as_mut().expect("opened above").read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn readers_wait_for_ready_and_stop_at_abort() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("blob");
        std::fs::write(&p, b"layer bytes").unwrap();
        let d = Digest::of(b"layer bytes");
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let (d2, p2) = (d.clone(), p.clone());
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            GatedBlob::new(&g, d2, p2)
                .read_to_end(&mut out)
                .map(|_| out)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished(), "read before the blob was ready");
        gate.ready(&d);
        assert_eq!(reader.join().unwrap().unwrap(), b"layer bytes");

        let other = Digest::of(b"other");
        let g = gate.clone();
        let waiting = std::thread::spawn(move || GatedBlob::new(&g, other, p).read(&mut [0; 4]));
        gate.abort("blob sha256:… failed".into());
        let e = waiting.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        // A ready blob is refused too once aborted: the unpack stops.
        let mut b = GatedBlob::new(&gate, d, t.path().join("blob"));
        assert!(b.read(&mut [0; 4]).is_err());
    }
}
