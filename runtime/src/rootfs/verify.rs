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
//! never inherited held. The standard library's lock of thread bookkeeping,
//! which a thread holds as it starts or ends, is not covered; the children
//! never take it, as they end with `_exit` (the vendored libcontainer's
//! sixth change, `BERTH-PATCH.md`).

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc;

use super::ImageView;
use crate::measure::{Manifest, MeasureError, Measurement};

/// A measurement running on a thread of its own. Dropped without
/// [`PendingVerdict::wait`], the thread finishes its measurement and ends
/// by itself.
#[derive(Debug)]
pub struct PendingVerdict {
    verdict: mpsc::Receiver<Result<(), MeasureError>>,
    image: PathBuf,
}

impl ImageView {
    /// Starts measuring the view on a new thread and comparing it with
    /// `expected`; [`PendingVerdict::wait`] returns what [`ImageView::verify`]
    /// would have. `manifest` is read (only to name the first difference)
    /// if the tree does not match; `threads` hashing threads at most, or as
    /// many as this process may use CPUs when `None` (counted on the
    /// measuring thread, only for content enough to share: see
    /// [`crate::measure::measure_tree`]).
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
        let expected = expected.clone();
        std::thread::Builder::new()
            .name("measure".into())
            .spawn(move || {
                drop(mnt);
                let trusted = || Manifest::read(manifest.as_ref()?);
                let _ = send.send(clone.verify(&expected, trusted, threads));
                drop(clone);
            })
            .map_err(|e| cannot("start a thread", e))?;
        Ok(PendingVerdict {
            verdict,
            image: self.image.clone(),
        })
    }
}

impl PendingVerdict {
    /// Waits for the verdict: `Ok` when the tree matches, otherwise the
    /// error [`ImageView::verify`] gives (paths named in the image rootfs).
    pub fn wait(self) -> Result<(), MeasureError> {
        self.verdict.recv().unwrap_or_else(|_| {
            Err(MeasureError::Io {
                path: self.image,
                source: std::io::Error::other("the measuring thread ended without a verdict"),
            })
        })
    }
}
