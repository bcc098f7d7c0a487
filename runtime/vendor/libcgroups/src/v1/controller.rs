use std::fs;
use std::path::Path;

use nix::unistd::Pid;

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

/// The threads of a cgroup v1 hierarchy: writing a thread id moves that thread
/// alone, `0` the calling thread.
const CGROUP_TASKS: &str = "tasks";

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        Self::prepare(cgroup_path)?;
        common::write_cgroup_file(cgroup_path.join(CGROUP_PROCS), pid)?;
        Ok(())
    }

    /// Adds the calling thread to the cgroup: without the system-wide lock
    /// that `add_task` takes (see `CgroupManager::add_calling_process`). In a
    /// process with a single thread this moves the process.
    fn add_calling_thread(cgroup_path: &Path) -> Result<(), Self::Error> {
        Self::prepare(cgroup_path)?;
        common::write_cgroup_file(cgroup_path.join(CGROUP_TASKS), 0)?;
        Ok(())
    }

    /// Makes the cgroup ready to take tasks: creates it if it is missing.
    fn prepare(cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}
