//! Driving a created container: start, signal, wait, state, delete.

use std::fs;
use std::path::{Path, PathBuf};

use libcontainer::container::{Container as Inner, ContainerStatus};
use libcontainer::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;

use super::cgroup_name;
use super::output::Pump;
use crate::cgroups;
use crate::error::RuntimeError;
use crate::idmap::{Allocator, IdRange};
use crate::logs;
use crate::names::ContainerId;

/// The OCI state of a container (`berth-runtime state`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_range: Option<IdRange>,
}

/// A created container.
#[derive(Debug)]
pub struct Container {
    pub(super) id: ContainerId,
    pub(super) inner: Inner,
    pub(super) pump: Option<Pump>,
    pub(super) root: PathBuf,
    pub(super) range: Option<IdRange>,
}

impl Container {
    pub fn id(&self) -> &ContainerId {
        &self.id
    }

    /// The init process, as seen from the host.
    pub fn pid(&self) -> Option<i32> {
        self.inner.pid().map(|p| p.as_raw())
    }

    /// The subordinate id range of the container's user namespace.
    pub fn id_range(&self) -> Option<IdRange> {
        self.range
    }

    /// Starts the workload of a created container.
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        self.inner
            .start()
            .map_err(RuntimeError::from_lib(&self.id))?;
        tracing::debug!(container = %self.id, "started");
        Ok(())
    }

    /// Sends a signal to the init process (or every process with `all`).
    pub fn kill(&mut self, signal: &str, all: bool) -> Result<(), RuntimeError> {
        let sig = Signal::try_from(signal).map_err(|_| RuntimeError::Signal(signal.to_string()))?;
        if all && crate::rootless::unprivileged() {
            if let Some(nix_sig) = crate::rootless::nix_signal(signal) {
                if crate::rootless::signal_pid_namespace(self.pid(), nix_sig)
                    .map_err(RuntimeError::Io)?
                {
                    return Ok(());
                }
            }
        }
        self.inner
            .kill(sig, all)
            .map_err(RuntimeError::from_lib(&self.id))
    }

    /// Waits for the init process to exit: its exit code, or 128 + signal.
    /// Works for containers this process created; for others it polls.
    pub fn wait(&mut self) -> Result<i32, RuntimeError> {
        let Some(pid) = self.inner.pid() else {
            return Err(RuntimeError::NotRunning(self.id.to_string()));
        };
        let code = loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, c)) => break c,
                Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => {
                    while Path::new(&format!("/proc/{}", pid.as_raw())).exists() && !is_zombie(pid)
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    break -1;
                }
                Err(e) => return Err(RuntimeError::Io(e.into())),
            }
        };
        if let Some(Pump::Thread(t)) = self.pump.take() {
            let _ = t.join();
        }
        Ok(code)
    }

    /// The current OCI state.
    pub fn state(&self) -> State {
        let mut inner = self.inner.clone();
        let _ = inner.refresh_status();
        let s = &inner.state;
        State {
            oci_version: s.oci_version.clone(),
            id: s.id.clone(),
            status: status_name(s.status).to_string(),
            pid: if s.status == ContainerStatus::Stopped {
                0
            } else {
                s.pid.unwrap_or(0)
            },
            bundle: s.bundle.clone(),
            created: s.created.map(|c| c.to_rfc3339()),
            id_range: self.range,
        }
    }

    /// Deletes the container: processes (with `force`), cgroup, state, logs,
    /// its bundle if the runtime made it, and its id range.
    pub fn delete(&mut self, force: bool) -> Result<(), RuntimeError> {
        let _ = self.inner.refresh_status();
        if force
            && crate::rootless::unprivileged()
            && self.inner.status() != ContainerStatus::Stopped
            && crate::rootless::signal_pid_namespace(self.pid(), nix::sys::signal::Signal::SIGKILL)
                .map_err(RuntimeError::Io)?
        {
            // Stopped before libcontainer looks for its processes by cgroup.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while let Some(pid) = self.inner.pid() {
                let gone =
                    !Path::new(&format!("/proc/{}", pid.as_raw())).exists() || is_zombie(pid);
                if gone || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.inner
            .delete(force)
            .map_err(RuntimeError::from_lib(&self.id))?;
        if let Some(Pump::Thread(t)) = self.pump.take() {
            let _ = t.join();
        }
        let bundle = self.root.join("bundles").join(self.id.as_str());
        let _ = fs::remove_dir_all(bundle);
        logs::remove(&self.root.join("logs"), self.id.as_str());
        if let Ok(cgroups::Placement::Limited(p)) =
            cgroups::detect().place(&cgroup_name(&self.root, self.id.as_str()), false)
        {
            cgroups::remove_leftover(&p);
        }
        if self.range.take().is_some() {
            let alloc = Allocator::new(&self.root, Vec::new());
            alloc.release(self.id.as_str())?;
        }
        Ok(())
    }
}

fn is_zombie(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{}/stat", pid.as_raw()))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn status_name(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}
