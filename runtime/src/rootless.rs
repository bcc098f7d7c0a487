//! Launching images as an unprivileged user.
//!
//! An unprivileged process cannot idmap a mount of the host filesystem, nor
//! join a cgroup v1 hierarchy, nor mount anything in the host's mount
//! namespace. So before it builds a workload from an image, an unprivileged
//! runtime moves itself ([`enter`]) into a *user namespace of the workload's
//! own* and a private mount namespace, and the workload shares that user
//! namespace:
//!
//! - container root is the caller's own uid and gid (the only host ids an
//!   unprivileged user may map without help), and with an `/etc/subuid` and
//!   `/etc/subgid` entry for the caller and `newuidmap`/`newgidmap` (Debian
//!   `uidmap`), container id N (1 ≤ N < 65536) is host id `slot start + N` of
//!   a subordinate slot of its own, exactly as for root. Without them only
//!   container root exists, and an image user other than 0 is refused;
//! - the image rootfs is not idmapped: files keep their on-disk owners, so an
//!   image unpacked by the caller (without a mapping) is owned by container
//!   root, and files of host ids outside the namespace show as the overflow id
//!   (`nobody`), readable only where their mode lets others read. The trusted
//!   measurement records on-disk owners and is checked before the runtime
//!   changes namespace ([`crate::Runtime::launch`]);
//! - on a v1/v2 hybrid host the cgroup v2 hierarchy (`/sys/fs/cgroup/unified`)
//!   is bound over `/sys/fs/cgroup` inside the private mount namespace, so that
//!   the workload joins no v1 hierarchy; it then runs in the caller's v2 cgroup,
//!   without limits, which is only done when the caller allowed it
//!   ([`crate::cgroups::Limits::place`]).
//!
//! Nothing of this reaches the host: both namespaces go away with the
//! runtime process and the workload.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};

use crate::idmap::{IdRange, SLOT};

/// Whether this process lacks root's privileges (and so launches images
/// through [`enter`]): it is not host root, also once it has entered a user
/// namespace, where it is root of that namespace only.
pub fn unprivileged() -> bool {
    host_euid() != 0
}

/// The host uid of this process's effective uid (through the user
/// namespace's `uid_map` when it is in one). The answer is kept for the
/// effective uid and user namespace it was found in (a namespace's map is
/// written once).
pub fn host_euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    static LAST: std::sync::Mutex<Option<(u32, u64, u32)>> = std::sync::Mutex::new(None);
    let euid = nix::unistd::geteuid().as_raw();
    let Ok(ns) = fs::metadata("/proc/self/ns/user").map(|m| m.ino()) else {
        return host_of(euid);
    };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match *last {
        Some((e, n, host)) if (e, n) == (euid, ns) => host,
        _ => {
            let host = host_of(euid);
            *last = Some((euid, ns, host));
            host
        }
    }
}

fn host_of(euid: u32) -> u32 {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    map.lines()
        .find_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match f[..] {
                [inside, outside, n] if (inside..inside + n).contains(&u64::from(euid)) => {
                    u32::try_from(outside + u64::from(euid) - inside).ok()
                }
                _ => None,
            }
        })
        .unwrap_or(euid)
}

/// Errors of entering the workload's user namespace.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error(
        "an unprivileged launch must start from a single-threaded process ({threads} threads run): \
         launch from the berth-runtime command, not from a threaded program"
    )]
    Threads { threads: usize },
    #[error("cannot create the workload's user namespace: {0}")]
    Unshare(#[source] io::Error),
    #[error(
        "{tool} refused to map ids {map} for this user: {reason}; check the user's entries in \
         /etc/subuid and /etc/subgid (NAME:START:COUNT, COUNT >= {SLOT}), or remove them to run \
         every workload as the caller only"
    )]
    Helper {
        tool: &'static str,
        map: String,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the private mount namespace ({step}): {source}")]
    Mount {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One line of a `uid_map`/`gid_map`: inside, outside, count.
pub type MapLine = (u32, u32, u32);

/// The id maps of a workload's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maps {
    pub uid: Vec<MapLine>,
    pub gid: Vec<MapLine>,
}

impl Maps {
    /// Container root is the caller; with subordinate slots (`uid`, `gid`),
    /// container id N ≥ 1 is `slot start + N`.
    pub fn new(caller: (u32, u32), slots: Option<(IdRange, IdRange)>) -> Self {
        let mut uid = vec![(0, caller.0, 1)];
        let mut gid = vec![(0, caller.1, 1)];
        if let Some((u, g)) = slots {
            uid.push((1, u.start + 1, u.size - 1));
            gid.push((1, g.start + 1, g.size - 1));
        }
        Self { uid, gid }
    }

    /// Ids `0..size` exist in the namespace.
    pub fn size(&self) -> u32 {
        self.uid.iter().map(|l| l.2).sum()
    }

    /// Whether the maps need `newuidmap`/`newgidmap` (more than the caller's own ids).
    fn needs_helpers(&self) -> bool {
        self.uid.len() > 1 || self.gid.len() > 1
    }
}

fn text(lines: &[MapLine]) -> String {
    lines
        .iter()
        .map(|(i, o, n)| format!("{i} {o} {n}\n"))
        .collect()
}

fn args(lines: &[MapLine]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|(i, o, n)| [i.to_string(), o.to_string(), n.to_string()])
        .collect()
}

/// The `index`-th subordinate gid slot of the caller's `/etc/subgid` pool
/// (the gid counterpart of the uid slot a container holds).
pub fn gid_slot(pool: &[IdRange], caller_gid: u32, index: usize) -> Option<IdRange> {
    crate::idmap::slots(pool, caller_gid)
        .ok()?
        .get(index)
        .copied()
}

/// Moves this process into a new user namespace with `maps` and a private
/// mount namespace prepared for a workload (see the module docs). The process
/// must be single-threaded.
pub fn enter(maps: &Maps) -> Result<(), RootlessError> {
    wait_single_threaded()?;
    if maps.needs_helpers() {
        map_with_helpers(maps)?;
    } else {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| RootlessError::Unshare(e.into()))?;
        let write = |file: &str, text: String| {
            let path = PathBuf::from("/proc/self").join(file);
            fs::write(&path, text).map_err(|source| RootlessError::Map { path, source })
        };
        write("setgroups", "deny".into())?;
        write("gid_map", text(&maps.gid))?;
        write("uid_map", text(&maps.uid))?;
    }
    // Root of the namespace from here on, with its capabilities.
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setresgid(root.1, root.1, root.1).map_err(|e| RootlessError::Unshare(e.into()))?;
    nix::unistd::setresuid(root.0, root.0, root.0).map_err(|e| RootlessError::Unshare(e.into()))?;
    let mount_err = |step| {
        move |e: nix::Error| RootlessError::Mount {
            step,
            source: e.into(),
        }
    };
    crate::rootfs::unshare_mount_ns().map_err(mount_err("unshare"))?;
    if let Some(unified) = hybrid_unified() {
        nix::mount::mount(
            Some(&unified),
            "/sys/fs/cgroup",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_err(
            "bind the cgroup v2 hierarchy over /sys/fs/cgroup",
        ))?;
    }
    Ok(())
}

/// The cgroup v2 mount of a v1/v2 hybrid host, when this is one.
pub fn hybrid_unified() -> Option<PathBuf> {
    let is_v2 = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    let unified = Path::new("/sys/fs/cgroup/unified");
    (!is_v2(Path::new("/sys/fs/cgroup")) && is_v2(unified)).then(|| unified.to_path_buf())
}

/// Waits (briefly) until this process runs one thread: threads that were
/// joined (the measurement's workers) may take a moment to leave the kernel.
fn wait_single_threaded() -> Result<(), RootlessError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let threads = thread_count();
        if threads == 1 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(RootlessError::Threads { threads });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn thread_count() -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Unshares the user namespace while a child, still outside it, runs
/// `newuidmap` and `newgidmap` on this process.
fn map_with_helpers(maps: &Maps) -> Result<(), RootlessError> {
    let pid = std::process::id().to_string();
    let tools: Vec<(&'static str, Vec<CString>, String)> =
        [("newuidmap", &maps.uid), ("newgidmap", &maps.gid)]
            .into_iter()
            .map(|(tool, lines)| {
                let argv = std::iter::once(tool.to_string())
                    .chain(std::iter::once(pid.clone()))
                    .chain(args(lines))
                    .map(|a| CString::new(a).expect("ids and pids have no NUL"))
                    .collect();
                (tool, argv, text(lines).trim().replace('\n', ", "))
            })
            .collect();
    let paths: Vec<CString> = tools
        .iter()
        .map(|(tool, _, _)| {
            let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(tool));
            CString::new(found.into_os_string().into_encoded_bytes()).expect("no NUL")
        })
        .collect();
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| RootlessError::Unshare(e.into()))?;
    // SAFETY: the process is single-threaded (checked by the caller); the
    // child only makes async-signal-safe calls (read, fork, execv, waitpid,
    // _exit) on memory prepared before the fork.
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(RootlessError::Unshare(e.into())),
        Ok(ForkResult::Child) => {
            drop(ready_w);
            let mut b = [0u8; 1];
            let go = matches!(nix::unistd::read(ready_r.as_raw_fd(), &mut b), Ok(1));
            let mut code = if go { 0 } else { 100 };
            for (i, (_, argv, _)) in tools.iter().enumerate() {
                if code != 0 {
                    break;
                }
                // SAFETY: as above; the grandchild only execs or exits.
                code = match unsafe { nix::unistd::fork() } {
                    Ok(ForkResult::Child) => {
                        let _ = nix::unistd::execv(&paths[i], argv);
                        // SAFETY: leaves the grandchild without unwinding.
                        unsafe { libc::_exit(127) }
                    }
                    Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
                        Ok(WaitStatus::Exited(_, 0)) => 0,
                        Ok(WaitStatus::Exited(_, c)) => (i as i32 + 1) * 10 + c.min(9),
                        _ => (i as i32 + 1) * 10 + 9,
                    },
                    Err(_) => 101,
                };
            }
            // SAFETY: leaves the child without unwinding or running destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(ready_r);
    let unshared = nix::sched::unshare(CloneFlags::CLONE_NEWUSER);
    if unshared.is_ok() {
        let _ = nix::unistd::write(&ready_w, b"1");
    }
    drop(ready_w);
    let status = crate::sys::reap(child, None);
    unshared.map_err(|e| RootlessError::Unshare(e.into()))?;
    let code = match status {
        Ok(WaitStatus::Exited(_, c)) => c,
        _ => 102,
    };
    if code == 0 {
        return Ok(());
    }
    let which = usize::try_from(code / 10 - 1).unwrap_or(0).min(1);
    let (tool, _, map) = &tools[which];
    let reason = match code {
        100.. => "the helper process failed".to_string(),
        c if c % 10 == 9 => {
            format!("{tool} could not be run (install Debian's uidmap) or was killed")
        }
        c => format!("it exited with status {} (its message is above)", c % 10),
    };
    Err(RootlessError::Helper {
        tool,
        map: map.clone(),
        reason,
    })
}

/// Signals every process of the PID namespace of `init` (a container's init
/// as seen from the host), init last; false when it has no PID namespace of
/// its own (or no longer runs).
///
/// An unprivileged container may have no cgroup of its own (it runs
/// unlimited in the caller's), so its processes are found by namespace, not
/// by cgroup. Killing the init with SIGKILL kills the whole namespace.
pub fn signal_pid_namespace(init: Option<i32>, signal: Signal) -> io::Result<bool> {
    let Some(init) = init else {
        return Ok(false);
    };
    let ns = |pid: &str| {
        fs::metadata(format!("/proc/{pid}/ns/pid"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let Some(theirs) = ns(&init.to_string()) else {
        return Ok(false);
    };
    if ns("self") == Some(theirs) {
        return Ok(false);
    }
    let members: Vec<i32> = fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != init && ns(&p.to_string()) == Some(theirs))
        .collect();
    for p in members.into_iter().chain([init]) {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// A signal given by name (`TERM`, `SIGTERM`, any case) or number.
pub fn nix_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_root_is_the_caller_and_the_rest_a_slot_of_its_own() {
        let single = Maps::new((1001, 1002), None);
        assert_eq!(single.uid, [(0, 1001, 1)]);
        assert_eq!(single.gid, [(0, 1002, 1)]);
        assert_eq!(single.size(), 1);
        assert!(!single.needs_helpers());
        let slot = |start| IdRange { start, size: SLOT };
        let full = Maps::new((1001, 1002), Some((slot(100_000), slot(200_000))));
        assert_eq!(full.uid, [(0, 1001, 1), (1, 100_001, SLOT - 1)]);
        assert_eq!(full.gid, [(0, 1002, 1), (1, 200_001, SLOT - 1)]);
        assert_eq!(full.size(), SLOT);
        assert!(full.needs_helpers());
        assert_eq!(text(&full.uid), "0 1001 1\n1 100001 65535\n");
        assert_eq!(args(&full.gid), ["0", "1002", "1", "1", "200001", "65535"]);
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(nix_signal("kill"), Some(Signal::SIGKILL));
        assert_eq!(nix_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(nix_signal("10"), Some(Signal::SIGUSR1));
        assert_eq!(nix_signal("NOPE"), None);
    }

    #[test]
    fn gid_slots_follow_the_uid_slot_index() {
        let pool = [IdRange {
            start: 300_000,
            size: SLOT * 2,
        }];
        assert_eq!(
            gid_slot(&pool, 1000, 1).map(|r| r.start),
            Some(300_000 + SLOT)
        );
        assert_eq!(gid_slot(&pool, 1000, 2), None);
        assert_eq!(
            gid_slot(&pool, 300_001, 0),
            None,
            "a pool holding the caller's gid"
        );
    }
}
