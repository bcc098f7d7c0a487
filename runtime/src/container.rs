//! Containers: create, start, wait, signal, delete — for bundles (runc-style)
//! and for verified images (`launch`).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as Inner;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;

use crate::cgroups::{self, Limits};
use crate::error::RuntimeError;
use crate::executor::BerthExecutor;
use crate::idmap::{self, Allocator, IdRange};
use crate::image::Image;
use crate::logs::{self, LogLimits, RotatingLog};
use crate::names::ContainerId;
use crate::rootfs::ImageView;
use crate::spec;

mod control;
mod launch;
mod output;

pub use control::{Container, State};
use output::{null, start_pump};

/// Where a container's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The runtime's own stdio (runc's foreground behaviour).
    Inherit,
    /// Rotating log files, pumped by a thread of this process; `tee` also
    /// copies the output to this process's stdout.
    Logs { tee: bool },
    /// Rotating log files, pumped by a detached helper process that outlives
    /// the caller (for a command-line `launch --detach`).
    LogsDetached,
}

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// State directory (`containers/`, `bundles/`, `logs/`, id allocations).
    pub root: PathBuf,
    /// `/etc/subuid`-style file with the pool of subordinate ids.
    pub subid_file: Option<PathBuf>,
    /// Name whose entries in `subid_file` form the pool.
    pub subid_name: String,
    /// Run workloads without cgroup limits where limits cannot be applied.
    pub allow_unlimited: bool,
    pub log_limits: LogLimits,
    /// Threads used to measure a rootfs (`None`: as many as this process
    /// may use, looked up only for an image with content enough to share).
    pub measure_threads: Option<usize>,
}

impl RuntimeConfig {
    /// Defaults: `/run/berth` for root, `$XDG_RUNTIME_DIR/berth` otherwise.
    pub fn with_root(root: Option<PathBuf>) -> Self {
        Self {
            root: root.unwrap_or_else(default_root),
            subid_file: None,
            subid_name: default_subid_name(),
            allow_unlimited: false,
            log_limits: LogLimits::default(),
            measure_threads: None,
        }
    }
}

/// The default state directory: `/run/berth` for root,
/// `$XDG_RUNTIME_DIR/berth` otherwise.
fn default_root() -> PathBuf {
    let uid = crate::rootless::host_euid();
    if uid == 0 {
        PathBuf::from("/run/berth")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("berth"))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("berth-{uid}")))
    }
}

/// The runtime: a state directory and a pool of id ranges.
#[derive(Debug)]
pub struct Runtime {
    cfg: RuntimeConfig,
    alloc: Option<Allocator>,
    limits: Limits,
}

/// Options of a runc-style `create` from a bundle.
#[derive(Debug, Clone, Default)]
pub struct BundleOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
}

impl Runtime {
    /// Opens (creating) the state directory.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        for sub in ["", "containers", "bundles", "logs"] {
            let dir = cfg.root.join(sub);
            let made = fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&dir);
            made.map_err(|source| RuntimeError::StateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let limits = cgroups::detect();
        Ok(Self {
            alloc: None,
            limits,
            cfg,
        })
    }

    /// Where the runtime keeps its state.
    pub fn root(&self) -> &Path {
        &self.cfg.root
    }

    /// What cgroup limits this runtime can apply.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn containers(&self) -> PathBuf {
        self.cfg.root.join("containers")
    }

    fn logs_dir(&self) -> PathBuf {
        self.cfg.root.join("logs")
    }

    fn allocator(&mut self) -> Result<&Allocator, RuntimeError> {
        if self.alloc.is_none() {
            let caller = nix::unistd::geteuid().as_raw();
            let pool = match &self.cfg.subid_file {
                Some(f) => idmap::pool_from_file(f, &self.cfg.subid_name)?,
                None => match idmap::pool_from_file(Path::new("/etc/subuid"), &self.cfg.subid_name)
                {
                    Ok(p) => p,
                    Err(_) if caller == 0 => vec![idmap::DEFAULT_POOL],
                    Err(e) => return Err(e.into()),
                },
            };
            let slots = idmap::slots(&pool, caller)?;
            self.alloc = Some(Allocator::new(&self.cfg.root, slots));
        }
        Ok(self.alloc.as_ref().expect("allocator was just set"))
    }

    /// Creates a container from an OCI bundle, taking its spec as written
    /// (runc-style `create`).
    pub fn create_bundle(
        &mut self,
        id: &ContainerId,
        bundle: &Path,
        output: Output,
        opts: &BundleOptions,
    ) -> Result<Container, RuntimeError> {
        self.refuse_duplicate(id)?;
        let spec = load_spec(bundle)?;
        spec::check_bundle(&spec, bundle)?;
        self.create_inner(id, bundle, &spec, output, opts, None)
    }

    fn refuse_duplicate(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        if self.containers().join(id.as_str()).exists() {
            return Err(RuntimeError::Duplicate(id.to_string()));
        }
        Ok(())
    }

    fn release(&mut self, id: &ContainerId) {
        if let Ok(a) = self.allocator() {
            let _ = a.release(id.as_str());
        }
    }

    /// Creates container `id` from `bundle`, whose spec (`bundle/config.json`)
    /// the caller has loaded and checked.
    fn create_inner(
        &mut self,
        id: &ContainerId,
        bundle: &Path,
        spec: &Spec,
        output: Output,
        opts: &BundleOptions,
        image: Option<(Option<IdRange>, &ImageView)>,
    ) -> Result<Container, RuntimeError> {
        let range = image.and_then(|(r, _)| r);
        let seccomp = spec::seccomp_mode(spec).map_err(|reason| RuntimeError::Bundle {
            path: bundle.join("config.json"),
            reason,
        })?;
        // The pump starts once the container's processes are forked: a thread
        // that starts while libcontainer forks leaves the child the standard
        // library's lock of thread bookkeeping held (the children never take
        // it: the vendored libcontainer's sixth change), and nothing needs
        // pumping before then: what the container writes waits in the pipe.
        let mut to_pump = None;
        let mut stdio = None;
        if output != Output::Inherit {
            let (read, write) = nix::unistd::pipe().map_err(|e| RuntimeError::Io(e.into()))?;
            let write2 = write.try_clone().map_err(RuntimeError::Io)?;
            stdio = Some((write, write2, null()?));
            let log = RotatingLog::open(&self.logs_dir(), id.as_str(), self.cfg.log_limits)
                .map_err(RuntimeError::Io)?;
            to_pump = Some((read, log));
        }
        let containers = self.containers();
        tracing::debug!(container = %id, "creating");
        // With an image, the init attaches the image's idmapped view at the
        // bundle's rootfs inside the container's own mount namespace.
        let built = (move || -> Result<Inner, RuntimeError> {
            let lib = RuntimeError::from_lib(id);
            let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
                .with_executor(BerthExecutor::new(seccomp))
                .with_root_path(containers)
                .map_err(&lib)?
                .with_pid_file(opts.pid_file.as_ref())
                .map_err(&lib)?
                .with_console_socket(opts.console_socket.as_ref())
                .with_preserved_fds(opts.preserve_fds);
            if let Some((stdout, stderr, stdin)) = stdio {
                builder = builder
                    .with_stdout(stdout)
                    .with_stderr(stderr)
                    .with_stdin(stdin);
            }
            let mut init = builder
                .validate_id()
                .map_err(&lib)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(opts.no_pivot);
            if let Some((_, view)) = image {
                init = init.with_root_mount(view.mount_fd());
            }
            init.build().map_err(&lib)
        })();
        tracing::debug!(container = %id, "created");
        let started = built.and_then(|inner| {
            let pump = to_pump
                .map(|(read, log)| start_pump(read, log, output))
                .transpose()?;
            Ok((inner, pump))
        });
        match started {
            Ok((inner, pump)) => Ok(Container {
                id: id.clone(),
                inner,
                pump,
                root: self.cfg.root.clone(),
                range,
            }),
            Err(err) => {
                self.cleanup_failed(id);
                logs::remove(&self.logs_dir(), id.as_str());
                Err(err)
            }
        }
    }

    /// Removes whatever a failed create left: state, cgroup, processes.
    fn cleanup_failed(&self, id: &ContainerId) {
        let dir = self.containers().join(id.as_str());
        if let Ok(mut c) = Inner::load(dir.clone()) {
            let _ = c.delete(true);
        }
        let _ = fs::remove_dir_all(&dir);
        if let Ok(cgroups::Placement::Limited(p)) = self.limits.place(id.as_str(), false) {
            cgroups::remove_leftover(&p);
        }
    }

    /// Loads an existing container.
    pub fn load(&self, id: &ContainerId) -> Result<Container, RuntimeError> {
        let dir = self.containers().join(id.as_str());
        if !dir.join("state.json").exists() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let mut inner = Inner::load(dir).map_err(RuntimeError::from_lib(id))?;
        inner.refresh_status().map_err(RuntimeError::from_lib(id))?;
        let range = read_range(&self.cfg.root, id.as_str());
        Ok(Container {
            id: id.clone(),
            inner,
            pump: None,
            root: self.cfg.root.clone(),
            range,
        })
    }

    /// Every container under this root.
    pub fn list(&self) -> Result<Vec<State>, RuntimeError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(self.containers()).map_err(RuntimeError::Io)?;
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(id) = ContainerId::parse(&name) else {
                continue;
            };
            if let Ok(c) = self.load(&id) {
                out.push(c.state());
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Retained output of a container, oldest first.
    pub fn logs(&self, id: &ContainerId) -> Result<Vec<u8>, RuntimeError> {
        logs::read_all(&self.logs_dir(), id.as_str())
            .map_err(|_| RuntimeError::NoLogs(id.to_string()))
    }
}

/// `berth` for root; the user's own name otherwise (what `newuidmap` checks).
fn default_subid_name() -> String {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return "berth".to_string();
    }
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// Loads `bundle/config.json`.
fn load_spec(bundle: &Path) -> Result<Spec, RuntimeError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| RuntimeError::Bundle {
        path,
        reason: e.to_string(),
    })
}

/// The cgroup name of container `id` of runtime root `root`: the id for
/// the default root, else prefixed with a tag of the root, so that two
/// runtime roots on one machine (several agents, tests) never share a
/// cgroup.
pub fn cgroup_name(root: &Path, id: &str) -> String {
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    if root == default_root() {
        return id.to_string();
    }
    use sha2::Digest;
    let tag = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    format!("{}-{id}", hex::encode(&tag[..4]))
}

fn read_range(root: &Path, id: &str) -> Option<IdRange> {
    Allocator::new(root, Vec::new()).lookup(id)
}

impl Image {
    /// The rootfs this image launches from.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }
}
