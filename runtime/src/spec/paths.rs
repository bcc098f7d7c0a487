//! Checks on every path that crosses from an image, a release or a caller into
//! a spec: container paths are absolute and normal, nothing a mount lands on is
//! a symlink inside the rootfs, host sources are what they claim to be.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, SFlag};

/// A path that cannot go into a spec.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{what} '{path}' is not a clean absolute path inside the container (no '..', '.', '//' or NUL): fix the image or release")]
    NotClean { what: &'static str, path: String },
    #[error("{what} '{path}' points into {area}, which the runtime owns: choose a path elsewhere")]
    Reserved {
        what: &'static str,
        path: String,
        area: &'static str,
    },
    #[error("'{path}' in the rootfs is a symlink (to '{target}'); the runtime mounts there and refuses to follow it: the image is malformed or malicious")]
    SymlinkInRootfs { path: String, target: String },
    #[error("'{path}' in the rootfs is not a directory, but the runtime mounts a directory there: the image is malformed")]
    NotDirInRootfs { path: String },
    #[error("mount point '{path}' does not exist in the image: the rootfs is measured and read-only, so add the directory to the image")]
    NoMountpoint { path: String },
    #[error("{what} {path} cannot be used: {reason}")]
    Host {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("user '{user}' cannot be used: {reason}")]
    User { user: String, reason: String },
    #[error(
        "the image has no entrypoint and no command, and none was given: set args for the workload"
    )]
    NoEntrypoint,
    #[error("environment entry '{0}' is not KEY=VALUE with a non-empty KEY free of '=' and NUL")]
    Env(String),
    #[error("the generated spec is invalid: {0}")]
    Spec(String),
    #[error(transparent)]
    SecretEnv(#[from] crate::secret_env::SecretEnvError),
}

/// Validates an absolute container path: no `..`, `.`, empty components, NUL.
pub fn container_path(p: &str, what: &'static str) -> Result<String, PathError> {
    let bad = || PathError::NotClean {
        what,
        path: p.to_string(),
    };
    if !p.starts_with('/') || p.contains('\0') || p.len() > 4096 {
        return Err(bad());
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    for c in trimmed[1..].split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(bad());
        }
    }
    Ok(trimmed.to_string())
}

/// Refuses a working directory or mount target inside a kernel file system the
/// runtime mounts (`/proc`, `/sys`, `/dev`), where a path such as
/// `/proc/self/fd/N` could resolve to a host file descriptor.
pub fn not_reserved(p: &str, what: &'static str) -> Result<(), PathError> {
    for area in ["/proc", "/sys", "/dev"] {
        if p == area || p.starts_with(&format!("{area}/")) {
            return Err(PathError::Reserved {
                what,
                path: p.to_string(),
                area,
            });
        }
    }
    Ok(())
}

/// A rootfs opened once (an `O_PATH` directory) for the checks of one spec:
/// each check looks its path up from this handle, component by component,
/// however the rootfs itself is reached (the view of an image is a
/// `/proc/self/fd` path). A rootfs that cannot be opened fails nothing here:
/// the runtime reports it when it mounts it.
#[derive(Debug)]
pub struct RootDir(Option<fs::File>);

impl RootDir {
    pub fn open(rootfs: &Path) -> Self {
        RootDir(
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(rootfs)
                .ok(),
        )
    }

    /// Checks that no existing component of `dest` is a symlink (and that
    /// existing intermediate components are directories).
    pub fn check_no_symlink(&self, dest: &str) -> Result<(), PathError> {
        let Some(root) = &self.0 else {
            return Ok(());
        };
        let names: Vec<_> = Path::new(dest)
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut cur = PathBuf::new();
        let mut shown = String::new();
        for (i, name) in names.iter().enumerate() {
            cur.push(name);
            shown.push('/');
            shown.push_str(&name.to_string_lossy());
            let Ok(st) = fstatat(Some(root.as_raw_fd()), &cur, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                return Ok(());
            };
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFLNK {
                let target = nix::fcntl::readlinkat(Some(root.as_raw_fd()), &cur)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(PathError::SymlinkInRootfs {
                    path: shown,
                    target,
                });
            }
            if kind != SFlag::S_IFDIR && i + 1 < names.len() {
                return Err(PathError::NotDirInRootfs { path: shown });
            }
        }
        Ok(())
    }

    /// A mount point must already exist in the rootfs: the rootfs is
    /// measured and launched read-only, so the runtime never creates
    /// anything in it.
    pub fn check_mountpoint(&self, dest: &str) -> Result<(), PathError> {
        let rel = Path::new(dest.trim_start_matches('/'));
        let found = self.0.as_ref().is_some_and(|root| {
            rel.as_os_str().is_empty()
                || fstatat(Some(root.as_raw_fd()), rel, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
        });
        if !found {
            return Err(PathError::NoMountpoint {
                path: dest.to_string(),
            });
        }
        Ok(())
    }

    /// Reads a file of the rootfs (its last component not followed if it
    /// is a symlink).
    pub fn read_to_string(&self, file: &str) -> std::io::Result<String> {
        let root = self
            .0
            .as_ref()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        let fd = crate::sys::open_at(
            root.as_raw_fd(),
            file.trim_start_matches('/'),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW,
        )?;
        let mut f = fs::File::from(fd);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text)?;
        Ok(text)
    }
}

/// A host directory used as a volume source: absolute, existing, a real directory.
pub fn check_host_dir(p: &Path, what: &'static str) -> Result<(), PathError> {
    let err = |reason: &str| PathError::Host {
        what,
        path: p.to_path_buf(),
        reason: reason.to_string(),
    };
    if !p.is_absolute() {
        return Err(err("it is not an absolute path"));
    }
    let md = fs::symlink_metadata(p).map_err(|e| err(&e.to_string()))?;
    if !md.is_dir() {
        return Err(err("it is not a directory (symlinks are not followed)"));
    }
    Ok(())
}

/// A host device node to pass through.
#[derive(Debug, Clone)]
pub struct HostDevice {
    pub path: String,
    pub kind: &'static str,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
}

/// Reads a host device node (`/dev/...`, a real char or block device).
pub fn host_device(p: &Path) -> Result<HostDevice, PathError> {
    let err = |reason: &str| PathError::Host {
        what: "device",
        path: p.to_path_buf(),
        reason: reason.to_string(),
    };
    let s = p.to_str().ok_or_else(|| err("not UTF-8"))?;
    container_path(s, "device path")?;
    if !s.starts_with("/dev/") {
        return Err(err("devices must live under /dev"));
    }
    let md = fs::symlink_metadata(p).map_err(|e| err(&e.to_string()))?;
    let kind = if md.file_type().is_char_device() {
        "c"
    } else if md.file_type().is_block_device() {
        "b"
    } else {
        return Err(err("it is not a character or block device"));
    };
    if md.mode() & 0o006 != 0o006 {
        return Err(err(&format!(
            "its mode {:o} does not let others read and write it, and a workload's user namespace \
             sees the node's host owner as 'nobody'; grant access with a udev rule (MODE=\"0666\") \
             for devices meant for workloads",
            md.mode() & 0o777
        )));
    }
    let rdev = md.rdev();
    Ok(HostDevice {
        path: s.to_string(),
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
        mode: md.mode() & 0o777,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths() {
        assert_eq!(container_path("/data/", "t").unwrap(), "/data");
        assert_eq!(container_path("/", "t").unwrap(), "/");
        for bad in ["data", "/a/../b", "/a//b", "/./a", "/a\0", ""] {
            assert!(container_path(bad, "t").is_err(), "{bad:?}");
        }
        assert!(not_reserved("/proc/self/fd/3", "t").is_err());
        assert!(not_reserved("/devices", "t").is_ok());
    }

    #[test]
    fn symlinks_in_rootfs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("dev")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("/host/null", d.path().join("dev/null")).unwrap();
        let root = RootDir::open(d.path());
        let e = root.check_no_symlink("/proc").unwrap_err();
        assert!(
            e.to_string().contains("'/proc' in the rootfs is a symlink"),
            "{e}"
        );
        assert!(root.check_no_symlink("/dev/null").is_err());
        assert!(root.check_no_symlink("/dev").is_ok());
        assert!(root.check_no_symlink("/missing/x").is_ok());
    }
}
