//! Extended attributes of a file, never following a final symlink.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Extended attributes as (name, value) pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// All extended attributes of `path` (not following a final symlink), sorted by
/// name. A file system without xattr support yields an empty list.
pub fn list(path: &Path) -> io::Result<Xattrs> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    collect(
        // SAFETY: `c` is a valid NUL-terminated string and `buf` is a writable
        // buffer of the length passed.
        |buf| unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
        // SAFETY: both strings are NUL-terminated; `buf` is writable for its length.
        |name, buf| unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        },
    )
}

/// All extended attributes of the open file `fd`, sorted by name.
pub fn list_fd(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let fd = fd.as_raw_fd();
    collect(
        // SAFETY: `buf` is a writable buffer of the length passed.
        |buf| unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) },
        // SAFETY: `name` is NUL-terminated; `buf` is writable for its length.
        |name, buf| unsafe {
            libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        },
    )
}

// listxattrat(2) and getxattrat(2), Linux 6.13: the same numbers on every
// architecture Berth builds for.
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// `struct xattr_args` of getxattrat(2).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// All extended attributes of `name` in the directory `dir`, not following a
/// final symlink (one look-up with listxattrat(2); through
/// `/proc/self/fd/DIR/NAME` on older kernels).
pub fn list_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Xattrs> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let dfd = dir.as_raw_fd();
        let r = collect(
            // SAFETY: `name` is NUL-terminated; `buf` is writable for its length.
            |buf| unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dfd,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    buf.as_mut_ptr(),
                    buf.len(),
                ) as isize
            },
            |attr, buf| {
                let args = XattrArgs {
                    value: buf.as_mut_ptr() as u64,
                    size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
                    flags: 0,
                };
                // SAFETY: both strings are NUL-terminated; `args` points to
                // `buf`, writable for the size it gives.
                unsafe {
                    libc::syscall(
                        SYS_GETXATTRAT,
                        dfd,
                        name.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                        attr.as_ptr(),
                        &args as *const XattrArgs,
                        std::mem::size_of::<XattrArgs>(),
                    ) as isize
                }
            },
        );
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_XATTRAT.store(true, Ordering::Relaxed)
            }
            r => return r,
        }
    }
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    list(Path::new(std::ffi::OsStr::from_bytes(&path)))
}

/// Lists names with `list_names`, then reads each value with `get`, growing
/// the buffers on `ERANGE`. No xattr support means no attributes; an
/// attribute removed in between is left out.
fn collect(
    list_names: impl Fn(&mut [u8]) -> isize,
    get: impl Fn(&CStr, &mut [u8]) -> isize,
) -> io::Result<Xattrs> {
    let mut names = vec![0u8; 256];
    let len = loop {
        let n = list_names(&mut names);
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(io::Error::other)?;
        let mut value = vec![0u8; 256];
        let vlen = loop {
            let n = get(&cname, &mut value);
            if n >= 0 {
                break Some(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) if value.len() < 1 << 20 => value.resize(value.len() * 4, 0),
                Some(libc::ENODATA) => break None,
                _ => return Err(e),
            }
        };
        if let Some(vlen) = vlen {
            value.truncate(vlen);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}
