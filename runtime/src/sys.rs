//! System-call helpers: processes (fork, reaping, signals) and descriptors.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `openat(dir, path, flags | O_CLOEXEC)` as an owned descriptor.
pub(crate) fn open_at<P: ?Sized + nix::NixPath>(
    dir: RawFd,
    path: &P,
    flags: nix::fcntl::OFlag,
) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        Some(dir),
        path,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `openat` returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `waitpid(pid, flags)`, retried while a signal interrupts it.
pub(crate) fn reap(
    pid: nix::unistd::Pid,
    flags: Option<nix::sys::wait::WaitPidFlag>,
) -> nix::Result<nix::sys::wait::WaitStatus> {
    loop {
        match nix::sys::wait::waitpid(pid, flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r,
        }
    }
}

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

/// Signals a foreground runtime passes on to the container it waits for.
const FORWARDED: [nix::sys::signal::Signal; 6] = [
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGUSR1,
    nix::sys::signal::Signal::SIGUSR2,
];

/// Forwards termination and user signals received by this process to `pid`
/// (the container's init) until the process exits. Call it after the
/// container was created: the signals are blocked in the calling thread, and
/// a thread that waits for them passes each one on.
pub fn forward_signals(pid: i32) -> io::Result<()> {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.thread_block().map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("signal-forward".into())
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        })?;
    Ok(())
}

/// Spawns a thread that never receives the signals a foreground runtime
/// forwards, so they reach the forwarding thread instead.
pub fn spawn_shielded<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .map_err(io::Error::from)?;
    let spawned = std::thread::Builder::new().spawn(f);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
        .map_err(io::Error::from)?;
    spawned
}

/// Recursively gives `root` and everything below it to `(uid, gid)`:
/// symlinks are changed themselves (never followed) and other filesystems
/// mounted below are not entered. Entries already owned are left alone.
pub fn chown_tree(root: &std::path::Path, (uid, gid): (u32, u32)) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(root)?;
    let dev = top.dev();
    let mut stack = vec![(root.to_path_buf(), top)];
    while let Some((path, meta)) = stack.pop() {
        if meta.uid() != uid || meta.gid() != gid {
            nix::unistd::fchownat(
                None,
                &path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from)?;
        }
        if meta.is_dir() && meta.dev() == dev {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let m = std::fs::symlink_metadata(entry.path())?;
                stack.push((entry.path(), m));
            }
        }
    }
    Ok(())
}
