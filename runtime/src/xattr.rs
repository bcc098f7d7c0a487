//! Extended attributes of a path, without following symlinks.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// All extended attributes of `path` (not following a final symlink), sorted by
/// name. A file system without xattr support yields an empty list.
pub fn list(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut names = vec![0u8; 256];
    let len = loop {
        // SAFETY: `c` is a valid NUL-terminated string and `names` is a writable
        // buffer of the length passed.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
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
            // SAFETY: both strings are NUL-terminated; `value` is writable for its length.
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) if value.len() < 1 << 20 => value.resize(value.len() * 4, 0),
                Some(libc::ENODATA) => break usize::MAX,
                _ => return Err(e),
            }
        };
        if vlen != usize::MAX {
            value.truncate(vlen);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}
