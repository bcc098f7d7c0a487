//! Building a hardened OCI runtime spec for a workload.
//!
//! [`build`] turns an image configuration and [`WorkloadOptions`] into a
//! `config.json` with Berth's security defaults (see the crate docs); every
//! untrusted value is checked first by [`image`] and [`paths`].

pub mod image;
pub mod paths;

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::idmap::IdRange;
pub use image::{ImageConfig, ProcessPlan};

/// The annotation that tells the executor to install the default seccomp filter.
pub const SECCOMP_ANNOTATION: &str = "run.berth.seccomp";

/// Masked paths: runc's list plus podman's additions.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/pressure",
    "/sys/firmware",
    "/sys/fs/selinux",
    "/sys/dev/block",
    "/sys/devices/virtual/powercap",
    "/sys/kernel",
];

/// Device nodes the runtime creates in every container's `/dev`.
pub const DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
];

/// Read-only paths (runc's list).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Network mode of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A private network namespace with only `lo`.
    #[default]
    None,
    /// The host's network namespace (only when device policy allows).
    Host,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "host" => Ok(Self::Host),
            _ => Err(format!("unknown network mode '{s}': use 'none' or 'host'")),
        }
    }
}

/// Resource limits; every launch has all three (defaults when not given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub memory_bytes: i64,
    /// CPU in thousandths of a CPU (1000 = one full CPU).
    pub cpu_millis: u64,
    pub pids: i64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            cpu_millis: 1000,
            pids: 256,
        }
    }
}

/// A host directory mounted into the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// Give the source tree to the container's user (its host ids in the
    /// container's subordinate range) before start, like podman's `:U`:
    /// for directories the runtime's caller manages per workload.
    pub chown: bool,
}

/// What the caller may override on top of the image configuration.
#[derive(Debug, Clone, Default)]
pub struct WorkloadOptions {
    /// Replaces entrypoint and command.
    pub args: Option<Vec<String>>,
    /// `KEY=VALUE` entries added to (or replacing) the image's environment.
    pub env: Vec<String>,
    /// `uid[:gid]` or a name from the image's `/etc/passwd`.
    pub user: Option<String>,
    pub resources: Resources,
    pub volumes: Vec<Volume>,
    /// Host device nodes passed through (device policy decides which).
    pub devices: Vec<PathBuf>,
    pub network: NetworkMode,
    /// `(KEY, PATH)`: the variable KEY is set, when the workload is
    /// executed, to the content of the file PATH inside the container
    /// ([`crate::secret_env`]); the spec carries only the name and path.
    pub secret_env: Vec<(String, String)>,
}

/// A spec with everything it was built from that the launcher needs again.
#[derive(Debug)]
pub struct Built {
    pub spec: Spec,
    pub process: ProcessPlan,
}

/// Builds the hardened spec. `rootfs` must be an absolute, canonical path.
pub fn build(
    id: &str,
    rootfs: &Path,
    config: &ImageConfig,
    opts: &WorkloadOptions,
    range: IdRange,
    cgroups_path: &str,
) -> Result<Built, paths::PathError> {
    let root = paths::RootDir::open(rootfs);
    let process = image::plan(&root, config, opts, range)?;
    let secret_env = crate::secret_env::annotation(&opts.secret_env, &opts.env)?;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "noexec", "mode=755", "size=16384k"]}),
    ];
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
        json!({"type": "user"}),
    ];
    match opts.network {
        NetworkMode::None => {
            namespaces.push(json!({"type": "network"}));
            mounts.push(
                json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                               "options": ["nosuid", "noexec", "nodev", "ro"]}),
            );
        }
        NetworkMode::Host => {
            mounts.push(
                json!({"destination": "/sys", "type": "bind", "source": "/sys",
                               "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
            );
        }
    }
    for v in &opts.volumes {
        let target = paths::container_path(&v.target, "volume target")?;
        paths::check_host_dir(&v.source, "volume source")?;
        let mut options = vec!["rbind", "nosuid", "nodev", "rprivate"];
        if v.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": target, "type": "bind",
                           "source": v.source, "options": options}));
    }
    for (i, m) in mounts.iter().enumerate() {
        let dest = m["destination"].as_str().unwrap_or_default();
        root.check_no_symlink(dest)?;
        // Below a tmpfs mounted before it (e.g. /run/secrets), the mount
        // point is made inside that fresh tmpfs, not in the rootfs.
        let in_tmpfs = mounts[..i].iter().any(|t| {
            t["type"] == "tmpfs"
                && t["destination"]
                    .as_str()
                    .is_some_and(|d| dest.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
        });
        if !dest.starts_with("/dev/") && !in_tmpfs {
            root.check_mountpoint(dest)?;
        }
    }
    for dev in DEFAULT_DEVICES {
        root.check_no_symlink(dev)?;
    }
    let mut devices = Vec::new();
    let mut allowed = vec![json!({"allow": false, "access": "rwm"})];
    for d in &opts.devices {
        let dev = paths::host_device(d)?;
        // In a user namespace the node is bind-mounted from the host, keeping
        // its host owner and mode.
        devices.push(
            json!({"path": dev.path, "type": dev.kind, "major": dev.major,
                            "minor": dev.minor, "fileMode": dev.mode}),
        );
        allowed.push(json!({"allow": true, "type": dev.kind, "major": dev.major,
                            "minor": dev.minor, "access": "rwm"}));
    }
    let period: u64 = 100_000;
    let quota = (opts.resources.cpu_millis.max(1) * period / 1000) as i64;
    let caps: Vec<String> = Vec::new();
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": process.uid, "gid": process.gid, "additionalGids": process.additional_gids},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "inheritable": caps,
                             "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": id,
        "mounts": mounts,
        "annotations": {SECCOMP_ANNOTATION: "default"},
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": range.start, "size": range.size}],
            "gidMappings": [{"containerID": 0, "hostID": range.start, "size": range.size}],
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "cgroupsPath": cgroups_path,
            "devices": devices,
            "resources": {
                "devices": allowed,
                "memory": {"limit": opts.resources.memory_bytes, "swap": opts.resources.memory_bytes},
                "cpu": {"quota": quota, "period": period},
                "pids": {"limit": opts.resources.pids},
            },
        },
    });
    if let Some(declared) = secret_env {
        spec["annotations"][crate::secret_env::ANNOTATION] = Value::String(declared);
    }
    let spec: Spec =
        serde_json::from_value(spec).map_err(|e| paths::PathError::Spec(e.to_string()))?;
    Ok(Built { spec, process })
}

/// Makes the workload share the user namespace of the process that creates
/// it (an unprivileged launch, [`crate::rootless`]): no user namespace or id
/// mappings of its own.
pub fn share_user_namespace(spec: &mut Spec) {
    if let Some(linux) = spec.linux_mut() {
        let namespaces = linux.namespaces().clone().map(|ns| {
            ns.into_iter()
                .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::User)
                .collect()
        });
        linux.set_namespaces(namespaces);
        linux.set_uid_mappings(None);
        linux.set_gid_mappings(None);
    }
}

/// Checks a bundle's spec the way [`build`] checks its own: every mount
/// destination is a clean absolute path with no symlink on the way inside the
/// rootfs, and the working directory is not inside `/proc`, `/sys` or `/dev`.
pub fn check_bundle(spec: &Spec, bundle: &Path) -> Result<(), paths::PathError> {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let root = paths::RootDir::open(&rootfs);
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy();
        let dest = paths::container_path(&dest, "mount destination")?;
        root.check_no_symlink(&dest)?;
    }
    if let Some(p) = spec.process() {
        let cwd = paths::container_path(&p.cwd().to_string_lossy(), "working directory")?;
        paths::not_reserved(&cwd, "working directory")?;
        root.check_no_symlink(&cwd)?;
    }
    Ok(())
}

/// The seccomp mode a spec asks for: `Some(true)` for Berth's default filter,
/// `Some(false)` for none, an error for a custom profile this runtime cannot honour.
pub fn seccomp_mode(spec: &Spec) -> Result<bool, String> {
    let wants_default = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SECCOMP_ANNOTATION))
        .is_some_and(|v| v == "default");
    let custom = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .is_some();
    if custom {
        return Err(format!(
            "the spec has a custom linux.seccomp profile, which berth-runtime does not interpret; \
             remove it and set the annotation {SECCOMP_ANNOTATION}=default for the built-in filter"
        ));
    }
    Ok(wants_default)
}

/// Reads a value from a JSON spec by dotted path (used by tests and `--show-profile`).
pub fn describe(spec: &Spec) -> Value {
    serde_json::to_value(spec).unwrap_or(Value::Null)
}
