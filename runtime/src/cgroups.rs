//! What cgroup limits this process can apply, and cleanup of leftovers.
//!
//! As root, limits go through cgroup v1 (this includes v1/v2 hybrid hosts) or
//! v2. As an unprivileged user they need a delegated cgroup v2 subtree (what
//! systemd gives a user session with `Delegate=yes`). Where neither holds, a
//! launch fails unless the caller explicitly allows unlimited workloads.

use std::fs;
use std::path::Path;

use nix::unistd::{access, AccessFlags};
use oci_spec::runtime::Spec;

use crate::error::RuntimeError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup situation of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    /// Limits can be applied (the string names the hierarchy).
    Available(&'static str),
    /// Limits cannot be applied, and why.
    Unavailable(String),
}

/// Looks at the cgroup mounts and our privileges.
pub fn detect() -> Limits {
    let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
    let root = nix::unistd::geteuid().is_root();
    if root {
        return if unified {
            Limits::Available("cgroup v2")
        } else if Path::new(CGROUP_ROOT).join("memory").exists() {
            Limits::Available("cgroup v1")
        } else {
            Limits::Unavailable(
                "no cgroup v1 memory controller or cgroup v2 hierarchy is mounted".into(),
            )
        };
    }
    if !unified {
        return Limits::Unavailable(
            "this host uses cgroup v1 (or a v1/v2 hybrid), which cannot be delegated to an unprivileged user".into(),
        );
    }
    let own = fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
    });
    let Some(own) = own else {
        return Limits::Unavailable("this process is not in a cgroup v2 hierarchy".into());
    };
    let dir = Path::new(CGROUP_ROOT).join(own.trim_start_matches('/'));
    if access(&dir, AccessFlags::W_OK).is_err() {
        return Limits::Unavailable(format!(
            "the cgroup {} is not delegated to this user",
            dir.display()
        ));
    }
    let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for needed in ["memory", "pids", "cpu"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Limits::Unavailable(format!(
                "the delegated cgroup {} lacks the {needed} controller",
                dir.display()
            ));
        }
    }
    Limits::Available("cgroup v2 (delegated)")
}

impl Limits {
    /// `Ok(false)` when limits apply, `Ok(true)` when the caller allowed running
    /// without them, an error otherwise.
    pub fn check(&self, allow_unlimited: bool) -> Result<bool, RuntimeError> {
        match self {
            Limits::Available(_) => Ok(false),
            Limits::Unavailable(reason) if allow_unlimited => {
                tracing::warn!(%reason, "running without resource limits, as allowed");
                Ok(true)
            }
            Limits::Unavailable(reason) => Err(RuntimeError::NoLimits {
                reason: reason.clone(),
            }),
        }
    }
}

/// Removes resource limits and the cgroup path from a spec (unlimited mode).
pub fn strip_limits(spec: &mut Spec) {
    if let Some(linux) = spec.linux_mut() {
        linux.set_resources(None);
        linux.set_cgroups_path(None);
    }
}

/// Removes an empty cgroup left at `path` in every hierarchy (v1 controllers
/// and v2). A cgroup that still holds processes is left alone.
pub fn remove_leftover(path: &str) {
    let rel = path.trim_start_matches('/');
    let mut dirs = vec![Path::new(CGROUP_ROOT).join(rel)];
    if let Ok(entries) = fs::read_dir(CGROUP_ROOT) {
        for e in entries.flatten() {
            dirs.push(e.path().join(rel));
        }
    }
    for d in dirs {
        if d.is_dir() {
            let _ = fs::remove_dir(&d);
        }
    }
}
