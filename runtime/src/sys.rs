//! Process helpers that need `fork`.

use std::io;

/// Runs `f` in a new, detached child process (its own session) and returns
/// at once in the parent. The child exits when `f` returns.
pub fn spawn_detached(f: impl FnOnce()) -> io::Result<()> {
    // SAFETY: the callers are single-threaded command-line paths; the child only
    // runs `f` (plain reads and writes) and leaves with `_exit`, never returning
    // into the parent's stack or running its atexit handlers.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setsid();
            f();
            // SAFETY: `_exit` ends the child without unwinding or running destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { .. } => Ok(()),
    }
}
