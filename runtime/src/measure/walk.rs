//! Walking a tree for its measurement, through directory descriptors.
//!
//! Every entry is looked up relative to its parent directory's descriptor
//! (`fstatat`, `readlinkat`, `openat`, none of them following a final
//! symlink). An entry then costs one path-component lookup, however deep it
//! is and whatever the root's path: `launch` measures through
//! `/proc/self/fd/N/.`, the idmapped view of the image, and a path-based call
//! would walk procfs again for every one of them. Extended attributes are read
//! from the descriptor that is open anyway (directories, and files while they
//! are hashed), and for the other kinds with `listxattrat(2)` where the kernel
//! has it (6.13). File contents are hashed afterwards, each file opened with
//! `openat` from the root's descriptor, by one thread per 4 MiB of content
//! up to the threads allowed (a small image is hashed by one).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{Algorithm, Entry, Hasher, Kind, MeasureError, READ_CHUNK};
use crate::sys::open_at;
use crate::xattr::{self, Xattrs};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

/// Content each hashing thread is given at least: on one x86-64 core, ~1 ms
/// of reading and hashing with BLAKE3, ~3 ms with SHA-256 (1.4 GiB/s with
/// SHA extensions), against some 50 µs to start a thread.
const BYTES_PER_THREAD: u64 = 4 << 20;

/// An entry whose content digest (and, for a regular file, extended
/// attributes) are still to be read.
pub(super) struct Node {
    rel: OsString,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    rdev: u64,
    link: Option<OsString>,
    xattrs: Xattrs,
    content: Option<[u8; 32]>,
}

impl Node {
    fn new(rel: OsString, st: &FileStat, link: Option<OsString>, xattrs: Xattrs) -> Self {
        Node {
            rel,
            kind: Kind::from_mode(st.st_mode),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            rdev: st.st_rdev,
            link,
            xattrs,
            content: None,
        }
    }

    /// The entry record (crate docs, "Format") and its digest.
    pub(super) fn finish(self, algorithm: Algorithm) -> Entry {
        let mut rec = Vec::with_capacity(64 + self.rel.len());
        put_str(&mut rec, self.rel.as_bytes());
        rec.push(self.kind.code());
        rec.extend_from_slice(&self.mode.to_be_bytes());
        rec.extend_from_slice(&self.uid.to_be_bytes());
        rec.extend_from_slice(&self.gid.to_be_bytes());
        match self.kind {
            Kind::File => {
                rec.extend_from_slice(&self.size.to_be_bytes());
                rec.extend_from_slice(&self.content.unwrap_or_default());
            }
            Kind::Symlink => put_str(
                &mut rec,
                self.link.as_deref().unwrap_or_default().as_bytes(),
            ),
            Kind::CharDevice | Kind::BlockDevice => rec.extend_from_slice(&self.rdev.to_be_bytes()),
            _ => {}
        }
        rec.extend_from_slice(&(self.xattrs.len() as u32).to_be_bytes());
        for (k, v) in &self.xattrs {
            put_str(&mut rec, k);
            put_str(&mut rec, v);
        }
        Entry {
            path: self.rel,
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: if self.kind == Kind::File {
                self.size
            } else {
                0
            },
            digest: algorithm.digest(&rec),
        }
    }
}

fn put_str(rec: &mut Vec<u8>, s: &[u8]) {
    rec.extend_from_slice(&(s.len() as u32).to_be_bytes());
    rec.extend_from_slice(s);
}

/// `root/rel`, for error messages.
fn join(root: &Path, rel: &OsStr) -> PathBuf {
    if rel == "." {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

fn io_error(root: &Path, rel: &OsStr, source: impl Into<io::Error>) -> MeasureError {
    MeasureError::Io {
        path: join(root, rel),
        source: source.into(),
    }
}

/// Walks the directory tree at `root` in measurement order (pre-order,
/// children sorted by the bytes of their names). Returns the root's
/// descriptor, from which [`hash_contents`] opens the regular files.
pub(super) fn walk(root: &Path) -> Result<(OwnedFd, Vec<Node>), MeasureError> {
    let dot = OsStr::new(".");
    let raw = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(root, dot, e))?;
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    let root_fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = nix::sys::stat::fstat(root_fd.as_raw_fd()).map_err(|e| io_error(root, dot, e))?;
    let xattrs = xattr::list_fd(root_fd.as_fd()).map_err(|e| io_error(root, dot, e))?;
    let mut out = vec![Node::new(dot.to_os_string(), &st, None, xattrs)];
    let dup = nix::unistd::dup(root_fd.as_raw_fd()).map_err(|e| io_error(root, dot, e))?;
    // SAFETY: `dup` returned a fresh descriptor that nothing else owns.
    walk_dir(root, unsafe { OwnedFd::from_raw_fd(dup) }, dot, &mut out)?;
    Ok((root_fd, out))
}

/// Appends the entries below the directory open as `dir` (at `rel`).
fn walk_dir(
    root: &Path,
    dir: OwnedFd,
    rel: &OsStr,
    out: &mut Vec<Node>,
) -> Result<(), MeasureError> {
    let mut d = nix::dir::Dir::from_fd(dir.into_raw_fd()).map_err(|e| io_error(root, rel, e))?;
    let mut names: Vec<CString> = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| io_error(root, rel, e))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let dfd = d.as_raw_fd();
    for name in names {
        let child = if rel == "." {
            OsString::from_vec(name.as_bytes().to_vec())
        } else {
            let mut c = rel.to_os_string();
            c.push("/");
            c.push(OsStr::from_bytes(name.as_bytes()));
            c
        };
        let st = nix::sys::stat::fstatat(Some(dfd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io_error(root, &child, e))?;
        match Kind::from_mode(st.st_mode) {
            Kind::Dir => {
                let sub = open_at(
                    dfd,
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                )
                .map_err(|e| io_error(root, &child, e))?;
                let xattrs = xattr::list_fd(sub.as_fd()).map_err(|e| io_error(root, &child, e))?;
                out.push(Node::new(child.clone(), &st, None, xattrs));
                walk_dir(root, sub, &child, out)?;
            }
            // Read with the content, from the descriptor opened to hash it.
            Kind::File => out.push(Node::new(child, &st, None, Xattrs::new())),
            kind => {
                let link = if kind == Kind::Symlink {
                    let target = nix::fcntl::readlinkat(Some(dfd), name.as_c_str())
                        .map_err(|e| io_error(root, &child, e))?;
                    Some(target)
                } else {
                    None
                };
                // SAFETY: `dfd` stays open (owned by `d`) for this call.
                let dir = unsafe { BorrowedFd::borrow_raw(dfd) };
                let xattrs = xattr::list_at(dir, &name).map_err(|e| io_error(root, &child, e))?;
                out.push(Node::new(child, &st, link, xattrs));
            }
        }
    }
    Ok(())
}

/// A regular file's content digest and extended attributes.
type Read = ([u8; 32], Xattrs);

/// Hashes every regular file's content with `algorithm` and reads its
/// extended attributes, with up to `threads` threads (`None`: as many as
/// this process may use CPUs, counted only if more than one would help).
pub(super) fn hash_contents(
    root: &Path,
    root_fd: BorrowedFd<'_>,
    nodes: &mut [Node],
    algorithm: Algorithm,
    threads: Option<usize>,
) -> Result<(), MeasureError> {
    let files: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].kind == Kind::File)
        .collect();
    let results: Mutex<Vec<Option<Read>>> = Mutex::new(vec![None; files.len()]);
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<MeasureError>> = Mutex::new(None);
    let nodes_ro: &[Node] = nodes;
    let work = || {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = files.get(k) else { break };
            let node = &nodes_ro[i];
            match hash_file(root_fd, &node.rel, node.size, algorithm, &mut buf) {
                Ok(r) => results.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(r),
                Err(source) => {
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(io_error(root, &node.rel, source));
                    next.store(files.len(), Ordering::Relaxed);
                    break;
                }
            }
        }
    };
    // A thread pays for itself only with enough content to share: below
    // that, starting it costs more CPU than it saves time.
    let bytes: u64 = files.iter().map(|&i| nodes[i].size).sum();
    let shares = files
        .len()
        .min(usize::try_from(bytes / BYTES_PER_THREAD).unwrap_or(usize::MAX));
    let workers = if shares > 1 {
        threads
            .unwrap_or_else(super::default_threads)
            .clamp(1, shares)
    } else {
        1
    };
    std::thread::scope(|s| {
        for _ in 1..workers {
            s.spawn(work);
        }
        work();
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    for (&i, r) in files.iter().zip(results) {
        let (digest, xattrs) = r.ok_or_else(|| {
            io_error(
                root,
                &nodes[i].rel,
                io::Error::other("file was not read while measured"),
            )
        })?;
        nodes[i].content = Some(digest);
        nodes[i].xattrs = xattrs;
    }
    Ok(())
}

/// Hashes a regular file (opened from the root without following a symlink
/// swapped in its place) and reads its extended attributes; refuses content
/// that changed size while it was read.
fn hash_file(
    root: BorrowedFd<'_>,
    rel: &OsStr,
    expected_size: u64,
    algorithm: Algorithm,
    buf: &mut [u8],
) -> io::Result<Read> {
    let rel = CString::new(rel.as_bytes()).map_err(io::Error::other)?;
    let fd = open_at(
        root.as_raw_fd(),
        rel.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )?;
    let mut f = File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(
            "entry stopped being a regular file while measured",
        ));
    }
    let mut h = Hasher::new(algorithm);
    let mut total = 0u64;
    loop {
        let n = match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    if total != expected_size {
        return Err(io::Error::other("file changed size while measured"));
    }
    let xattrs = xattr::list_fd(f.as_fd())?;
    Ok((h.finalize(), xattrs))
}
