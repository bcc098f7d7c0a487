//! The container's root: a read-only, idmapped view of the image rootfs.
//!
//! An unpacked image keeps the owners its layers record (container ids: 0,
//! 1000, …) and is shared, unchanged, by every container launched from it.
//! Each container has a user namespace of its own whose root is host id
//! `range start` ([`crate::idmap`]). At launch the runtime:
//!
//! 1. clones the image's rootfs directory into a *detached* mount
//!    (`open_tree(OPEN_TREE_CLONE)`) and makes that mount read-only;
//! 2. measures the tree *through that mount* and compares it with the trusted
//!    measurement; the spec's paths and the image's `/etc/passwd` are checked
//!    through it as well. What is checked is the mount the container gets,
//!    not a path that could be swapped in between, and nothing can be written
//!    through it. As root, the measurement runs on a thread of its own, on a
//!    clone of the view's own mount, while the steps below prepare the
//!    container ([`ImageView::verify_in_background`]); its verdict is taken
//!    before the container is handed out, so the workload never starts from
//!    a tree that failed, and a failed tree's container is deleted;
//! 3. idmaps the same mount with a user namespace carrying the container's
//!    mapping (`mount_setattr(MOUNT_ATTR_IDMAP)`, [`ImageView::idmap`]): a file
//!    owned by image uid N is seen by the container as uid N (host
//!    `range start + N`); ids outside the range show as the overflow id;
//! 4. hands the mount to the container's init, which attaches it at the
//!    bundle's `rootfs` inside the container's own mount namespace
//!    (`move_mount` of the descriptor, [`ImageView::mount_fd`]) and pivots
//!    into it.
//!
//! No mount is ever added to the host's mount namespace: the only place the
//! idmapped mount is ever attached is the container's own mount namespace,
//! which the kernel frees with the container's last process. Nothing is left
//! to unmount at `delete`, after a crash, or when the runtime or the agent is
//! killed at any instant.
//!
//! The filesystem holding the images must support idmapped mounts (ext4, xfs,
//! btrfs, f2fs, vfat, tmpfs, overlayfs, erofs on this kernel). Where it does
//! not, the launch fails naming the path and the filesystem type; there is no
//! fallback that would show the workload wrong owners. Idmapping needs
//! `CAP_SYS_ADMIN` over the filesystem, which only root has: an unprivileged
//! runtime takes the same read-only view from inside the workload's user
//! namespace, without idmapping it ([`crate::rootless`]).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use crate::idmap::IdRange;
use crate::measure::{self, Manifest, MeasureError, Measurement};

mod verify;
pub use verify::PendingVerdict;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Errors of preparing a container's root.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "cannot take a read-only view of the image rootfs {path} ({step}): {source}; \
         the runtime mounts it, which needs root or, unprivileged, user namespaces \
         (kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)"
    )]
    View {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the image rootfs {path} is on a {fstype} filesystem, which cannot be idmapped \
         (mount_setattr MOUNT_ATTR_IDMAP: {source}): keep images on a filesystem that \
         supports idmapped mounts (ext4, xfs, btrfs, f2fs, tmpfs, overlayfs), e.g. move the \
         agent's state directory there"
    )]
    NotIdmappable {
        path: PathBuf,
        fstype: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the user namespace that idmaps {path} for ids {}+{}: {source}", range.start, range.size)]
    UserNs {
        path: PathBuf,
        range: IdRange,
        #[source]
        source: io::Error,
    },
}

/// A detached, read-only mount of an image's rootfs directory.
#[derive(Debug)]
pub struct ImageView {
    mnt: OwnedFd,
    image: PathBuf,
    /// The process that held the idmapping's user namespace, reaped with
    /// the view.
    holder: Option<Holder>,
}

impl ImageView {
    /// Clones the directory `rootfs` (an absolute, canonical path) into a
    /// detached read-only mount.
    pub fn open(rootfs: &Path) -> Result<Self, RootfsError> {
        let err = |step, source| RootfsError::View {
            path: rootfs.to_path_buf(),
            step,
            source,
        };
        let c = std::ffi::CString::new(rootfs.as_os_str().as_bytes())
            .map_err(|e| err("path", io::Error::other(e)))?;
        let mnt = open_tree_clone(&c, libc::AT_SYMLINK_NOFOLLOW as libc::c_uint)
            .map_err(|e| err("open_tree", e))?;
        let view = Self {
            mnt,
            image: rootfs.to_path_buf(),
            holder: None,
        };
        view.setattr(MOUNT_ATTR_RDONLY, None)
            .map_err(|e| err("mount_setattr read-only", e))?;
        Ok(view)
    }

    /// The image rootfs this view shows.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// A path that reaches the root of the view from this process (the
    /// trailing `.` makes the descriptor's magic link resolve to the directory).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/.", self.mnt.as_raw_fd()))
    }

    /// Measures the tree through the view and compares it with `expected`;
    /// errors name paths of the image rootfs.
    pub fn verify(
        &self,
        expected: &Measurement,
        trusted_manifest: impl FnOnce() -> Option<Manifest>,
        threads: Option<usize>,
    ) -> Result<(), MeasureError> {
        let via = self.path();
        let shown = |p: PathBuf| match p.strip_prefix(&via) {
            Ok(rel) if rel.as_os_str().is_empty() => self.image.clone(),
            Ok(rel) => self.image.join(rel),
            Err(_) => p,
        };
        match measure::verify_tree(&via, expected, trusted_manifest, threads) {
            Ok(_) => Ok(()),
            Err(MeasureError::Io { path, source }) => Err(MeasureError::Io {
                path: shown(path),
                source,
            }),
            Err(MeasureError::Mismatch {
                difference,
                expected,
                actual,
                ..
            }) => Err(MeasureError::Mismatch {
                rootfs: self.image.clone(),
                difference,
                expected,
                actual,
            }),
            Err(e) => Err(e),
        }
    }

    /// Idmaps the view with `range`: container id N is host id `range.start + N`
    /// for owners on disk in `0..range.size`.
    pub fn idmap(&mut self, range: IdRange) -> Result<(), RootfsError> {
        let (userns, holder) = userns_with(range).map_err(|source| RootfsError::UserNs {
            path: self.image.clone(),
            range,
            source,
        })?;
        self.holder = Some(holder);
        self.setattr(MOUNT_ATTR_IDMAP, Some(&userns))
            .map_err(|source| RootfsError::NotIdmappable {
                path: self.image.clone(),
                fstype: fs_type(&self.image),
                source,
            })
    }

    /// The detached mount, for the container's init to attach as its root
    /// (valid while the view lives).
    pub fn mount_fd(&self) -> std::os::fd::RawFd {
        self.mnt.as_raw_fd()
    }

    fn setattr(&self, set: u64, userns: Option<&OwnedFd>) -> io::Result<()> {
        mount_setattr(&self.mnt, set, userns)
    }
}

/// `open_tree(path, OPEN_TREE_CLONE | O_CLOEXEC | extra)`: a detached clone
/// of the mount at `path`, attached to no mount namespace.
pub(crate) fn open_tree_clone(path: &std::ffi::CStr, extra: libc::c_uint) -> io::Result<OwnedFd> {
    open_tree_clone_at(libc::AT_FDCWD, path, extra)
}

/// [`open_tree_clone`] with `path` relative to the descriptor `dir` (with
/// `AT_EMPTY_PATH` and an empty path: the mount `dir` is the root of).
pub(crate) fn open_tree_clone_at(
    dir: std::os::fd::RawFd,
    path: &std::ffi::CStr,
    extra: libc::c_uint,
) -> io::Result<OwnedFd> {
    // SAFETY: open_tree reads a NUL-terminated path relative to `dir` and
    // returns a new descriptor, owned exactly once by `owned`; no memory of
    // ours is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir,
            path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | extra,
        )
    };
    crate::seal::owned(r)
}

/// `mount_setattr` of the detached mount `mnt`: sets the attributes `set`
/// (with the user namespace `userns` for `MOUNT_ATTR_IDMAP`).
pub(crate) fn mount_setattr(mnt: &OwnedFd, set: u64, userns: Option<&OwnedFd>) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |f| f.as_raw_fd() as u64),
    };
    // SAFETY: mount_setattr reads `attr` (size given) and an empty
    // NUL-terminated path; it writes no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    crate::seal::check(r)
}

/// A user namespace mapping ids `0..range.size` to `range.start..`, held by
/// a descriptor. Its only process waits until it is killed once the maps are
/// written; the namespace lives on through the descriptor.
fn userns_with(range: IdRange) -> io::Result<(OwnedFd, Holder)> {
    /// The child's whole life: it waits to be killed.
    extern "C" fn hold(_: *mut libc::c_void) -> libc::c_int {
        // SAFETY: plain system calls on no memory; the loop only ends with
        // the SIGKILL below (or the death of the thread that cloned it).
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            loop {
                libc::pause();
            }
        }
    }
    // The child shares this process's memory (CLONE_VM: no page tables to
    // copy or tear down) and runs on a stack of its own, which outlives it
    // (the holder frees it once the child is reaped). Exit signal 0 makes it
    // a "clone" child that a generic waitpid(-1) elsewhere in the process
    // cannot reap (and so free its pid) before we are done with /proc/<pid>.
    let mut stack = vec![0u128; 1024];
    let top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();
    let flags = libc::CLONE_NEWUSER | libc::CLONE_VM;
    // SAFETY: `hold` touches no memory of ours and makes no calls that take
    // locks (prctl, pause); its 16 KiB stack is only freed after the child
    // is killed and reaped (`Holder`).
    let pid = unsafe { libc::clone(hold, top, flags, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let holder = Holder {
        pid: nix::unistd::Pid::from_raw(pid),
        _stack: stack,
    };
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let map = format!("0 {} {}\n", range.start, range.size);
    fs::write(proc.join("uid_map"), &map)?;
    fs::write(proc.join("gid_map"), &map)?;
    let ns = OwnedFd::from(fs::File::open(proc.join("ns/user"))?);
    // The namespace lives on through `ns`: the holder can go, and is reaped
    // later, when it has had the time to exit.
    holder.kill();
    Ok((ns, holder))
}

/// The child that holds a user namespace while its maps are written: killed
/// once the namespace is open, reaped when dropped (by then it has had the
/// time to exit, so the caller does not wait for it).
#[derive(Debug)]
struct Holder {
    pid: nix::unistd::Pid,
    /// Its stack (it shares this process's memory): freed once it is reaped.
    _stack: Vec<u128>,
}

impl Holder {
    fn kill(&self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
        let _ = crate::sys::reap(self.pid, Some(nix::sys::wait::WaitPidFlag::__WALL));
    }
}

/// The filesystem type of the mount holding `path`, from the mount table.
fn fs_type(path: &Path) -> String {
    let lookup = || -> Option<String> {
        let f = fs::File::open(path).ok()?;
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd())).ok()?;
        let id = info.lines().find_map(|l| l.strip_prefix("mnt_id:"))?.trim();
        let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
        table.lines().find_map(|l| {
            let mut f = l.split(' ');
            (f.next()? == id).then(|| {
                let mut rest = f.skip_while(|x| *x != "-");
                rest.next();
                rest.next().map(str::to_string)
            })?
        })
    };
    lookup().unwrap_or_else(|| "unknown".to_string())
}

/// Moves the calling thread into a private copy of its mount namespace
/// whose mounts receive the host's mount events but send none back.
pub(crate) fn unshare_mount_ns() -> nix::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn idmapped_view_shows_image_ids_shifted_and_leaves_the_tree_alone() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("rootfs");
        fs::create_dir(&img).unwrap();
        fs::write(img.join("app"), b"x").unwrap();
        std::os::unix::fs::chown(img.join("app"), Some(1000), Some(1000)).unwrap();
        let img = fs::canonicalize(&img).unwrap();
        let mut view = ImageView::open(&img).unwrap();
        assert_eq!(fs::metadata(view.path().join("app")).unwrap().uid(), 1000);
        let range = IdRange {
            start: 3 << 20,
            size: 65_536,
        };
        view.idmap(range).unwrap();
        assert_eq!(
            fs::metadata(view.path().join("app")).unwrap().uid(),
            range.start + 1000
        );
        assert_eq!(fs::metadata(img.join("app")).unwrap().uid(), 1000);
        let w = fs::OpenOptions::new()
            .write(true)
            .open(view.path().join("app"));
        assert_eq!(w.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }
}
