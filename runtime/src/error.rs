//! The runtime's error type: what failed, on which input, and what to do next.

use std::io;
use std::path::PathBuf;

use crate::idmap::IdMapError;
use crate::measure::MeasureError;
use crate::names::ContainerId;
use crate::rootfs::RootfsError;
use crate::spec::paths::PathError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container '{0}' already exists: delete it first or choose another id")]
    Duplicate(String),
    #[error("container '{0}' does not exist under this --root")]
    NotFound(String),
    #[error("container '{0}' has no running process")]
    NotRunning(String),
    #[error("cannot exec in container '{id}': {reason}")]
    Exec { id: String, reason: String },
    #[error(
        "no logs for container '{0}': it was started with its output inherited, or it was deleted"
    )]
    NoLogs(String),
    #[error("'{0}' is not a container id: use 1-64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    BadId(String),
    #[error("unknown signal '{0}': use a name (TERM, SIGKILL) or a number")]
    Signal(String),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read image at {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image config {path} is invalid: {reason}")]
    ImageConfig { path: PathBuf, reason: String },
    #[error("{path} has mode {mode:o}: the workload's user namespace cannot reach the rootfs through it; make it searchable by others (chmod o+x)")]
    NotSearchable { path: PathBuf, mode: u32 },
    #[error("bundle spec {path} cannot be used: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("cannot write the container spec: {0}")]
    Spec(String),
    #[error(
        "resource limits cannot be applied: {reason}; run as root or delegate a cgroup v2 subtree \
         to this user{}", if *unlimited_possible { ", or pass --allow-unlimited to run without limits" } else { " (running without limits is not possible here either)" }
    )]
    NoLimits {
        reason: String,
        unlimited_possible: bool,
    },
    #[error(transparent)]
    Measure(#[from] MeasureError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    IdMap(#[from] IdMapError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Rootless(#[from] crate::rootless::RootlessError),
    #[error("container '{id}': {source}")]
    Lib {
        id: String,
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl RuntimeError {
    /// Wraps a libcontainer error with the container id.
    pub(crate) fn from_lib(
        id: &ContainerId,
    ) -> impl Fn(libcontainer::error::LibcontainerError) -> Self + '_ {
        move |source| RuntimeError::Lib {
            id: id.to_string(),
            source: Box::new(source),
        }
    }
}
