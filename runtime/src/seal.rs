//! Sealing the runtime's own executable (the CVE-2019-5736 class of attacks).
//!
//! Before anything is launched, the runtime re-executes itself from a sealed
//! anonymous memory file: a process in a container that opens
//! `/proc/<runtime pid>/exe` gets a read-only, write-sealed copy, never the
//! binary on disk.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

const REQUIRED: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

/// Whether the running executable is a sealed memory file.
pub fn is_sealed() -> bool {
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    match fcntl(exe.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits).contains(REQUIRED),
        Err(_) => false,
    }
}

/// Re-executes the current program from a sealed copy unless it already runs
/// from one. Returns only on failure (or when already sealed).
pub fn ensure_sealed() -> io::Result<()> {
    if is_sealed() {
        return Ok(());
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
    let args: Vec<CString> = std::env::args_os().map(to_c).collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            to_c(kv)
        })
        .collect::<Result<_, _>>()?;
    nix::unistd::fexecve(copy.as_raw_fd(), &args, &env)?;
    Err(io::Error::other("fexecve returned"))
}

fn to_c(s: OsString) -> io::Result<CString> {
    CString::new(s.into_vec()).map_err(io::Error::other)
}
