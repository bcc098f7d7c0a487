//! Rootfs measurement: one digest over a whole directory tree.
//!
//! The measurement is part of Berth's chain of trust. It is computed once when an
//! image is unpacked, recorded next to the trusted image reference, and computed
//! again at every launch; a launch whose fresh measurement differs is refused.
//!
//! # Format (version 1)
//!
//! A measurement is taken with one hash function `H`, named by its prefix:
//! `blake3:` (BLAKE3, 32-byte output; what new measurements use) or
//! `sha256:` (SHA-256; measurements recorded by earlier releases, still
//! checked). A tree is checked with the function its trusted measurement
//! names, so an image unpacked before an update keeps launching after it.
//!
//! The tree is walked in pre-order. The root is the entry with path `.`; the
//! children of a directory are visited sorted by the raw bytes of their names,
//! and a directory is visited before its children. Symbolic links are never
//! followed. For every entry an *entry record* is encoded (all integers
//! big-endian, `str` = `u32` length followed by the raw bytes):
//!
//! | field  | encoding |
//! |--------|----------|
//! | path   | `str`: the path relative to the root, components joined by `/`, the root is `.` |
//! | kind   | `u8`: `d` directory, `f` regular file, `l` symlink, `c` char device, `b` block device, `p` fifo, `s` socket |
//! | mode   | `u32`: permission bits including setuid, setgid and sticky (`st_mode & 0o7777`) |
//! | uid    | `u32`: owner as seen on the host |
//! | gid    | `u32`: group as seen on the host |
//! | body   | `f`: `u64` size then the 32-byte `H` of the content; `l`: `str` link target; `c`/`b`: `u64` `st_rdev`; otherwise empty |
//! | xattrs | `u32` count, then for each extended attribute sorted by name: `str` name, `str` value |
//!
//! Each record is hashed on its own: `entry = H(record)`. The measurement is
//! the prefix followed by the lower-case hex of
//! `H("berth-rootfs-measurement/v1\n" || entry_1 || entry_2 || …)`.
//!
//! Timestamps, inode numbers and hard-link identity are not measured: two trees
//! with the same measurement present the same bytes, names, types, modes, owners,
//! link targets and extended attributes (including `security.capability`).
//!
//! A [`Manifest`] (one line per entry, see [`Manifest::to_text`]) is written next
//! to the measurement when an image is unpacked. It is only used to *explain* a
//! mismatch (the first differing path and what changed); the decision to refuse a
//! launch is taken on the measurement alone, and a manifest that does not hash to
//! the expected measurement is not believed.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

mod digest;
mod explain;
mod text;
mod walk;

use digest::Hasher;
pub use digest::{Algorithm, Measurement};
pub use explain::first_difference;
pub use text::escape;

const DOMAIN: &[u8] = b"berth-rootfs-measurement/v1\n";
const READ_CHUNK: usize = 64 * 1024;

/// Errors of measuring a tree or checking a measurement.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("cannot read {path} while measuring the rootfs: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "'{0}' is not a measurement: expected 'blake3:' or 'sha256:' and 64 lower-case hex digits"
    )]
    BadDigest(String),
    #[error("manifest line {line} is malformed: {reason}")]
    BadManifest { line: usize, reason: String },
    #[error(
        "rootfs {rootfs} does not match its measurement: {difference} \
         (expected {expected}, measured {actual}); the image was modified after it was \
         unpacked: remove it and pull it again"
    )]
    Mismatch {
        rootfs: PathBuf,
        difference: String,
        expected: Measurement,
        actual: Measurement,
    },
}

/// The kind of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Dir => b'd',
            Kind::File => b'f',
            Kind::Symlink => b'l',
            Kind::CharDevice => b'c',
            Kind::BlockDevice => b'b',
            Kind::Fifo => b'p',
            Kind::Socket => b's',
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            b'd' => Kind::Dir,
            b'f' => Kind::File,
            b'l' => Kind::Symlink,
            b'c' => Kind::CharDevice,
            b'b' => Kind::BlockDevice,
            b'p' => Kind::Fifo,
            b's' => Kind::Socket,
            _ => return None,
        })
    }

    /// The kind of an `st_mode`; anything unknown counts as a regular file,
    /// whose content is then read.
    fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::File,
        }
    }
}

/// One measured entry: the facts a human needs to explain a difference, and
/// the digest of its full record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the root (`.` for the root itself).
    pub path: OsString,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content size for regular files, 0 otherwise.
    pub size: u64,
    /// The digest of the entry record, with the manifest's algorithm.
    pub digest: [u8; 32],
}

/// The per-entry list of a measured tree, in walk order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The hash function of the entry digests and of the measurement.
    pub algorithm: Algorithm,
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The measurement these entries hash to.
    pub fn measurement(&self) -> Measurement {
        let mut h = Hasher::new(self.algorithm);
        h.update(DOMAIN);
        for e in &self.entries {
            h.update(&e.digest);
        }
        Measurement::new(self.algorithm, h.finalize())
    }
}

/// The hashing threads a measurement may use when none are given: as many
/// as this process may use CPUs.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Measures the tree at `root` with `algorithm`. File contents are hashed by
/// up to `threads` threads (at least one); `None` allows as many as this
/// process may use CPUs ([`default_threads`]), a number looked up only when
/// there is content enough for more than one: counting them reads the
/// process's cgroup files, ~0.13 ms of CPU on the benchmark machine, 7 % of
/// measuring the probe image.
pub fn measure_tree(
    root: &Path,
    algorithm: Algorithm,
    threads: Option<usize>,
) -> Result<Manifest, MeasureError> {
    let (root_fd, mut nodes) = walk::walk(root)?;
    walk::hash_contents(root, root_fd.as_fd(), &mut nodes, algorithm, threads)?;
    let entries = nodes.into_iter().map(|n| n.finish(algorithm)).collect();
    Ok(Manifest { algorithm, entries })
}

/// Measures `rootfs` with `expected`'s algorithm and compares with `expected`.
/// On a mismatch the error names
/// the first differing path, using the manifest `trusted_manifest` gives (only
/// called then) when it hashes to `expected`.
pub fn verify_tree(
    rootfs: &Path,
    expected: &Measurement,
    trusted_manifest: impl FnOnce() -> Option<Manifest>,
    threads: Option<usize>,
) -> Result<Manifest, MeasureError> {
    let fresh = measure_tree(rootfs, expected.algorithm(), threads)?;
    let actual = fresh.measurement();
    if &actual == expected {
        return Ok(fresh);
    }
    let difference = match trusted_manifest().filter(|m| &m.measurement() == expected) {
        Some(old) => first_difference(&old, &fresh),
        None => "no trusted manifest is available to locate the first difference".to_string(),
    };
    Err(MeasureError::Mismatch {
        rootfs: rootfs.to_path_buf(),
        difference,
        expected: expected.clone(),
        actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("bin")).unwrap();
        fs::create_dir_all(d.path().join("a-b")).unwrap();
        fs::create_dir_all(d.path().join("a/z")).unwrap();
        fs::write(d.path().join("bin/sh"), b"#!shell").unwrap();
        fs::write(d.path().join("a/z/f"), vec![7u8; 600_000]).unwrap();
        symlink("sh", d.path().join("bin/ash")).unwrap();
        d
    }

    fn m(d: &Path) -> Manifest {
        measure_tree(d, Algorithm::default(), Some(2)).unwrap()
    }

    #[test]
    fn deterministic_and_thread_independent() {
        let d = tree();
        let a = measure_tree(d.path(), Algorithm::default(), Some(1)).unwrap();
        let b = measure_tree(d.path(), Algorithm::default(), Some(4)).unwrap();
        assert_eq!(a, b);
        let paths: Vec<_> = a
            .entries
            .iter()
            .map(|e| e.path.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            paths,
            [".", "a", "a/z", "a/z/f", "a-b", "bin", "bin/ash", "bin/sh"]
        );
    }

    #[test]
    fn content_shared_between_threads_measures_the_same() {
        // 12 MiB: three hashing threads' worth, each file hashed by whichever
        // thread takes it, the records still in walk order.
        let d = tree();
        for i in 0..4u8 {
            fs::write(d.path().join(format!("a/big{i}")), vec![i; 3 << 20]).unwrap();
        }
        let one = measure_tree(d.path(), Algorithm::default(), Some(1)).unwrap();
        for threads in [Some(3), Some(8), None] {
            let m = measure_tree(d.path(), Algorithm::default(), threads).unwrap();
            assert_eq!(m, one, "{threads:?} threads");
        }
    }

    #[test]
    fn every_change_is_detected_and_named() {
        let d = tree();
        let base = m(d.path());
        let expected = base.measurement();
        let check = |what: &str, needle: &str| {
            let err = verify_tree(d.path(), &expected, || Some(base.clone()), Some(2)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{what}: {text}");
        };
        fs::write(d.path().join("bin/sh"), b"#!shelL").unwrap();
        check("content", "'bin/sh' changed content");
        fs::write(d.path().join("bin/sh"), b"#!shell").unwrap();
        verify_tree(d.path(), &expected, || Some(base.clone()), Some(2)).unwrap();

        fs::set_permissions(d.path().join("bin/sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        check("mode", "'bin/sh' changed mode");
        fs::set_permissions(d.path().join("bin/sh"), fs::Permissions::from_mode(0o644)).unwrap();
        verify_tree(d.path(), &expected, || Some(base.clone()), Some(2)).unwrap();

        fs::write(d.path().join("a/new"), b"").unwrap();
        check("added", "'a/new' was added");
        fs::remove_file(d.path().join("a/new")).unwrap();

        fs::remove_file(d.path().join("bin/ash")).unwrap();
        check("removed", "'bin/ash' was removed");
        symlink("/etc/passwd", d.path().join("bin/ash")).unwrap();
        check("link", "'bin/ash' changed link target");
        fs::remove_file(d.path().join("bin/ash")).unwrap();
        symlink("sh", d.path().join("bin/ash")).unwrap();
        verify_tree(d.path(), &expected, || Some(base.clone()), Some(2)).unwrap();
    }

    #[test]
    fn owner_change_is_detected() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tree();
        let base = m(d.path());
        std::os::unix::fs::lchown(d.path().join("a/z/f"), Some(1000), None).unwrap();
        let err = verify_tree(
            d.path(),
            &base.measurement(),
            || Some(base.clone()),
            Some(1),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("'a/z/f' changed owner from 0:0 to 1000:0"),
            "{err}"
        );
    }

    #[test]
    fn untrusted_manifest_is_not_believed() {
        let d = tree();
        let base = m(d.path());
        let mut forged = base.clone();
        forged.entries.pop();
        fs::write(d.path().join("bin/sh"), b"x").unwrap();
        let err = verify_tree(
            d.path(),
            &base.measurement(),
            || Some(forged.clone()),
            Some(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no trusted manifest"), "{err}");
    }

    #[test]
    fn manifest_text_round_trips_odd_names() {
        let d = tree();
        fs::write(d.path().join(OsStr::from_bytes(b"odd \\ name\n\xff")), b"1").unwrap();
        let a = m(d.path());
        let b = Manifest::from_text(&a.to_text()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.measurement(), b.measurement());
        assert!(Manifest::from_text("zz f 644 0 0 0 x").is_err());
        let unknown = a.to_text().replacen("blake3", "md5", 1);
        let err = Manifest::from_text(&unknown).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("unknown algorithm"),
            "{err}"
        );
    }

    /// Images unpacked by a release that measured with SHA-256 (no
    /// algorithm in the manifest) keep verifying, with SHA-256, and keep
    /// naming what changed; the two algorithms never agree on a tree.
    #[test]
    fn sha256_measurements_of_earlier_releases_are_checked_with_sha256() {
        let d = tree();
        let old = measure_tree(d.path(), Algorithm::Sha256, Some(2)).unwrap();
        let legacy_text: String = old
            .to_text()
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(legacy_text.starts_with(&hex::encode(old.entries[0].digest)));
        let legacy = Manifest::from_text(&legacy_text).unwrap();
        assert_eq!(legacy, old);
        let recorded = Measurement::parse(&old.measurement().to_string()).unwrap();
        assert!(recorded.to_string().starts_with("sha256:"));
        assert_eq!(recorded.algorithm(), Algorithm::Sha256);
        let new = m(d.path()).measurement();
        assert_eq!(new.algorithm(), Algorithm::Blake3);
        assert_ne!(new.as_bytes(), recorded.as_bytes());
        verify_tree(d.path(), &recorded, || None, Some(2)).unwrap();
        verify_tree(d.path(), &new, || None, Some(2)).unwrap();
        fs::write(d.path().join("a/z/f"), vec![8u8; 600_000]).unwrap();
        for expected in [&recorded, &new] {
            let err =
                verify_tree(d.path(), expected, || Some(legacy.clone()), Some(2)).unwrap_err();
            assert!(
                matches!(&err, MeasureError::Mismatch { actual, .. }
                if actual.algorithm() == expected.algorithm()),
                "{err}"
            );
            if expected == &recorded {
                assert!(err.to_string().contains("'a/z/f' changed content"), "{err}");
            } else {
                // The SHA-256 manifest does not hash to a BLAKE3 measurement.
                assert!(err.to_string().contains("no trusted manifest"), "{err}");
            }
        }
    }

    #[test]
    fn measurement_parse_is_strict() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(Measurement::parse(&good).unwrap().to_string(), good);
        let b3 = format!("blake3:{}", "0c".repeat(32));
        let parsed = Measurement::parse(&format!(" {b3}\n")).unwrap();
        assert_eq!(
            (parsed.to_string(), parsed.algorithm()),
            (b3.clone(), Algorithm::Blake3)
        );
        for bad in [
            "",
            "sha256:",
            "blake3:",
            "sha512:00",
            &format!("sha512:{}", "ab".repeat(32)),
            &format!(":{}", "ab".repeat(32)),
            &"ab".repeat(32),
            &good.to_uppercase(),
            &b3.to_uppercase(),
            &format!("{good}0"),
        ] {
            assert!(Measurement::parse(bad).is_err(), "{bad}");
        }
    }

    /// The format of the crate docs transcribed path by path with std calls
    /// (`symlink_metadata`, `read_link`, `llistxattr`, reading each file), as
    /// an independent reference for the descriptor-based walk.
    fn reference(root: &Path, alg: Algorithm) -> Measurement {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        fn visit(root: &Path, rel: &OsStr, alg: Algorithm, h: &mut Vec<u8>) {
            let path = if rel == "." {
                root.to_path_buf()
            } else {
                root.join(rel)
            };
            let md = fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let str_ = |rec: &mut Vec<u8>, s: &[u8]| {
                rec.extend_from_slice(&(s.len() as u32).to_be_bytes());
                rec.extend_from_slice(s);
            };
            let mut rec = Vec::new();
            str_(&mut rec, rel.as_bytes());
            let code = if ft.is_dir() {
                b'd'
            } else if ft.is_symlink() {
                b'l'
            } else if ft.is_char_device() {
                b'c'
            } else if ft.is_block_device() {
                b'b'
            } else if ft.is_fifo() {
                b'p'
            } else if ft.is_socket() {
                b's'
            } else {
                b'f'
            };
            rec.push(code);
            rec.extend_from_slice(&(md.mode() & 0o7777).to_be_bytes());
            rec.extend_from_slice(&md.uid().to_be_bytes());
            rec.extend_from_slice(&md.gid().to_be_bytes());
            match code {
                b'f' => {
                    rec.extend_from_slice(&md.size().to_be_bytes());
                    rec.extend_from_slice(&alg.digest(&fs::read(&path).unwrap()));
                }
                b'l' => str_(
                    &mut rec,
                    fs::read_link(&path).unwrap().as_os_str().as_bytes(),
                ),
                b'c' | b'b' => rec.extend_from_slice(&md.rdev().to_be_bytes()),
                _ => {}
            }
            let xattrs = crate::xattr::list(&path).unwrap();
            rec.extend_from_slice(&(xattrs.len() as u32).to_be_bytes());
            for (k, v) in &xattrs {
                str_(&mut rec, k);
                str_(&mut rec, v);
            }
            h.extend_from_slice(&alg.digest(&rec));
            if ft.is_dir() {
                let mut names: Vec<OsString> = fs::read_dir(&path)
                    .unwrap()
                    .map(|d| d.unwrap().file_name())
                    .collect();
                names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                for n in names {
                    let child: OsString = if rel == "." {
                        n
                    } else {
                        Path::new(rel).join(n).into_os_string()
                    };
                    visit(root, &child, alg, h);
                }
            }
        }
        let mut all = DOMAIN.to_vec();
        visit(root, OsStr::new("."), alg, &mut all);
        Measurement::new(alg, alg.digest(&all))
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: NUL-terminated strings and a value buffer of the length passed.
        unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ) == 0
        }
    }

    #[test]
    fn the_walk_computes_the_documented_format() {
        let d = tree();
        let p = d.path();
        fs::write(p.join("a/empty"), b"").unwrap();
        fs::set_permissions(p.join("bin/sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        symlink("../../no/such/target", p.join("a/z/dangling")).unwrap();
        nix::unistd::mkfifo(
            &p.join("a/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        fs::create_dir_all(p.join("deep/er/and/deeper")).unwrap();
        fs::write(p.join("deep/er/and/deeper/x"), b"x").unwrap();
        // Extended attributes on a file, a directory and (as root, where
        // `trusted.` names are allowed on symlinks) a symlink and a device,
        // when the file system takes them.
        let user_xattrs = set_xattr(&p.join("bin/sh"), "user.berth", b"1")
            && set_xattr(&p.join("a"), "user.berth", b"\0two");
        if nix::unistd::geteuid().is_root() {
            assert!(set_xattr(&p.join("bin/ash"), "trusted.berth", b"link"));
            nix::sys::stat::mknod(
                &p.join("a/null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            assert!(set_xattr(&p.join("a/null"), "trusted.berth", b"dev"));
        }
        for alg in [Algorithm::Blake3, Algorithm::Sha256] {
            let walked = measure_tree(p, alg, Some(3)).unwrap();
            assert_eq!(walked.measurement(), reference(p, alg));
            assert_eq!(walked, measure_tree(p, alg, Some(1)).unwrap());
        }
        if user_xattrs {
            fs::write(p.join("copy"), b"#!shell").unwrap();
            let before = m(p).measurement();
            assert!(set_xattr(&p.join("copy"), "user.berth", b"2"));
            assert_ne!(m(p).measurement(), before);
            for alg in [Algorithm::Blake3, Algorithm::Sha256] {
                let walked = measure_tree(p, alg, Some(2)).unwrap();
                assert_eq!(walked.measurement(), reference(p, alg));
            }
        }
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_refused_naming_it() {
        let d = tree();
        let err =
            measure_tree(&d.path().join("bin/sh"), Algorithm::default(), Some(1)).unwrap_err();
        assert!(err.to_string().contains("bin/sh"), "{err}");
    }
}
