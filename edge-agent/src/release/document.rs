//! The release document: what a fleet should run, schema version 1, or 2
//! when it carries sealed secrets (a schema-1 document reads unchanged; an
//! agent that knows only schema 1 refuses a schema-2 one by its version).
//!
//! Operators write it as TOML (`release.toml`); it is published, signed, as
//! the TUF target `releases/<fleet>.json` in its JSON form. Both forms parse
//! into [`Release`] through the same serde model, and every error names the
//! path of the offending field (`workloads[1].image.digests.arm64`).
//!
//! ```toml
//! schema = 1
//! fleet = "pumps"
//! generation = 7
//! devices = []                      # empty: every device of the fleet
//!
//! [[workloads]]
//! name = "sensor"
//! image = { registry = "registry.example:5000", repository = "berth/sensor",
//!           digests = { amd64 = "sha256:…", arm64 = "sha256:…" } }
//! args = ["/sensor", "--every", "5s"]
//! env = { LEVEL = "info" }
//! user = "1000:1000"
//! resources = { memory_mb = 32, cpu_millis = 250, pids = 64 }
//! volumes = [{ name = "readings", path = "/data" }]
//! devices = ["/dev/ttyUSB0"]
//! network = "none"
//! health = { check = "uptime", seconds = 3, deadline_s = 30 }
//! restart = { policy = "always", backoff_initial_ms = 500, backoff_max_ms = 30000 }
//! after = []
//! secrets = [{ name = "db-password" },  # schema 2: at /run/secrets/db-password
//!            { name = "api-token", env = "API_TOKEN" }]  # and in $API_TOKEN
//!
//! [[secrets]]                            # schema 2: `berth secret seal` prints this
//! name = "db-password"
//! digest = "sha256:…"                    # of `sealed`
//! sealed = """-----BEGIN AGE ENCRYPTED FILE-----…"""
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{Digest, WorkloadName};

/// The base schema version (no secrets).
pub const SCHEMA: u32 = 1;
/// The newest schema version this agent understands: 2 adds sealed secrets.
pub const SCHEMA_SECRETS: u32 = 2;

/// A release: a generation of a fleet's desired workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub schema: u32,
    pub fleet: String,
    /// Strictly increasing per fleet; a device never moves to a lower one.
    pub generation: u64,
    /// Device ids this release is meant for; empty means the whole fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    pub workloads: Vec<Workload>,
    /// Secrets sealed to the devices' X25519 keys (schema 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
}

/// A secret sealed (age, ASCII-armoured) to one or more devices' keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Its file name in `/run/secrets` (a DNS label).
    pub name: WorkloadName,
    /// `sha256:` of `sealed`, so a workload's definition pins the exact
    /// sealed text (and a new one restarts only the workloads that use it).
    pub digest: Digest,
    /// The age file, ASCII-armoured.
    pub sealed: String,
}

/// A workload's use of a secret: a file `/run/secrets/NAME` (mode 0400,
/// owned by the workload's user) in a tmpfs mounted only into it; with
/// `env`, also that environment variable of the workload's process, set
/// from the file inside the container when it is executed (never written
/// into a spec, an argument or a log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub name: WorkloadName,
    /// The environment variable that also receives the secret (opt-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// One container the release runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: WorkloadName,
    pub image: ImageSpec,
    /// Replaces the image's entrypoint + cmd when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `uid[:gid]` inside the container; the image's user when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Host devices passed through; device policy must allow each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub restart: Restart,
    /// Workloads that must be started (and healthy) before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<WorkloadName>,
    /// Secrets of the release this workload receives (schema 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// An image pinned by manifest digest, per architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// `host[:port]` of the registry (or a mirror list's first entry).
    pub registry: String,
    pub repository: String,
    pub digests: BTreeMap<Arch, Digest>,
}

/// A device architecture, in OCI `platform.architecture` spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
    Arm,
}

impl Arch {
    /// The architecture this agent was built for.
    pub fn native() -> Option<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Self::Amd64),
            "aarch64" => Some(Self::Arm64),
            "arm" => Some(Self::Arm),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
            Self::Arm => "arm",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource limits; absent values take the defaults below.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl Resources {
    pub const DEFAULT_MEMORY_MB: u64 = 64;
    pub const DEFAULT_CPU_MILLIS: u64 = 500;
    pub const DEFAULT_PIDS: u64 = 128;

    pub fn memory_mb(&self) -> u64 {
        self.memory_mb.unwrap_or(Self::DEFAULT_MEMORY_MB)
    }
    pub fn cpu_millis(&self) -> u64 {
        self.cpu_millis.unwrap_or(Self::DEFAULT_CPU_MILLIS)
    }
    pub fn pids(&self) -> u64 {
        self.pids.unwrap_or(Self::DEFAULT_PIDS)
    }
}

/// A named volume (kept across updates and rollbacks) mounted at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub name: WorkloadName,
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// Network mode: a private namespace with only `lo`, or the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    None,
    Host,
}

/// How the agent decides a workload is healthy, and by when. (Unknown
/// fields are refused by [`Check`], which receives all but `deadline_s`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    #[serde(flatten)]
    pub check: Check,
    /// The whole release fails its gate if this workload is not healthy in time.
    #[serde(default = "Health::default_deadline")]
    pub deadline_s: u64,
}

impl Health {
    pub const DEFAULT_UPTIME_S: u64 = 3;
    fn default_deadline() -> u64 {
        30
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            check: Check::Uptime {
                seconds: Self::DEFAULT_UPTIME_S,
            },
            deadline_s: Self::default_deadline(),
        }
    }
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "lowercase", deny_unknown_fields)]
pub enum Check {
    /// Running, without a restart, for this long.
    Uptime { seconds: u64 },
    /// A command run inside the container exits 0.
    Command { command: Vec<String> },
    /// A TCP connect to this host-network port succeeds.
    Tcp { port: u16 },
    /// An HTTP GET on the host network answers 2xx.
    Http { port: u16, path: String },
}

/// What happens when a workload exits after its release is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    pub policy: RestartPolicy,
    #[serde(default = "Restart::default_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "Restart::default_max")]
    pub backoff_max_ms: u64,
}

impl Restart {
    fn default_initial() -> u64 {
        500
    }
    fn default_max() -> u64 {
        60_000
    }
}

impl Default for Restart {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::Always,
            backoff_initial_ms: Self::default_initial(),
            backoff_max_ms: Self::default_max(),
        }
    }
}

/// `always`: a workload that stops is restarted with exponential backoff;
/// `never`: it is left stopped and reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    Never,
}
