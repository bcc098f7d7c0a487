//! Whiteouts and opaque directories (OCI image spec, "Representing Changes").
//!
//! `dir/.wh.name` removes `dir/name` left by lower layers; `dir/.wh..wh..opq`
//! empties `dir` of everything lower layers put there, keeping what the same
//! layer adds. The directory of a whiteout is resolved refusing every symlink
//! on the way: a whiteout removes only what is really at its path inside the
//! root, never what a symlink points at. Removal never follows symlinks.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, AtFlags, Dir, FileType};

use super::apply::{Applier, EntryError};
use super::resolve::{self, ResolveError, Walk};

const OPAQUE: &[u8] = b".wh..opq";

/// Applies the whiteout entry `parent/.wh.<target>`.
pub fn apply(
    a: &mut Applier,
    parent: &[&[u8]],
    target: &[u8],
    raw: &str,
) -> Result<(), EntryError> {
    let refuse = |reason: &str| EntryError::Refused {
        path: raw.to_string(),
        reason: reason.to_string(),
    };
    if target.is_empty() || target == b"." || target == b".." {
        return Err(refuse(
            "a whiteout that names nothing, '.' or '..': rebuild the layer",
        ));
    }
    let dir = match a.root.dir(parent, Walk::NoSymlinks) {
        Ok(d) => d,
        // Nothing to hide where nothing exists.
        Err(ResolveError::Missing { .. }) => return Ok(()),
        Err(source) => {
            return Err(EntryError::Resolve {
                path: raw.to_string(),
                source,
            })
        }
    };
    let io = |source: io::Error| EntryError::Io {
        path: raw.to_string(),
        source,
    };
    if target == OPAQUE {
        let prefix = parent.join(&b'/');
        let names = list(&dir).map_err(io)?;
        for n in names {
            let mut full = prefix.clone();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&n);
            if !a.this_layer.contains(&full) {
                remove_tree(&dir, &n).map_err(io)?;
            }
        }
    } else if target.starts_with(b".wh.") {
        return Err(refuse(
            "an unknown whiteout form (only '.wh.<name>' and '.wh..wh..opq' exist)",
        ));
    } else {
        match remove_tree(&dir, target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    a.root.invalidate();
    Ok(())
}

/// The names in a directory, without `.` and `..`.
fn list(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it,
/// without following symlinks.
pub fn remove_tree(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = resolve::open_dir(dir, name)?;
        for n in list(&sub)? {
            remove_tree(&sub, &n)?;
        }
        drop(sub);
        rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rfs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}
