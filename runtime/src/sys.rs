//! Process helpers that need `fork`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Runs `f` in a new, detached child process (its own session, stdio on
/// `/dev/null`, every descriptor but `keep` closed) and returns at once in the
/// parent. The child exits when `f` returns.
pub fn spawn_detached(keep: &[RawFd], f: impl FnOnce()) -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: the callers are single-threaded command-line paths; the child only
    // runs `f` (plain reads and writes) and leaves with `_exit`, never returning
    // into the parent's stack or running its atexit handlers.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setsid();
            for std_fd in 0..3 {
                let _ = nix::unistd::dup2(null.as_raw_fd(), std_fd);
            }
            let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            for fd in open {
                if fd > 2 && !keep.contains(&fd) {
                    let _ = nix::unistd::close(fd);
                }
            }
            f();
            // SAFETY: `_exit` ends the child without unwinding or running destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { .. } => Ok(()),
    }
}
