//! Running an extra process inside a running container (`exec`).
//!
//! The process joins *all* of the container's namespaces — its user
//! namespace first, so it holds exactly the ids of the container's
//! subordinate range and no host privilege — and its cgroups, then takes the
//! container's own process profile from its spec: user and groups,
//! capabilities (all five sets), no_new_privs, the working directory, the
//! environment (secret variables read from their files inside the container,
//! as its user), and the seccomp filter, installed last. It is never more
//! privileged than the container's init. Health-check commands run this way.
//!
//! Two forks: the first joins the namespaces (joining a PID namespace only
//! applies to children), the second becomes the command. Both are
//! non-dumpable until the final `execve`, so no process of the container can
//! ptrace them or open their descriptors while they still hold host state.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use libcontainer::oci_spec::runtime::{LinuxCapabilities, Spec};
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

use crate::container::Runtime;
use crate::error::RuntimeError;
use crate::names::ContainerId;
use crate::{seccomp, spec};

/// Namespaces joined, user first.
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Everything the children need, prepared before forking.
struct Plan {
    namespaces: Vec<(File, CloneFlags)>,
    /// Written to join the container's cgroups: `tasks` of each cgroup v1
    /// hierarchy, `cgroup.procs` of the unified one.
    cgroup_files: Vec<PathBuf>,
    uid: u32,
    gid: u32,
    groups: Vec<Gid>,
    cwd: PathBuf,
    args: Vec<CString>,
    env: Vec<CString>,
    /// Secret variables, name to file inside the container: read there.
    secret_env: std::collections::BTreeMap<String, String>,
    path: Vec<String>,
    caps: Caps,
    no_new_privs: bool,
    filter: Option<Vec<seccomp::Insn>>,
}

#[derive(Default)]
struct Caps {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

impl Runtime {
    /// Runs `args` in the running container `id` with the caller's stdio and
    /// returns its exit status (128 + the signal when killed by one).
    pub fn exec(&self, id: &ContainerId, args: Vec<String>) -> Result<i32, RuntimeError> {
        let err = |reason: String| RuntimeError::Exec {
            id: id.to_string(),
            reason,
        };
        if args.is_empty() {
            return Err(err("no command given".into()));
        }
        let c = self.load(id)?;
        let state = c.state();
        if state.status != "running" {
            return Err(err(format!(
                "it is {}, not running: start it first",
                state.status
            )));
        }
        let pid = c
            .pid()
            .ok_or_else(|| RuntimeError::NotRunning(id.to_string()))?;
        let spec_path = state.bundle.join("config.json");
        let spec = Spec::load(&spec_path).map_err(|e| RuntimeError::Bundle {
            path: spec_path.clone(),
            reason: e.to_string(),
        })?;
        let filter = spec::seccomp_mode(&spec)
            .map_err(|reason| RuntimeError::Bundle {
                path: spec_path,
                reason,
            })?
            .then(seccomp::default_program);
        let plan = prepare(pid, &spec, args, filter).map_err(err)?;
        // SAFETY: the runtime CLI is single-threaded on this path (no signal
        // forwarding thread, no log pump), so the child may run arbitrary code.
        match unsafe { fork() }.map_err(|e| RuntimeError::Io(e.into()))? {
            ForkResult::Child => std::process::exit(join_and_run(&plan)),
            ForkResult::Parent { child } => {
                wait_status(child).map_err(|e| RuntimeError::Io(e.into()))
            }
        }
    }
}

fn prepare(
    pid: i32,
    spec: &Spec,
    args: Vec<String>,
    filter: Option<Vec<seccomp::Insn>>,
) -> Result<Plan, String> {
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let same = match (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            (Err(_), _) => continue, // a namespace type this kernel lacks
            _ => false,
        };
        if !same {
            let f = File::open(&theirs).map_err(|e| format!("cannot open {theirs}: {e}"))?;
            namespaces.push((f, flag));
        }
    }
    let mut cgroup_files = cgroup_files(pid)?;
    if crate::rootless::unprivileged() {
        // An unprivileged container may run unlimited in cgroups that are
        // not its own (the launching process's): join those this user may.
        cgroup_files
            .retain(|p| nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::W_OK).is_ok());
    }
    let process = spec.process().as_ref().ok_or("its spec has no process")?;
    let user = process.user();
    let groups = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .map(str::to_string)
        .collect();
    let cstr =
        |s: String| CString::new(s).map_err(|_| "an argument or variable contains NUL".to_string());
    Ok(Plan {
        namespaces,
        cgroup_files,
        uid: user.uid(),
        gid: user.gid(),
        groups,
        cwd: process.cwd().clone(),
        args: args.into_iter().map(cstr).collect::<Result<_, _>>()?,
        env: env.into_iter().map(cstr).collect::<Result<_, _>>()?,
        secret_env: crate::secret_env::declared(spec).map_err(|e| e.to_string())?,
        path,
        caps: caps_of(process.capabilities().as_ref()),
        no_new_privs: process.no_new_privileges().unwrap_or(true),
        filter,
    })
}

/// The files that add a process to the cgroups the container's init is in:
/// `tasks` of each cgroup v1 hierarchy, `cgroup.procs` of the unified one.
fn cgroup_files(pid: i32) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read /proc/{pid}/cgroup: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        let path = path.trim_start_matches('/');
        let (base, file) = if controllers.is_empty() {
            // The unified hierarchy: its own mount in hybrid mode.
            let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .into_iter()
                .map(Path::new)
                .find(|p| p.join("cgroup.controllers").exists())
                .map(Path::to_path_buf);
            (base, "cgroup.procs")
        } else {
            let base = Path::new("/sys/fs/cgroup").join(controllers.trim_start_matches("name="));
            (Some(base), "tasks")
        };
        if let Some(base) = base {
            let file = base.join(path).join(file);
            if file.exists() {
                out.push(file);
            }
        }
    }
    Ok(out)
}

fn caps_of(c: Option<&LinuxCapabilities>) -> Caps {
    let Some(c) = c else {
        return Caps::default();
    };
    let set = |s: &Option<
        std::collections::HashSet<libcontainer::oci_spec::runtime::Capability>,
    >|
     -> CapsHashSet {
        s.iter()
            .flatten()
            .filter_map(|cap| {
                format!("CAP_{cap}")
                    .parse::<Capability>()
                    .ok()
                    .or_else(|| cap.to_string().parse().ok())
            })
            .collect()
    };
    Caps {
        bounding: set(c.bounding()),
        effective: set(c.effective()),
        permitted: set(c.permitted()),
        inheritable: set(c.inheritable()),
        ambient: set(c.ambient()),
    }
}

/// First child: joins cgroups and namespaces, forks the command, relays its
/// status. Returns the exit code for `exit`.
fn join_and_run(p: &Plan) -> i32 {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> i32 {
        eprintln!("berth-runtime exec: {what}: {e}");
        125
    };
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        return fail("cannot make the process non-dumpable", &e);
    }
    let me = std::process::id().to_string();
    for file in &p.cgroup_files {
        // A cgroup v1 `tasks` file takes `0`, the calling thread: this whole
        // process, which has one thread, moved without the kernel's
        // system-wide threadgroup lock (whose first taker after a quiet spell
        // waits ~10 ms for an RCU grace period). `cgroup.procs` takes the pid.
        let id = if file.ends_with("tasks") {
            "0"
        } else {
            me.as_str()
        };
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .and_then(|mut f| f.write_all(id.as_bytes()))
        {
            return fail(&format!("cannot join cgroup {}", file.display()), &e);
        }
    }
    for (f, flag) in &p.namespaces {
        if let Err(e) = setns(f.as_fd(), *flag) {
            return fail(
                &format!("cannot join the container's {flag:?} namespace"),
                &e,
            );
        }
    }
    // SAFETY: this process is the single-threaded child of a fork.
    match unsafe { fork() } {
        Err(e) => fail("cannot fork", &e),
        Ok(ForkResult::Child) => {
            let e = become_command(p);
            eprintln!("berth-runtime exec: {e}");
            std::process::exit(if e.starts_with("cannot execute") {
                127
            } else {
                126
            })
        }
        Ok(ForkResult::Parent { child }) => wait_status(child).unwrap_or(125),
    }
}

/// Second child: takes the container's process profile and executes the
/// command. Returns only with the reason it could not.
fn become_command(p: &Plan) -> String {
    let drop_bounding = || -> Result<(), caps::errors::CapsError> {
        for cap in caps::all() {
            if !p.caps.bounding.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
        Ok(())
    };
    if let Err(e) = drop_bounding() {
        return format!("cannot drop bounding capabilities: {e}");
    }
    if let Err(e) = nix::sys::prctl::set_keepcaps(true) {
        return format!("cannot keep capabilities across the user change: {e}");
    }
    if let Err(e) = nix::unistd::setgroups(&p.groups) {
        return format!("cannot set supplementary groups: {e}");
    }
    let (uid, gid) = (Uid::from_raw(p.uid), Gid::from_raw(p.gid));
    if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
        return format!("cannot become group {}: {e}", p.gid);
    }
    if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
        return format!("cannot become user {}: {e}", p.uid);
    }
    // Effective first: the kernel refuses a permitted set that no longer
    // covers the effective one.
    let sets = [
        (CapSet::Effective, &p.caps.effective),
        (CapSet::Inheritable, &p.caps.inheritable),
        (CapSet::Permitted, &p.caps.permitted),
    ];
    for (set, caps) in sets {
        if let Err(e) = caps::set(None, set, caps) {
            return format!("cannot set {set:?} capabilities: {e}");
        }
    }
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        return format!("cannot clear ambient capabilities: {e}");
    }
    for cap in &p.caps.ambient {
        if let Err(e) = caps::raise(None, CapSet::Ambient, *cap) {
            return format!("cannot raise ambient {cap}: {e}");
        }
    }
    if let Err(e) = std::env::set_current_dir(&p.cwd) {
        return format!(
            "cannot enter the working directory {}: {e}",
            p.cwd.display()
        );
    }
    if p.no_new_privs {
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            return format!("cannot set no_new_privs: {e}");
        }
    }
    // Only stdio reaches the command: every other descriptor (namespace
    // handles, whatever the caller leaked) closes on exec.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets FD_CLOEXEC on
    // descriptors 3 and up; it touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        return format!(
            "cannot mark descriptors close-on-exec: {}",
            std::io::Error::last_os_error()
        );
    }
    // The container's secret variables, read as its user from its files,
    // like its init did.
    let mut env = p.env.clone();
    for (name, path) in &p.secret_env {
        let value = match crate::secret_env::read_value(name, path) {
            Ok(v) => v,
            Err(e) => return e.to_string(),
        };
        let prefix = format!("{name}=");
        env.retain(|e| !e.as_bytes().starts_with(prefix.as_bytes()));
        match CString::new(prefix + &value) {
            Ok(c) => env.push(c),
            Err(_) => return format!("secret variable {name} contains NUL"),
        }
    }
    let program = resolve(&p.args[0], &p.path);
    if let Some(filter) = &p.filter {
        if let Err(e) = seccomp::install(filter) {
            return format!("cannot install the seccomp filter: {e}");
        }
    }
    match nix::unistd::execve(&program, &p.args, &env) {
        Err(e) => format!("cannot execute {}: {e}", program.to_string_lossy()),
        Ok(never) => match never {},
    }
}

/// `arg0` itself when it has a `/`, else the first executable on PATH.
fn resolve(arg0: &CString, path: &[String]) -> CString {
    let name = arg0.to_string_lossy();
    if name.contains('/') {
        return arg0.clone();
    }
    for dir in path {
        let candidate = Path::new(dir).join(&*name);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
            if let Ok(c) = CString::new(candidate.into_os_string().into_encoded_bytes()) {
                return c;
            }
        }
    }
    arg0.clone()
}

fn wait_status(child: Pid) -> Result<i32, nix::Error> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
