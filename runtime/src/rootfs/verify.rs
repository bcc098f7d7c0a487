//! Verifying a view while the container is prepared.
//!
//! [`ImageView::verify_in_background`] measures the view in a child process
//! while the caller goes on with everything that does not run image code:
//! the id range, the spec, the idmapping, the namespaces, cgroups and
//! mounts of the container's init, which then waits for `start`. The caller
//! takes the verdict with [`PendingVerdict::wait`] before the container is
//! handed out, so no workload is ever started from a tree that was not
//! verified; on a mismatch it deletes what it prepared.
//!
//! The child measures a clone of the view (`open_tree` of the view's own
//! descriptor, not of a path): the same tree of the same mount, unaffected
//! by the idmapping the caller sets on the view meanwhile, so owners are
//! measured as on the host, as [`ImageView::verify`] does.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{ForkResult, Pid};

use super::ImageView;
use crate::measure::{Manifest, MeasureError, Measurement};

/// A measurement running in a child process; dropping it without
/// [`PendingVerdict::wait`] kills and reaps the child.
#[derive(Debug)]
pub struct PendingVerdict {
    child: Option<Pid>,
    verdict: Option<std::fs::File>,
    image: PathBuf,
    expected: Measurement,
}

impl ImageView {
    /// Starts measuring the view in a child process and comparing it with
    /// `expected`; [`PendingVerdict::wait`] returns what [`ImageView::verify`]
    /// would have. Call it before anything else in this process holds a
    /// lock the child could need (the runtime does, first thing after
    /// opening the view).
    pub fn verify_in_background(
        &self,
        expected: &Measurement,
        trusted_manifest: Option<&Manifest>,
        threads: usize,
    ) -> Result<PendingVerdict, MeasureError> {
        let cannot = |what: &str, e: io::Error| MeasureError::Io {
            path: self.image.clone(),
            source: io::Error::new(e.kind(), format!("cannot {what} to measure it: {e}")),
        };
        let clone = ImageView {
            mnt: super::open_tree_clone_at(
                self.mnt.as_raw_fd(),
                c"",
                libc::AT_EMPTY_PATH as libc::c_uint,
            )
            .map_err(|e| cannot("clone the view", e))?,
            image: self.image.clone(),
        };
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| cannot("create a pipe", e.into()))?;
        // SAFETY: the child only measures (system calls, allocation, hashing
        // threads of its own), writes its verdict and leaves with `_exit`;
        // glibc's fork leaves the allocator usable in the child.
        match unsafe { nix::unistd::fork() }.map_err(|e| cannot("fork", e.into()))? {
            ForkResult::Child => {
                drop(read);
                let code = child(&clone, write, expected, trusted_manifest, threads);
                // SAFETY: ends the child without running the parent's
                // destructors or exit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(PendingVerdict {
                child: Some(child),
                verdict: Some(std::fs::File::from(read)),
                image: self.image.clone(),
                expected: expected.clone(),
            }),
        }
    }
}

impl PendingVerdict {
    /// Waits for the verdict: `Ok` when the tree matches, otherwise the
    /// error [`ImageView::verify`] gives (paths named in the image rootfs).
    pub fn wait(mut self) -> Result<(), MeasureError> {
        let mut msg = Vec::new();
        let read = self
            .verdict
            .take()
            .map(|mut f| f.read_to_end(&mut msg))
            .unwrap_or(Ok(0));
        let status = self.child.take().map(|pid| crate::sys::reap(pid, None));
        let lost = |why: String| MeasureError::Io {
            path: self.image.clone(),
            source: io::Error::other(format!("the measuring process {why}")),
        };
        if let Err(e) = read {
            return Err(lost(format!("could not be heard: {e}")));
        }
        match decode(&msg, &self.image, &self.expected) {
            Some(verdict) => verdict,
            None => Err(lost(format!("ended without a verdict ({status:?})"))),
        }
    }
}

impl Drop for PendingVerdict {
    fn drop(&mut self) {
        if let Some(pid) = self.child.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = crate::sys::reap(pid, None);
        }
    }
}

/// The child: verifies the clone and writes the encoded verdict.
fn child(
    clone: &ImageView,
    write: OwnedFd,
    expected: &Measurement,
    trusted_manifest: Option<&Manifest>,
    threads: usize,
) -> i32 {
    // SAFETY: plain prctl; the child must not outlive the runtime.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let msg = encode(clone.verify(expected, trusted_manifest, threads));
    match std::fs::File::from(write).write_all(&msg) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// `O`; `M` actual-measurement(32) difference; `I` errno(4) path-len(4)
/// path message. [`ImageView::verify`] already names paths in the image.
fn encode(verdict: Result<(), MeasureError>) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    match verdict {
        Ok(()) => out.push(b'O'),
        Err(MeasureError::Mismatch {
            difference, actual, ..
        }) => {
            out.push(b'M');
            out.extend_from_slice(actual.as_bytes());
            out.extend_from_slice(difference.as_bytes());
        }
        Err(e) => {
            // Any other error travels as an I/O error of the image itself
            // (no path, no errno), with its text.
            let (path, errno, text) = match e {
                MeasureError::Io { path, source } => {
                    (path, source.raw_os_error().unwrap_or(0), source.to_string())
                }
                other => (PathBuf::new(), 0, other.to_string()),
            };
            let path = path.as_os_str().as_bytes();
            out.push(b'I');
            out.extend_from_slice(&errno.to_be_bytes());
            out.extend_from_slice(&(path.len() as u32).to_be_bytes());
            out.extend_from_slice(path);
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

fn decode(
    msg: &[u8],
    image: &std::path::Path,
    expected: &Measurement,
) -> Option<Result<(), MeasureError>> {
    use std::os::unix::ffi::OsStrExt;
    let (&tag, rest) = msg.split_first()?;
    match tag {
        b'O' if rest.is_empty() => Some(Ok(())),
        b'M' if rest.len() >= 32 => {
            let (actual, difference) = rest.split_at(32);
            let actual = Measurement::from_bytes(actual.try_into().ok()?);
            Some(Err(MeasureError::Mismatch {
                rootfs: image.to_path_buf(),
                difference: String::from_utf8_lossy(difference).into_owned(),
                expected: expected.clone(),
                actual,
            }))
        }
        b'I' if rest.len() >= 8 => {
            let errno = i32::from_be_bytes(rest[..4].try_into().ok()?);
            let len = u32::from_be_bytes(rest[4..8].try_into().ok()?) as usize;
            let path = std::ffi::OsStr::from_bytes(rest.get(8..8 + len)?);
            let text = String::from_utf8_lossy(rest.get(8 + len..)?).into_owned();
            let path = if path.is_empty() {
                image.to_path_buf()
            } else {
                PathBuf::from(path)
            };
            let source = if errno != 0 {
                io::Error::from_raw_os_error(errno)
            } else {
                io::Error::other(text)
            };
            Some(Err(MeasureError::Io { path, source }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(b: u8) -> Measurement {
        Measurement::from_bytes([b; 32])
    }

    #[test]
    fn verdicts_cross_the_pipe_unchanged() {
        let image = std::path::Path::new("/var/lib/berth/images/x/rootfs");
        assert!(matches!(
            decode(&encode(Ok(())), image, &m(1)),
            Some(Ok(()))
        ));
        let mismatch = MeasureError::Mismatch {
            rootfs: image.to_path_buf(),
            difference: "bin/sh: content changed".into(),
            expected: m(1),
            actual: m(2),
        };
        match decode(&encode(Err(mismatch)), image, &m(1)) {
            Some(Err(MeasureError::Mismatch {
                rootfs,
                difference,
                expected,
                actual,
            })) => {
                assert_eq!(rootfs, image);
                assert_eq!(difference, "bin/sh: content changed");
                assert_eq!((expected, actual), (m(1), m(2)));
            }
            other => panic!("{other:?}"),
        }
        let io = MeasureError::Io {
            path: image.join("etc/shadow"),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        match decode(&encode(Err(io)), image, &m(1)) {
            Some(Err(MeasureError::Io { path, source })) => {
                assert_eq!(path, image.join("etc/shadow"));
                assert_eq!(source.raw_os_error(), Some(libc::EACCES));
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(b"", image, &m(1)).is_none());
        assert!(decode(b"M123", image, &m(1)).is_none());
        assert!(decode(b"Ox", image, &m(1)).is_none());
    }
}
