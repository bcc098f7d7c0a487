//! Verifying a view while the container is prepared.
//!
//! [`ImageView::verify_in_background`] measures the view on a thread of its
//! own while the caller goes on with everything that does not run image
//! code: the id range, the spec, the idmapping, the namespaces, cgroups and
//! mounts of the container's init, which then waits for `start`. The caller
//! takes the verdict with [`PendingVerdict::wait`] before the container is
//! handed out, so no workload is ever started from a tree that was not
//! verified; on a mismatch it deletes what it prepared.
//!
//! The thread measures a clone of the view (`open_tree` of the view's own
//! descriptor, not of a path): the same tree of the same mount, unaffected
//! by the idmapping the caller sets on the view meanwhile, so owners are
//! measured as on the host, as [`ImageView::verify`] does. The thread
//! measures through a descriptor of the clone's root directory and closes
//! the clone's own descriptor at once: that close detaches the clone (and
//! waits for an RCU grace period) on the measuring thread, while the
//! directory descriptor keeps the tree reachable for the measurement, and
//! a copy of it (in a process forked meanwhile) closes without waiting.
//!
//! The processes the runtime creates meanwhile are copies of the calling
//! thread made by the C library's `fork` (libcontainer's plain children; see
//! its `process/fork.rs`), which holds the allocator's and stdio's locks
//! across the copy: a lock the measuring thread holds at that instant is
//! never inherited held. The standard library's own locks are not covered:
//! a thread that starts or ends holds one (its stack-overflow bookkeeping),
//! and a child forked at that instant, which takes the same lock when it
//! exits, would wait for it for ever. So no thread of the measurement
//! starts or ends while the caller forks: the caller waits for the
//! measuring thread to be running ([`PendingVerdict::settle`]) before it
//! creates the container; the thread hashes alone until the caller takes
//! the verdict (when it forks no more), and only then may start helpers;
//! and it ends only once the caller is done with it.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use super::ImageView;
use crate::measure::{Manifest, MeasureError, Measurement, Workers};

/// A measurement running on a thread of its own. Dropped without
/// [`PendingVerdict::wait`], the thread finishes its measurement and ends
/// by itself.
#[derive(Debug)]
pub struct PendingVerdict {
    verdict: mpsc::Receiver<Result<(), MeasureError>>,
    image: PathBuf,
    /// A message, or a hang-up, once the thread runs its own code.
    running: mpsc::Receiver<()>,
    /// Set when the caller takes the verdict: it forks no more.
    forks_done: Arc<AtomicBool>,
    /// Dropped with this: the thread, done, then ends.
    _release: mpsc::SyncSender<()>,
}

impl ImageView {
    /// Starts measuring the view on a new thread and comparing it with
    /// `expected`; [`PendingVerdict::wait`] returns what [`ImageView::verify`]
    /// would have. `manifest` is read (only to name the first difference)
    /// if the tree does not match; `threads` hashing threads at most, or as
    /// many as this process may use CPUs when `None` (counted on the
    /// measuring thread).
    pub fn verify_in_background(
        &self,
        expected: &Measurement,
        manifest: Option<PathBuf>,
        threads: Option<usize>,
    ) -> Result<PendingVerdict, MeasureError> {
        let cannot = |what: &str, e: std::io::Error| MeasureError::Io {
            path: self.image.clone(),
            source: std::io::Error::new(e.kind(), format!("cannot {what} to measure it: {e}")),
        };
        let mnt = super::open_tree_clone_at(
            self.mnt.as_raw_fd(),
            c"",
            libc::AT_EMPTY_PATH as libc::c_uint,
        )
        .map_err(|e| cannot("clone the view", e))?;
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(format!("/proc/self/fd/{}/.", mnt.as_raw_fd()))
            .map_err(|e| cannot("open the clone of the view", e))?;
        let clone = ImageView {
            mnt: root.into(),
            image: self.image.clone(),
            holder: None,
        };
        let (send, verdict) = mpsc::sync_channel(1);
        let (started, running) = mpsc::sync_channel(1);
        let (release, released) = mpsc::sync_channel::<()>(0);
        let forks_done = Arc::new(AtomicBool::new(false));
        let after = Arc::clone(&forks_done);
        let expected = expected.clone();
        std::thread::Builder::new()
            .name("measure".into())
            .spawn(move || {
                let _ = started.send(());
                drop(started);
                drop(mnt);
                let threads = threads.unwrap_or_else(crate::measure::default_threads);
                let trusted = || Manifest::read(manifest.as_ref()?);
                let workers = Workers {
                    max: threads,
                    after: Some(&after),
                };
                let _ = send.send(clone.verify(&expected, trusted, workers));
                drop(clone);
                let _ = released.recv();
            })
            .map_err(|e| cannot("start a thread", e))?;
        Ok(PendingVerdict {
            verdict,
            image: self.image.clone(),
            running,
            forks_done,
            _release: release,
        })
    }
}

impl PendingVerdict {
    /// Returns once the measuring thread runs its own code, past the
    /// standard library's start of a thread: call it before forking.
    pub fn settle(&self) {
        let _ = self.running.recv();
    }

    /// Waits for the verdict: `Ok` when the tree matches, otherwise the
    /// error [`ImageView::verify`] gives (paths named in the image rootfs).
    pub fn wait(self) -> Result<(), MeasureError> {
        self.forks_done.store(true, Ordering::Release);
        self.verdict.recv().unwrap_or_else(|_| {
            Err(MeasureError::Io {
                path: self.image,
                source: std::io::Error::other("the measuring thread ended without a verdict"),
            })
        })
    }
}
