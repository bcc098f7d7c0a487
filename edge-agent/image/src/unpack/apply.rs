//! Applying one layer's entries to the rootfs.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, XattrFlags};

use super::policy::{Ownership, Policy};
use super::resolve::{self, gid, show, uid, ResolveError, Root, Walk};
use super::tar::{Header, Kind, Reader, TarError};
use super::whiteout;

/// Why one entry (or the stream around it) was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("entry '{path}' refused: {reason}")]
    Refused { path: String, reason: String },
    #[error("entry '{path}': {source}")]
    Resolve {
        path: String,
        #[source]
        source: ResolveError,
    },
    #[error("cannot write entry '{path}' in the rootfs: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Counts of what an unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub whiteouts: u64,
    /// Setuid/setgid bits cleared and file capabilities dropped by policy.
    pub stripped: u64,
    /// Extended attributes outside `user.*` and `security.capability`, not kept.
    pub xattrs_dropped: u64,
}

/// Applies entries to one rootfs; one per image, reused for each layer.
#[derive(Debug)]
pub struct Applier {
    pub(super) root: Root,
    policy: Policy,
    ownership: Ownership,
    /// Paths (and their parents) written by the current layer: an opaque
    /// whiteout hides only what lower layers put in a directory.
    pub(super) this_layer: HashSet<Vec<u8>>,
    pub stats: Stats,
    buf: Vec<u8>,
}

fn io_err(path: &str) -> impl Fn(rustix::io::Errno) -> EntryError + '_ {
    move |e| EntryError::Io {
        path: path.to_string(),
        source: e.into(),
    }
}

impl Applier {
    pub fn new(root: OwnedFd, policy: Policy, ownership: Ownership) -> Result<Self, String> {
        let mut root = Root::new(root);
        root.implicit_owner = ownership.map(0, 0)?;
        Ok(Self {
            root,
            policy,
            ownership,
            this_layer: HashSet::new(),
            stats: Stats::default(),
            buf: vec![0u8; 256 * 1024],
        })
    }

    /// Applies every entry of one uncompressed layer stream.
    pub fn apply_layer<R: Read>(&mut self, tar: &mut Reader<'_, R>) -> Result<(), EntryError> {
        self.this_layer.clear();
        self.root.invalidate();
        while let Some(h) = tar.next_entry()? {
            self.stats.entries += 1;
            self.entry(&h, tar)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, h: &Header, tar: &mut Reader<'_, R>) -> Result<(), EntryError> {
        let raw = String::from_utf8_lossy(&h.path).into_owned();
        let refuse = |reason: String| EntryError::Refused {
            path: raw.clone(),
            reason,
        };
        let comps = resolve::components(&h.path).map_err(refuse)?;
        if h.kind != Kind::Dir && resolve::names_dot(&h.path) {
            return Err(refuse(
                "a link, file or node named '.' or '..' would replace a directory: \
                 rebuild the layer without it"
                    .into(),
            ));
        }
        let Some((name, parent)) = comps.split_last() else {
            // The root directory itself: only its metadata is taken.
            let fd = self
                .root
                .fd()
                .try_clone()
                .map_err(|source| EntryError::Io {
                    path: raw.clone(),
                    source,
                })?;
            return self.set_meta(&fd, h, &raw);
        };
        if let Some(target) = name.strip_prefix(b".wh.") {
            self.stats.whiteouts += 1;
            return whiteout::apply(self, parent, target, &raw);
        }
        self.mark(&comps);
        let resolve_err = |source| EntryError::Resolve {
            path: raw.clone(),
            source,
        };
        let dir = self.root.dir(parent, Walk::Create).map_err(resolve_err)?;
        let existing = match rfs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(io_err(&raw)(e)),
        };
        match existing {
            Some(FileType::Directory) if h.kind == Kind::Dir => {
                let fd = resolve::open_dir(&dir, name).map_err(|source| EntryError::Io {
                    path: raw.clone(),
                    source,
                })?;
                return self.set_meta(&fd, h, &raw);
            }
            Some(_) => {
                whiteout::remove_tree(&dir, name).map_err(|source| EntryError::Io {
                    path: raw.clone(),
                    source,
                })?;
                self.root.invalidate();
            }
            None => {}
        }
        match h.kind {
            Kind::File => self.file(&dir, name, h, &raw, tar),
            Kind::Dir => {
                rfs::mkdirat(&dir, *name, Mode::from_raw_mode(0o700)).map_err(io_err(&raw))?;
                let fd = resolve::open_dir(&dir, name).map_err(|source| EntryError::Io {
                    path: raw.clone(),
                    source,
                })?;
                self.set_meta(&fd, h, &raw)
            }
            Kind::Symlink => {
                if h.link.is_empty() {
                    return Err(refuse("a symlink with an empty target".into()));
                }
                rfs::symlinkat(h.link.as_slice(), &dir, *name).map_err(io_err(&raw))?;
                self.root.invalidate();
                if let Some((u, g)) = self.owner(h, &raw)? {
                    rfs::chownat(
                        &dir,
                        *name,
                        Some(uid(u)),
                        Some(gid(g)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err(&raw))?;
                }
                Ok(())
            }
            Kind::Hardlink => self.hardlink(&dir, name, h, &raw),
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                if !self.policy.allow_devices {
                    return Err(refuse(format!(
                        "{} are refused by the device policy (the runtime provides /dev itself): \
                         remove it from the image, or allow devices in the unpack policy",
                        match h.kind {
                            Kind::Fifo => "fifos",
                            _ => "device nodes",
                        }
                    )));
                }
                let ft = match h.kind {
                    Kind::CharDevice => FileType::CharacterDevice,
                    Kind::BlockDevice => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rfs::makedev(h.major, h.minor);
                rfs::mknodat(&dir, *name, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(io_err(&raw))?;
                if let Some((u, g)) = self.owner(h, &raw)? {
                    rfs::chownat(
                        &dir,
                        *name,
                        Some(uid(u)),
                        Some(gid(g)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err(&raw))?;
                }
                let mode = self.mode(h);
                rfs::chmodat(&dir, *name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(io_err(&raw))
            }
        }
    }

    fn mark(&mut self, comps: &[&[u8]]) {
        for i in 1..=comps.len() {
            self.this_layer.insert(comps[..i].join(&b'/'));
        }
    }

    fn file<R: Read>(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        h: &Header,
        raw: &str,
        tar: &mut Reader<'_, R>,
    ) -> Result<(), EntryError> {
        let fd = rfs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_err(raw))?;
        let mut f = File::from(fd);
        loop {
            let n = tar.read_content(&mut self.buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n])
                .map_err(|source| EntryError::Io {
                    path: raw.to_string(),
                    source,
                })?;
        }
        self.set_meta(&OwnedFd::from(f), h, raw)
    }

    fn hardlink(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        h: &Header,
        raw: &str,
    ) -> Result<(), EntryError> {
        let refuse = |reason: String| EntryError::Refused {
            path: raw.to_string(),
            reason,
        };
        let target = resolve::components(&h.link)
            .map_err(|r| refuse(format!("its hardlink target: {r}")))?;
        let Some((tname, tparent)) = target.split_last() else {
            return Err(refuse("a hardlink to the root directory".into()));
        };
        let tdir = self.root.dir(tparent, Walk::Existing).map_err(|e| {
            refuse(format!(
                "its hardlink target '{}': {e}; a hardlink must name a file the layers \
                     already created inside the rootfs",
                show(&target)
            ))
        })?;
        rfs::linkat(&tdir, *tname, dir, name, AtFlags::empty()).map_err(|e| {
            refuse(format!(
                "cannot link to '{}' ({}): a hardlink must name a file the layers already \
                 created inside the rootfs",
                show(&target),
                io::Error::from(e)
            ))
        })
    }

    fn mode(&mut self, h: &Header) -> u32 {
        if h.mode & 0o6000 != 0 && !self.policy.allow_setid {
            self.stats.stripped += 1;
            return h.mode & !0o6000;
        }
        h.mode
    }

    fn owner(&self, h: &Header, raw: &str) -> Result<Option<(u32, u32)>, EntryError> {
        self.ownership
            .map(h.uid, h.gid)
            .map_err(|reason| EntryError::Refused {
                path: raw.to_string(),
                reason,
            })
    }

    /// Owner, then mode (a chown clears setuid bits), then extended attributes.
    fn set_meta(&mut self, fd: &OwnedFd, h: &Header, raw: &str) -> Result<(), EntryError> {
        if let Some((u, g)) = self.owner(h, raw)? {
            rfs::fchown(fd, Some(uid(u)), Some(gid(g))).map_err(io_err(raw))?;
        }
        let mode = self.mode(h);
        rfs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io_err(raw))?;
        for (k, v) in &h.xattrs {
            let keep = if k.as_slice() == b"security.capability" {
                if !self.policy.allow_file_caps {
                    self.stats.stripped += 1;
                }
                self.policy.allow_file_caps
            } else if k.starts_with(b"user.") {
                true
            } else {
                self.stats.xattrs_dropped += 1;
                false
            };
            if keep {
                rfs::fsetxattr(fd, k.as_slice(), v, XattrFlags::empty()).map_err(io_err(raw))?;
            }
        }
        Ok(())
    }
}
