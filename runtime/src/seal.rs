//! Protecting the runtime's own executable (the CVE-2019-5736 class of attacks).
//!
//! Before anything is launched, the runtime makes sure that the file it runs
//! from cannot be written through `/proc/<runtime pid>/exe`, the path by which
//! a process in a container could otherwise overwrite the host's binary:
//!
//! 1. If the executable already sits on a read-only mount (a read-only system
//!    partition, as on most gateways) or is a sealed memory file, nothing is
//!    done: an open for writing fails with `EROFS` / `EPERM`.
//! 2. As root, the runtime re-executes itself from a *detached, read-only
//!    clone* of its own file's mount (`open_tree(OPEN_TREE_CLONE)` +
//!    `mount_setattr`, never attached to any mount namespace, so no container
//!    can see or remount it). This costs two system calls, not a copy.
//! 3. Otherwise it copies itself into a write-sealed anonymous memory file and
//!    re-executes from that (a copy of the binary per launch).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::statvfs::{fstatvfs, FsFlags};

const REQUIRED: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

/// Whether the running executable cannot be written through
/// `/proc/self/exe`: a sealed memory file, or a file on a read-only mount.
pub fn is_sealed() -> bool {
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    if let Ok(bits) = fcntl(exe.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        if SealFlag::from_bits_truncate(bits).contains(REQUIRED) {
            return true;
        }
    }
    fstatvfs(&exe).is_ok_and(|v| v.flags().contains(FsFlags::ST_RDONLY))
}

/// Re-executes the current program from a protected executable unless it
/// already runs from one. Returns only on failure (or when already protected).
pub fn ensure_sealed() -> io::Result<()> {
    if is_sealed() {
        return Ok(());
    }
    if nix::unistd::geteuid().is_root() {
        if let Ok(fd) = read_only_clone() {
            // Only returns on failure; the memory copy below is the fallback.
            let _ = exec_fd(fd.as_raw_fd(), libc::AT_EMPTY_PATH);
        }
    }
    let mut exe = File::open("/proc/self/exe")?;
    let name = c"berth-runtime";
    let fd = memfd_create(
        name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut copy = File::from(fd);
    io::copy(&mut exe, &mut copy)?;
    fcntl(copy.as_raw_fd(), FcntlArg::F_ADD_SEALS(REQUIRED))?;
    exec_fd(copy.as_raw_fd(), 0)
}

/// `execveat(fd, "", args, env, flags | AT_EMPTY_PATH)` with this process's
/// arguments and environment.
fn exec_fd(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    let args: Vec<CString> = std::env::args_os().map(to_c).collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            to_c(kv)
        })
        .collect::<Result<_, _>>()?;
    let flags = nix::fcntl::AtFlags::from_bits_truncate(flags | libc::AT_EMPTY_PATH);
    nix::unistd::execveat(Some(fd), c"", &args, &env, flags)?;
    Err(io::Error::other("execveat returned"))
}

/// Opens this executable through a detached, read-only clone of its own
/// mount (`open_tree(OPEN_TREE_CLONE)` of the file, then `mount_setattr`):
/// the clone is never attached to any mount namespace, so no container can
/// reach it, and every write through it fails with `EROFS`.
fn read_only_clone() -> io::Result<OwnedFd> {
    use crate::rootfs::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    let mnt = crate::rootfs::open_tree_clone(c"/proc/self/exe", 0)?;
    crate::rootfs::mount_setattr(
        &mnt,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        None,
    )?;
    let st = nix::sys::statvfs::fstatvfs(&mnt)?;
    if !st.flags().contains(FsFlags::ST_RDONLY) {
        return Err(io::Error::other("the executable's clone is not read-only"));
    }
    Ok(mnt)
}

pub(crate) fn check(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(crate) fn owned(r: libc::c_long) -> io::Result<OwnedFd> {
    check(r)?;
    let fd = RawFd::try_from(r).map_err(io::Error::other)?;
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn to_c(s: OsString) -> io::Result<CString> {
    CString::new(s.into_vec()).map_err(io::Error::other)
}
