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
    /// Limits can be applied: the hierarchy, and the cgroup under which
    /// containers are created (`/berth` as root, the delegated subtree otherwise).
    Available {
        hierarchy: &'static str,
        base: String,
    },
    /// Limits cannot be applied: why, and the caller's own v2 cgroup where a
    /// workload allowed to run unlimited can be placed (none on v1 hosts).
    Unavailable {
        reason: String,
        own_v2: Option<String>,
    },
}

fn own_v2_cgroup() -> Option<String> {
    fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Looks at the cgroup mounts and our privileges.
pub fn detect() -> Limits {
    let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
    if !crate::rootless::unprivileged() {
        let base = "/berth".to_string();
        return if unified {
            Limits::Available {
                hierarchy: "cgroup v2",
                base,
            }
        } else if Path::new(CGROUP_ROOT).join("memory").exists() {
            Limits::Available {
                hierarchy: "cgroup v1",
                base,
            }
        } else {
            Limits::Unavailable {
                reason: "no cgroup v1 memory controller or cgroup v2 hierarchy is mounted".into(),
                own_v2: None,
            }
        };
    }
    if !unified {
        // On a hybrid host an unlimited workload stays in the caller's v2
        // cgroup: the launch binds the v2 hierarchy over /sys/fs/cgroup in its
        // private mount namespace (`rootless::enter`), so no v1 hierarchy is joined.
        let own_v2 = crate::rootless::hybrid_unified().and(own_v2_cgroup());
        return Limits::Unavailable {
            reason: "this host uses cgroup v1 (or a v1/v2 hybrid), whose hierarchies an unprivileged user cannot \
                     create cgroups in, and every container joins a cgroup of its own"
                .into(),
            own_v2,
        };
    }
    let Some(own) = own_v2_cgroup() else {
        return Limits::Unavailable {
            reason: "this process is not in a cgroup v2 hierarchy".into(),
            own_v2: None,
        };
    };
    let parent = Path::new(&own)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new(CGROUP_ROOT).join(parent.trim_start_matches('/'));
    if access(&dir, AccessFlags::W_OK).is_err() {
        return Limits::Unavailable {
            reason: format!("the cgroup {} is not delegated to this user", dir.display()),
            own_v2: Some(own),
        };
    }
    let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for needed in ["memory", "pids", "cpu"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Limits::Unavailable {
                reason: format!(
                    "the delegated cgroup {} lacks the {needed} controller",
                    dir.display()
                ),
                own_v2: Some(own),
            };
        }
    }
    Limits::Available {
        hierarchy: "cgroup v2 (delegated)",
        base: format!("{}/berth", parent.trim_end_matches('/')),
    }
}

/// Where a container's cgroup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A cgroup of its own with the limits applied.
    Limited(String),
    /// No limits, in (a child of) the caller's own cgroup (explicitly allowed).
    Unlimited(String),
}

impl Limits {
    /// Where the container `id` goes, or why it cannot be launched.
    pub fn place(&self, id: &str, allow_unlimited: bool) -> Result<Placement, RuntimeError> {
        match self {
            Limits::Available { base, .. } => Ok(Placement::Limited(format!("{base}/{id}"))),
            Limits::Unavailable {
                reason,
                own_v2: Some(own),
            } if allow_unlimited => {
                tracing::warn!(%reason, "running without resource limits, as allowed");
                // A child of the caller's cgroup: made where the caller may
                // (then the container's processes, and only they, are in it);
                // elsewhere the container stays in the caller's cgroup and the
                // path never exists, so deleting the container removes and
                // kills nothing else.
                Ok(Placement::Unlimited(format!(
                    "{}/berth-{id}",
                    own.trim_end_matches('/')
                )))
            }
            Limits::Unavailable { reason, own_v2 } => Err(RuntimeError::NoLimits {
                reason: reason.clone(),
                unlimited_possible: own_v2.is_some(),
            }),
        }
    }

    /// A one-line description for status output.
    pub fn describe(&self) -> String {
        match self {
            Limits::Available { hierarchy, base } => {
                format!("{hierarchy}, containers under {base}")
            }
            Limits::Unavailable { reason, .. } => format!("unavailable: {reason}"),
        }
    }
}

/// Removes resource limits from a spec and places it in `cgroup` (unlimited mode).
pub fn strip_limits(spec: &mut Spec, cgroup: &str) {
    if let Some(linux) = spec.linux_mut() {
        linux.set_resources(None);
        linux.set_cgroups_path(Some(cgroup.into()));
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
