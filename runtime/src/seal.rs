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
//!    overlay* of its own directory (new mount API, never attached to any
//!    mount namespace, so no container can see or remount it). This costs a
//!    mount, not a copy.
//! 3. Otherwise it copies itself into a write-sealed anonymous memory file and
//!    re-executes from that (a copy of the binary per launch).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::stat::Mode;
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
        if let Ok(fd) = read_only_overlay() {
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

/// Opens this executable through a read-only overlayfs of its directory,
/// mounted detached (`fsopen` + `fsmount`, never attached anywhere).
fn read_only_overlay() -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
    const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
    const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

    let exe = std::fs::read_link("/proc/self/exe")?;
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(io::Error::other("executable path has no directory"));
    };
    // overlayfs without an upper layer needs two lower layers: the second is
    // an empty directory that only lives while the superblock is created.
    let empty = EmptyDir::new()?;
    let lower = CString::new(format!("{}:{}", dir.display(), empty.0.display()))?;
    let name = CString::new(name.as_bytes())?;

    // SAFETY: fsopen takes a NUL-terminated string and flags; the returned
    // descriptor is owned exactly once below.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    let fs = owned(fs)?;
    for (key, value) in [(c"lowerdir", lower.as_c_str()), (c"xino", c"off")] {
        // SAFETY: valid descriptor and NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        check(r)?;
    }
    // SAFETY: valid descriptor, null key/value as FSCONFIG_CMD_CREATE requires.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    check(r)?;
    // SAFETY: valid filesystem context descriptor; the mount descriptor is owned below.
    let mnt = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
    };
    let mnt = owned(mnt)?;
    let file = nix::fcntl::openat(
        Some(mnt.as_raw_fd()),
        name.as_c_str(),
        OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    let file = unsafe { OwnedFd::from_raw_fd(file) };
    let st = nix::sys::statvfs::fstatvfs(&file)?;
    if !st.flags().contains(FsFlags::ST_RDONLY) {
        return Err(io::Error::other("overlay mount is not read-only"));
    }
    Ok(file)
}

/// A private empty directory, removed on drop.
struct EmptyDir(std::path::PathBuf);

impl EmptyDir {
    fn new() -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            ".berth-runtime-lower-{}-{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
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
