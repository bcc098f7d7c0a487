//! Paths inside the rootfs: lexical checks on entry names, then resolution
//! one component at a time from a directory descriptor of the root.
//!
//! Nothing here ever hands a path string to the kernel for more than one
//! component: each step is an `*at` call on the descriptor of a directory
//! already proven to be inside the root, with `O_NOFOLLOW`. Symbolic links met
//! on the way are read and expanded by this code, with chroot semantics: an
//! absolute target restarts at the root (so `var/run -> /run` works as in the
//! image), and a `..` that would climb above the root is refused (no real
//! image needs it, and it is how a layer tries to reach the host). This is
//! what `openat2(RESOLVE_IN_ROOT)` does, plus the refusal, and it works on
//! kernels older than 5.6.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

/// Symlinks followed while resolving one path before giving up (as the kernel).
const MAX_HOPS: usize = 40;

/// Why a path cannot be resolved inside the root.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("it climbs above the rootfs through the symlink '{via}'")]
    Escape { via: String },
    #[error("'{at}' is a symlink, and whiteouts are never applied through symlinks")]
    Symlink { at: String },
    #[error("'{at}' is not a directory")]
    NotDir { at: String },
    #[error("'{at}' does not exist")]
    Missing { at: String },
    #[error("more than {MAX_HOPS} symlinks on the way (a loop)")]
    Loop,
    #[error("'{at}': {source}")]
    Io {
        at: String,
        #[source]
        source: io::Error,
    },
}

/// Splits an entry path into its components, refusing what cannot name a
/// place inside the root. `.` components and repeated, leading or trailing
/// `/` are dropped: an absolute path names a place in the image's root (as
/// GNU tar, umoci and containerd read it), never on the host.
pub fn components(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(
                    "the path contains '..': a layer cannot name anything outside its root; \
                     rebuild the layer with clean paths"
                        .into(),
                )
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Whether the last component as written is `.` or `..` (an entry that would
/// replace a directory with a link or a file by naming it `dir/.`).
pub fn names_dot(raw: &[u8]) -> bool {
    let trimmed = raw.strip_suffix(b"/").unwrap_or(raw);
    let last = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    last == b"." || last == b".." || trimmed.is_empty()
}

pub fn show(comps: &[&[u8]]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

/// How a resolution treats what is missing or a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Follow symlinks inside the root; create missing directories.
    Create,
    /// Follow symlinks inside the root; a missing directory is an error.
    Existing,
    /// Refuse any symlink on the way; a missing directory is an error.
    NoSymlinks,
}

/// The root directory, with a one-entry cache of the last directory resolved.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    cache: Option<(Vec<u8>, Walk, OwnedFd)>,
    /// Owner given to directories created because an entry needs them.
    pub implicit_owner: Option<(u32, u32)>,
}

impl Root {
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            cache: None,
            implicit_owner: None,
        }
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Forgets cached resolutions: call after anything is removed or a
    /// symlink is created.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Opens the directory named by `comps` (already lexically clean).
    pub fn dir(&mut self, comps: &[&[u8]], walk: Walk) -> Result<OwnedFd, ResolveError> {
        let key = comps.join(&b'/');
        if let Some((k, w, fd)) = &self.cache {
            if *k == key && *w == walk {
                return fd.try_clone().map_err(|source| ResolveError::Io {
                    at: show(comps),
                    source,
                });
            }
        }
        let fd = self.walk(comps, walk)?;
        let copy = fd.try_clone().map_err(|source| ResolveError::Io {
            at: show(comps),
            source,
        })?;
        self.cache = Some((key, walk, copy));
        Ok(fd)
    }

    fn reopen(&self, names: &[Vec<u8>]) -> Result<OwnedFd, ResolveError> {
        let mut cur = dup(&self.fd, "")?;
        for (i, n) in names.iter().enumerate() {
            cur = open_dir(&cur, n).map_err(|source| ResolveError::Io {
                at: String::from_utf8_lossy(&names[..=i].join(&b'/')).into_owned(),
                source,
            })?;
        }
        Ok(cur)
    }

    fn walk(&self, comps: &[&[u8]], walk: Walk) -> Result<OwnedFd, ResolveError> {
        let mut todo: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut cur = dup(&self.fd, "")?;
        let mut hops = 0;
        let at = |names: &[Vec<u8>], c: &[u8]| {
            let mut p = names.join(&b'/');
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(c);
            String::from_utf8_lossy(&p).into_owned()
        };
        let mut via = String::new();
        while let Some(c) = todo.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if names.pop().is_none() {
                        return Err(ResolveError::Escape { via });
                    }
                    cur = self.reopen(&names)?;
                    continue;
                }
                _ => {}
            }
            let st = match rfs::statat(&cur, c.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(st),
                Err(rustix::io::Errno::NOENT) => None,
                Err(e) => {
                    return Err(ResolveError::Io {
                        at: at(&names, &c),
                        source: e.into(),
                    })
                }
            };
            let Some(st) = st else {
                if walk != Walk::Create {
                    return Err(ResolveError::Missing { at: at(&names, &c) });
                }
                let path = at(&names, &c);
                let io = |source: rustix::io::Errno| ResolveError::Io {
                    at: path.clone(),
                    source: source.into(),
                };
                rfs::mkdirat(&cur, c.as_slice(), Mode::from_raw_mode(0o755)).map_err(io)?;
                let fd = open_dir(&cur, &c).map_err(|e| ResolveError::Io {
                    at: path.clone(),
                    source: e,
                })?;
                if let Some((u, g)) = self.implicit_owner {
                    rfs::fchown(&fd, Some(uid(u)), Some(gid(g))).map_err(io)?;
                }
                rfs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(io)?;
                cur = fd;
                names.push(c);
                continue;
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    cur = open_dir(&cur, &c).map_err(|source| ResolveError::Io {
                        at: at(&names, &c),
                        source,
                    })?;
                    names.push(c);
                }
                FileType::Symlink => {
                    via = at(&names, &c);
                    if walk == Walk::NoSymlinks {
                        return Err(ResolveError::Symlink { at: via });
                    }
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(ResolveError::Loop);
                    }
                    let target = rfs::readlinkat(&cur, c.as_slice(), Vec::new()).map_err(|e| {
                        ResolveError::Io {
                            at: via.clone(),
                            source: e.into(),
                        }
                    })?;
                    let target = target.into_bytes();
                    if target.starts_with(b"/") {
                        names.clear();
                        cur = dup(&self.fd, &via)?;
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        todo.push_front(part.to_vec());
                    }
                }
                _ => return Err(ResolveError::NotDir { at: at(&names, &c) }),
            }
        }
        Ok(cur)
    }
}

fn dup(fd: &OwnedFd, at: &str) -> Result<OwnedFd, ResolveError> {
    fd.try_clone().map_err(|source| ResolveError::Io {
        at: at.to_string(),
        source,
    })
}

/// Opens a directory entry of `dir` without following a symlink.
pub fn open_dir(dir: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

pub fn uid(u: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u)
}

pub fn gid(g: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn lexical_rules() {
        assert_eq!(components(b"./a//b/./c/").unwrap(), [b"a", b"b", b"c"]);
        assert_eq!(
            components(b"/etc/passwd").unwrap(),
            [&b"etc"[..], b"passwd"]
        );
        assert!(components(b"/").unwrap().is_empty());
        assert!(components(b"a/../../x").unwrap_err().contains(".."));
        assert!(names_dot(b"a/."));
        assert!(names_dot(b"."));
        assert!(names_dot(b"./"));
        assert!(!names_dot(b"a/b"));
    }

    #[test]
    fn symlinks_resolve_inside_and_climbs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(d.path().join("outside")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../outside", root.join("up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let fd = rfs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut r = Root::new(fd);
        r.dir(&[b"lib", b"new"], Walk::Create).unwrap();
        assert!(root.join("usr/lib/new").is_dir());
        let err = r.dir(&[b"up", b"x"], Walk::Create).unwrap_err();
        assert!(matches!(err, ResolveError::Escape { .. }), "{err}");
        assert!(matches!(
            r.dir(&[b"loop"], Walk::Create).unwrap_err(),
            ResolveError::Loop
        ));
        assert!(matches!(
            r.dir(&[b"lib"], Walk::NoSymlinks).unwrap_err(),
            ResolveError::Symlink { .. }
        ));
        assert!(!d.path().join("outside/x").exists());
    }
}
