//! Learning when containers stop, and how, without polling the runtime.
//!
//! The agent is the child subreaper of what it launches (see
//! [`become_subreaper`]): once `berth-runtime launch --detach` has exited,
//! a container's init process is the agent's child. The agent opens a pidfd
//! for it at once — while the process is its child, unreaped, so its pid
//! cannot have been reused — and checks the pidfds when `SIGCHLD` arrives:
//! a readable pidfd is an exited process, which `waitid(P_PIDFD)` reaps,
//! yielding its exit status. No process is started and nothing wakes up
//! while the workloads run.
//!
//! Other orphans the subreaper collects (the runtime's detached log pumps,
//! the process of an interrupted `exec`) lead their own session; they are
//! reaped on `SIGCHLD` too. The agent's own `berth-runtime` children never
//! lead a session, so they stay for `std::process` to wait for.
//!
//! A container the agent did not launch itself (the agent was restarted
//! while its workloads kept running) is adopted from `berth-runtime list`.
//! Its pid names the same process only if that process started when the one
//! launched did: the start time (`/proc/PID/stat`, in clock ticks since
//! boot) is recorded beside the runtime's state when a container is
//! launched, and compared when it is adopted. Such a process is not the
//! agent's child: no `SIGCHLD` comes when it exits, so its pidfd is checked
//! every [`ADOPTED_POLL`] (a system call, no process) while one runs, and
//! its exit status is not known (it went to init).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{
    getpid, pidfd_open, waitid, Pid, PidfdFlags, WaitId, WaitIdOptions, WaitIdStatus,
};

/// How often the pidfd of a container that is not the agent's child is
/// checked.
pub const ADOPTED_POLL: Duration = Duration::from_secs(2);

use super::runtime::Running;

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It stopped, but its status went to another parent.
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => match signal_name(*s) {
                Some(n) => write!(f, "killed by signal {s} ({n})"),
                None => write!(f, "killed by signal {s}"),
            },
            Exit::Unknown => f.write_str("exit status unknown"),
        }
    }
}

fn signal_name(s: i32) -> Option<&'static str> {
    Some(match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        31 => "SIGSYS",
        _ => return None,
    })
}

impl Exit {
    fn of(status: Option<WaitIdStatus>) -> Exit {
        match status {
            Some(s) => match (s.exit_status(), s.terminating_signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                (None, None) => Exit::Unknown,
            },
            None => Exit::Unknown,
        }
    }
}

/// Makes this process the child subreaper of its descendants, so that the
/// containers it launches stay its children (their exit status is then
/// its to collect). Process-wide; the agent calls it once at start.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(getpid())).map_err(std::io::Error::from)
}

#[derive(Debug)]
struct Entry {
    /// The init process it was launched or adopted with.
    init: Option<i32>,
    /// The init process while it runs.
    pid: Option<i32>,
    status: String,
    exit: Option<Exit>,
    /// The init process's pidfd while it runs.
    fd: Option<OwnedFd>,
    /// Not the agent's child: no `SIGCHLD` tells of its exit.
    adopted: bool,
}

#[derive(Debug, Default)]
struct Table {
    /// Whether the table has been filled from the runtime's own list.
    synced: bool,
    /// Launches in flight: their container may already be a zombie child
    /// the table does not know yet, which the orphan reaper must not take.
    launching: usize,
    entries: BTreeMap<String, Entry>,
}

/// The containers the agent watches, and their exits.
#[derive(Debug)]
pub struct Exits {
    /// Start-time records (`<dir>/<name>`: `PID START`).
    records: PathBuf,
    table: Mutex<Table>,
    changed: tokio::sync::watch::Sender<u64>,
    /// Wakes the checker when a container is adopted.
    adopted: tokio::sync::Notify,
}

/// A launch in flight (see [`Exits::launching`]).
#[derive(Debug)]
pub struct Launching<'a>(&'a Exits);

impl Drop for Launching<'_> {
    fn drop(&mut self) {
        self.0.lock().launching -= 1;
        self.0.check();
    }
}

impl Exits {
    /// Watches on `handle`'s runtime (a task that checks on `SIGCHLD`);
    /// start-time records go to `records`. Fails if pidfds or `SIGCHLD`
    /// cannot be had.
    pub fn new(records: PathBuf, handle: &tokio::runtime::Handle) -> std::io::Result<Arc<Exits>> {
        pidfd_open(getpid(), PidfdFlags::empty())?;
        let exits = Arc::new(Exits {
            records,
            table: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
            adopted: tokio::sync::Notify::new(),
        });
        // Registered now: no exit between here and the task's first poll
        // goes unnoticed.
        let mut sigchld = {
            let _rt = handle.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?
        };
        let me = exits.clone();
        handle.spawn(async move {
            loop {
                let poll_adopted = me.lock().entries.values().any(|e| e.adopted);
                tokio::select! {
                    s = sigchld.recv() => if s.is_none() { return },
                    () = tokio::time::sleep(ADOPTED_POLL), if poll_adopted => {}
                    () = me.adopted.notified() => {}
                }
                me.check();
            }
        });
        Ok(exits)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that sees a new value whenever a watched container stops.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What the table knows (its pidfds checked just now), or `None`
    /// before it was filled from the runtime.
    pub fn current(&self) -> Option<Vec<Running>> {
        self.check();
        self.snapshot()
    }

    /// What the table knows, or `None` before it was filled from the runtime.
    pub fn snapshot(&self) -> Option<Vec<Running>> {
        let t = self.lock();
        t.synced.then(|| {
            t.entries
                .iter()
                .map(|(name, e)| Running {
                    name: name.clone(),
                    status: e.status.clone(),
                    pid: e.pid,
                    exit: e.exit,
                })
                .collect()
        })
    }

    /// Whether `name` is known not to run (`None`: not in the table).
    pub fn stopped(&self, name: &str) -> Option<bool> {
        self.lock().entries.get(name).map(|e| e.status != "running")
    }

    /// Marks a launch as in flight until the guard drops.
    pub fn launching(&self) -> Launching<'_> {
        self.lock().launching += 1;
        Launching(self)
    }

    /// Records a container just launched with init process `pid` (the
    /// agent's child: the pid is still its own, even if it already exited).
    pub fn launched(&self, name: &str, pid: i32) {
        let start = start_time(pid);
        if let Some(start) = start {
            self.write_record(name, pid, start);
        }
        self.watch(name, pid);
    }

    /// Fills the table from the runtime's list: containers it does not know
    /// (or whose pid changed) are adopted, those gone are forgotten.
    /// Returns the list with what the table knows of each exit.
    pub fn sync(&self, listed: Vec<Running>) -> Vec<Running> {
        let mut adopt = Vec::new();
        {
            let mut t = self.lock();
            t.entries
                .retain(|name, _| listed.iter().any(|r| &r.name == name));
            for r in &listed {
                // What the table knows wins for the same process (its pidfd
                // is exact where the runtime's liveness check is not).
                let same = t
                    .entries
                    .get(&r.name)
                    .is_some_and(|e| r.status != "running" || e.init == r.pid);
                if !same {
                    adopt.push(r.clone());
                }
            }
        }
        for r in adopt {
            match (r.status.as_str(), r.pid) {
                ("running", Some(pid)) if self.verified(&r.name, pid) => self.watch(&r.name, pid),
                ("running", Some(pid)) => {
                    self.set(&r.name, Some(pid), "stopped", Some(Exit::Unknown))
                }
                _ => self.set(&r.name, r.pid, &r.status, None),
            }
        }
        self.lock().synced = true;
        self.adopted.notify_one();
        self.check();
        self.snapshot().unwrap_or_default()
    }

    /// Forgets a deleted container.
    pub fn forget(&self, name: &str) {
        self.lock().entries.remove(name);
        let _ = std::fs::remove_file(self.records.join(name));
    }

    /// Waits until `name` no longer runs; false when `timeout` passed first.
    pub fn wait_stopped(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.check();
            if self.stopped(name) != Some(false) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether `pid` is still the process launched as `name`: the recorded
    /// start time matches (no record: a container launched before records
    /// were kept is taken as listed, and recorded now).
    fn verified(&self, name: &str, pid: i32) -> bool {
        let Some(now) = start_time(pid) else {
            return false;
        };
        match self.read_record(name) {
            Some((p, start)) => p == pid && start == now,
            None => {
                self.write_record(name, pid, now);
                true
            }
        }
    }

    /// Enters `name` as having run `init`, not watched.
    fn set(&self, name: &str, init: Option<i32>, status: &str, exit: Option<Exit>) {
        self.lock().entries.insert(
            name.to_string(),
            Entry {
                init,
                pid: if status == "stopped" { None } else { init },
                status: status.to_string(),
                exit,
                fd: None,
                adopted: false,
            },
        );
    }

    /// Enters `name` as running with `pid`, watched through its pidfd.
    fn watch(&self, name: &str, pid: i32) {
        let fd = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
        let Some(fd) = fd else {
            // Gone already (and reaped by another parent).
            self.set(name, Some(pid), "stopped", Some(Exit::Unknown));
            self.changed.send_modify(|n| *n += 1);
            return;
        };
        let me = getpid().as_raw_nonzero().get();
        let adopted = stat(pid).is_none_or(|s| s.ppid != me);
        self.lock().entries.insert(
            name.to_string(),
            Entry {
                init: Some(pid),
                pid: Some(pid),
                status: "running".into(),
                exit: None,
                fd: Some(fd),
                adopted,
            },
        );
    }

    /// Records the exit of every watched container whose pidfd is readable,
    /// then reaps the orphans.
    pub fn check(&self) {
        let mut stopped = Vec::new();
        {
            let mut t = self.lock();
            for (name, e) in t.entries.iter_mut() {
                let Some(fd) = &e.fd else { continue };
                let mut p = [PollFd::new(fd, PollFlags::IN)];
                let ready = matches!(poll(&mut p, Some(&Timespec::default())), Ok(n) if n > 0);
                if !ready {
                    continue;
                }
                let exit = reap(fd);
                e.status = "stopped".into();
                e.pid = None;
                e.exit = Some(exit);
                e.fd = None;
                e.adopted = false;
                stopped.push((name.clone(), exit));
            }
        }
        for (name, exit) in &stopped {
            tracing::info!(workload = %name, %exit, "container stopped");
        }
        if !stopped.is_empty() {
            self.changed.send_modify(|n| *n += 1);
        }
        self.reap_orphans();
    }

    /// Reaps zombie children that lead their own session and are not a
    /// watched container (their watch reaps those, keeping the status).
    fn reap_orphans(&self) {
        let t = self.lock();
        if t.launching > 0 {
            return;
        }
        // Any zombie child at all? (WNOWAIT: this reaps nothing.)
        let any = waitid(
            WaitId::All,
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        );
        if !matches!(any, Ok(Some(_))) {
            return;
        }
        let watched: Vec<i32> = t.entries.values().filter_map(|e| e.pid).collect();
        let me = getpid().as_raw_nonzero().get();
        let Ok(proc) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in proc.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Some(st) = stat(pid) else { continue };
            if st.state == 'Z' && st.ppid == me && st.session == pid && !watched.contains(&pid) {
                if let Some(p) = Pid::from_raw(pid) {
                    let _ = waitid(
                        WaitId::Pid(p),
                        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
                    );
                }
            }
        }
    }

    fn write_record(&self, name: &str, pid: i32, start: u64) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.records)?;
            let tmp = self.records.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, format!("{pid} {start}\n"))?;
            std::fs::rename(&tmp, self.records.join(name))
        };
        if let Err(e) = write() {
            tracing::warn!(workload = %name, error = %e, dir = %self.records.display(),
                "cannot record the container's start time; a restarted agent will not adopt it");
        }
    }

    fn read_record(&self, name: &str) -> Option<(i32, u64)> {
        let text = std::fs::read_to_string(self.records.join(name)).ok()?;
        let mut it = text.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
}

/// Collects the exit of the process behind `fd` (readable: it exited).
fn reap(fd: &OwnedFd) -> Exit {
    match waitid(
        WaitId::PidFd(fd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(s) => Exit::of(s),
        // Not the agent's child (adopted after a restart).
        Err(_) => Exit::Unknown,
    }
}

/// The fields of `/proc/PID/stat` the watcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: i32,
    session: i32,
    /// Clock ticks after boot.
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/PID/stat` (the command name, in parentheses, may hold
/// spaces and parentheses: the fields follow the last `)`).
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).filter(|s| s.state != 'Z').map(|s| s.start)
}

/// Where [`Exits`] keeps its start-time records for a runtime root.
pub fn records_dir(runtime_root: &Path) -> PathBuf {
    runtime_root.join("agent-starts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                ppid: 1,
                session: 4242,
                start: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) Z"), None);
        assert_eq!(parse_stat("garbage"), None);
        let me = stat(std::process::id() as i32).unwrap();
        assert!(me.start > 0 && me.state != 'Z');
    }

    #[test]
    fn exits_read_as_an_operator_expects() {
        assert_eq!(Exit::Code(3).to_string(), "exit status 3");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(40).to_string(), "killed by signal 40");
        assert_eq!(Exit::Unknown.to_string(), "exit status unknown");
    }

    /// A child of this test process, watched through its pidfd: its exit
    /// status arrives without polling, and a second container of the same
    /// name is not confused with the first.
    #[test]
    fn a_watched_child_reports_its_exit_status() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let exits = Exits::new(dir.path().join("starts"), rt.handle()).unwrap();
        exits.sync(Vec::new());
        let mut rx = exits.subscribe();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exit 3"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        exits.launched("w", pid);
        assert!(dir.path().join("starts/w").is_file());
        let listed = exits.snapshot().unwrap();
        assert_eq!(listed[0].status, "running");
        assert_eq!(listed[0].pid, Some(pid));
        drop(child.stdin.take());
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .expect("no exit notification")
                .unwrap();
        });
        let listed = exits.snapshot().unwrap();
        assert_eq!(listed[0].status, "stopped");
        assert_eq!(listed[0].exit, Some(Exit::Code(3)));
        // Reaped by the watcher: nothing is left for anyone else to wait for.
        assert!(child.wait().is_err());
        assert!(exits.wait_stopped("w", Duration::ZERO));
        exits.forget("w");
        assert!(exits.snapshot().unwrap().is_empty());
        assert!(!dir.path().join("starts/w").exists());
    }

    #[test]
    fn an_adopted_pid_with_another_start_time_is_not_the_container() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let exits = Exits::new(dir.path().to_path_buf(), rt.handle()).unwrap();
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        // The record says this pid started at another moment: reused.
        exits.write_record("old", me, start + 1);
        // No record: taken as listed, and recorded.
        let listed = exits.sync(vec![
            Running {
                name: "old".into(),
                status: "running".into(),
                pid: Some(me),
                exit: None,
            },
            Running {
                name: "new".into(),
                status: "running".into(),
                pid: Some(me),
                exit: None,
            },
        ]);
        let by = |n: &str| listed.iter().find(|r| r.name == n).unwrap().clone();
        assert_eq!(by("old").status, "stopped");
        assert_eq!(by("old").exit, Some(Exit::Unknown));
        assert_eq!(by("new").status, "running");
        assert_eq!(exits.read_record("new"), Some((me, start)));
        // A container gone from the runtime's list is forgotten.
        let listed = exits.sync(Vec::new());
        assert!(listed.is_empty());
    }
}
