//! Berth's container runtime: verified, hardened, rootless launch of OCI images.
//!
//! # Verified boot
//!
//! An image is launched only if its rootfs still matches the measurement taken
//! when it was unpacked ([`measure`] documents the format, which is part of the
//! chain of trust). One changed byte, added or removed file, or changed mode or
//! owner refuses the launch, naming the first differing path.
//!
//! # Security defaults
//!
//! [`Runtime::launch`] gives every workload, unless its options say otherwise
//! and policy allows it:
//!
//! - a user namespace whose root maps to a subordinate id range of its own
//!   ([`idmap`]): never host root, never the caller's uid, one range per container
//!   (run unprivileged, container root is the caller's uid, see [`rootless`]);
//! - no capabilities (bounding, effective, permitted, inheritable, ambient all
//!   empty) and `no_new_privs`;
//! - the default seccomp filter ([`seccomp`]) denying mount, user-namespace
//!   creation, keyrings, bpf, ptrace and more;
//! - a read-only rootfs: the measured image tree itself, mounted idmapped into
//!   the container's range ([`rootfs`]) so that image owners are container owners;
//!   `/tmp` and `/run` as `nosuid,nodev,noexec` tmpfs;
//!   volumes only where the caller names them;
//! - masked paths (runc's and podman's lists) and a read-only `/proc/sys`;
//! - private pid, ipc, uts, mount, cgroup and network namespaces (network
//!   `none`: only `lo`; `host` on request);
//! - memory, cpu and pids limits always set (defaults when none are given),
//!   unless the caller explicitly allows unlimited workloads where limits cannot
//!   be applied;
//! - only stdio inherited, cwd checked to be inside the rootfs, and the runtime
//!   re-executed from a write-protected executable before it launches anything
//!   ([`seal`]: a detached read-only mount clone as root, a sealed memory copy otherwise).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cgroups;
pub mod container;
pub mod error;
pub mod exec;
pub mod executor;
pub mod idmap;
pub mod image;
pub mod logs;
pub mod measure;
pub mod memory;
pub mod names;
pub mod rootfs;
pub mod rootless;
pub mod seal;
pub mod seccomp;
pub mod secret_env;
pub mod spec;
pub mod sys;
mod xattr;

pub use container::{BundleOptions, Container, Output, Runtime, RuntimeConfig, State};
pub use error::RuntimeError;
pub use image::Image;
pub use measure::{Manifest, Measurement};
pub use names::ContainerId;
pub use spec::{NetworkMode, Resources, Volume, WorkloadOptions};
