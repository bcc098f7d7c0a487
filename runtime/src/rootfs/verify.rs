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
//! The thread measures at idle priority (`SCHED_IDLE`) when the runtime may
//! raise it back (`CAP_SYS_NICE`, or an `RLIMIT_NICE` that allows nice 0):
//! whatever the container's preparation needs to run (the runtime's own
//! processes, the kernel's workers) then takes its CPU at once instead of
//! queueing behind the hashing, and the scheduler counts that CPU as free
//! when it places them. A caller that comes to wait for a verdict not ready
//! yet raises the thread back to normal priority, so a busy machine delays
//! the verdict no more than it would any other work. The thread lives until
//! the caller is done with it, so the thread id raised is always its own.
//!
//! The processes the runtime creates meanwhile are copies of the calling
//! thread made by the C library's `fork` (libcontainer's plain children; see
//! its `process/fork.rs`), which holds the allocator's and stdio's locks
//! across the copy: a lock the measuring thread holds at that instant is
//! never inherited held.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc};

use super::ImageView;
use crate::measure::{Manifest, MeasureError, Measurement};

/// A measurement running on a thread of its own. Dropped without
/// [`PendingVerdict::wait`], the thread finishes its measurement and ends
/// by itself.
#[derive(Debug)]
pub struct PendingVerdict {
    verdict: mpsc::Receiver<Result<(), MeasureError>>,
    image: PathBuf,
    priority: Arc<Priority>,
    /// Dropped with this: the measuring thread, done, then ends.
    _release: mpsc::SyncSender<()>,
}

/// The measuring thread's priority, shared with the caller.
#[derive(Debug, Default)]
struct Priority {
    /// The thread's id once it measures at idle priority; 0 before.
    idle_tid: AtomicI32,
    /// Set when the caller waits for the verdict.
    urgent: AtomicBool,
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
        let (release, released) = mpsc::sync_channel::<()>(0);
        let expected = expected.clone();
        let priority = Arc::new(Priority::default());
        let shared = Arc::clone(&priority);
        std::thread::Builder::new()
            .name("measure".into())
            .spawn(move || {
                drop(mnt);
                if may_raise() && set_policy(0, libc::SCHED_IDLE) {
                    let tid = nix::unistd::gettid().as_raw();
                    shared.idle_tid.store(tid, Ordering::SeqCst);
                    // The caller may have looked before the store above.
                    if shared.urgent.load(Ordering::SeqCst) {
                        set_policy(0, libc::SCHED_OTHER);
                    }
                }
                let threads = threads.unwrap_or_else(crate::measure::default_threads);
                let trusted = || Manifest::read(manifest.as_ref()?);
                let _ = send.send(clone.verify(&expected, trusted, threads));
                drop(clone);
                // Alive until the caller is done (its sender dropped).
                let _ = released.recv();
            })
            .map_err(|e| cannot("start a thread", e))?;
        Ok(PendingVerdict {
            verdict,
            image: self.image.clone(),
            priority,
            _release: release,
        })
    }
}

impl PendingVerdict {
    /// Waits for the verdict: `Ok` when the tree matches, otherwise the
    /// error [`ImageView::verify`] gives (paths named in the image rootfs).
    pub fn wait(self) -> Result<(), MeasureError> {
        if let Ok(ready) = self.verdict.try_recv() {
            return ready;
        }
        self.priority.urgent.store(true, Ordering::SeqCst);
        let tid = self.priority.idle_tid.load(Ordering::SeqCst);
        if tid != 0 && !set_policy(tid, libc::SCHED_OTHER) {
            tracing::debug!(tid, "cannot raise the measuring thread's priority");
        }
        self.verdict.recv().unwrap_or_else(|_| {
            Err(MeasureError::Io {
                path: self.image,
                source: std::io::Error::other("the measuring thread ended without a verdict"),
            })
        })
    }
}

/// Whether this process may raise a thread from `SCHED_IDLE` back to
/// `SCHED_OTHER` at nice 0: `CAP_SYS_NICE`, or `RLIMIT_NICE` of 20 or more.
fn may_raise() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_NICE,
    )
    .unwrap_or(false)
        || nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE)
            .is_ok_and(|(soft, _)| soft >= 20)
}

/// Sets the scheduling policy of thread `tid` (0: the calling thread) at
/// priority 0; whether it took.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call,
    // which only reads it.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: a plain query of a thread's policy.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// The policy is a thread's own: lowering one thread leaves the others
    /// alone, and the caller raises exactly the thread it names.
    #[test]
    fn a_thread_lowered_to_idle_is_raised_by_its_id_alone() {
        let me = nix::unistd::gettid().as_raw();
        assert_eq!(policy_of(me), libc::SCHED_OTHER);
        let (tid_send, tid_recv) = mpsc::channel();
        let (go_send, go_recv) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            assert!(set_policy(0, libc::SCHED_IDLE));
            tid_send.send(nix::unistd::gettid().as_raw()).unwrap();
            go_recv.recv().unwrap();
            policy_of(0)
        });
        let tid = tid_recv.recv().unwrap();
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        assert_eq!(
            policy_of(me),
            libc::SCHED_OTHER,
            "only the thread was lowered"
        );
        if may_raise() {
            assert!(set_policy(tid, libc::SCHED_OTHER));
            go_send.send(()).unwrap();
            assert_eq!(t.join().unwrap(), libc::SCHED_OTHER);
        } else {
            go_send.send(()).unwrap();
            assert_eq!(t.join().unwrap(), libc::SCHED_IDLE);
        }
    }
}
