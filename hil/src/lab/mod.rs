//! The environment a rig drives devices in: a fleet's broker, registry,
//! TUF repository and signing keys. [`Lab::start`] sets one up on this
//! machine's loopback (Mosquitto with TLS and client certificates, the
//! Distribution registry with TLS and auth, the TUF repository made with
//! `berth repo init` and served over HTTPS); an existing fleet is described
//! by an [`Environment`] in the rig's configuration instead. Devices reach
//! the registry, broker and metadata server through [`crate::proxy::Link`]s
//! the rig can partition and throttle.

pub mod images;
pub mod peers;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::proxy::Link;
use crate::watch::Broker;
use peers::{free_port, run, Ca, Identity, Peer};

/// A lab step that failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what}: {detail}")]
    Step { what: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LabError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LabError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Everything devices and the rig need to know about a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub fleet: String,
    /// The broker as devices and the rig reach it, and the rig's identity.
    pub broker: Broker,
    /// The CA that issues device client certificates (its `ca.pem` and
    /// `ca.key`), so the rig can enroll simulated devices.
    pub device_ca: Ca,
    /// The TUF metadata URL, the pinned root and the server's CA.
    pub metadata_url: String,
    pub root: PathBuf,
    pub metadata_ca: PathBuf,
    /// The registry host releases name (`host:port`), its CA and account.
    pub registry: String,
    pub registry_ca: PathBuf,
    pub registry_user: String,
    pub registry_password_file: PathBuf,
    /// The TUF repository and the targets/snapshot/timestamp keys that
    /// `berth release publish` signs with.
    pub repo: PathBuf,
    pub keys: Vec<PathBuf>,
}

/// Where the rig finds `berth`, `berth-agent` and `berth-runtime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub berth: PathBuf,
    pub agent: PathBuf,
    pub runtime: PathBuf,
}

impl Tools {
    /// Beside `exe` (the same build), else on PATH.
    pub fn find(exe: &Path) -> Tools {
        let dirs: Vec<PathBuf> = [exe.parent(), exe.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
            .map(Path::to_path_buf)
            .collect();
        let pick = |n: &str| {
            dirs.iter()
                .map(|d| d.join(n))
                .find(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(n))
        };
        Tools {
            berth: pick("berth"),
            agent: pick("berth-agent"),
            runtime: pick("berth-runtime"),
        }
    }
}

/// A local lab: the peers' processes and the links devices use. Dropping
/// it stops everything.
#[derive(Debug)]
pub struct Lab {
    pub dir: PathBuf,
    pub env: Environment,
    pub registry_storage: PathBuf,
    pub links: Links,
    pub peers: Vec<Peer>,
}

/// The links devices reach the peers through.
#[derive(Debug)]
pub struct Links {
    pub registry: Link,
    pub broker: Link,
    pub metadata: Link,
}

impl Links {
    fn all(&self) -> [&Link; 3] {
        [&self.registry, &self.broker, &self.metadata]
    }

    /// Partitions (or heals) every link.
    pub fn partition(&self, on: bool) {
        for l in self.all() {
            l.partition(on);
        }
    }

    /// Limits every link's download rate.
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        for l in self.all() {
            l.throttle(bytes_per_sec);
        }
    }
}

const USER: &str = "berth";

fn link(upstream: u16) -> Result<Link, LabError> {
    Link::start(upstream).map_err(|e| LabError::Step {
        what: "starting a device link".into(),
        detail: e.to_string(),
    })
}

impl Lab {
    /// Starts a lab for fleet `fleet` under `dir`.
    pub fn start(dir: &Path, fleet: &str, tools: &Tools) -> Result<Lab, LabError> {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| LabError::io(dir, e))?
            .to_path_buf();
        let ca = Ca::create(&dir.join("ca"))?;
        let rig = ca.client("berth-hil")?;

        let (mq, rp, mp) = (free_port()?, free_port()?, free_port()?);
        let broker = peers::mosquitto(&dir, &ca, mq)?;
        let password = format!("hil-{:x}", std::process::id() as u64 * 7919);
        let pw = dir.join("registry-password");
        std::fs::write(&pw, &password).map_err(|e| LabError::io(&pw, e))?;
        let registry = peers::registry(&dir, &ca, rp, USER, &password)?;

        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).map_err(|e| LabError::io(&keys, e))?;
        let key = |n: &str| -> Result<PathBuf, LabError> {
            let p = keys.join(n);
            run(
                "generating a signing key (berth key generate)",
                Command::new(&tools.berth)
                    .args(["key", "generate", "--type", "ed25519", "--out"])
                    .arg(&p),
            )?;
            Ok(p)
        };
        let (root, online, targets) = (key("root")?, key("online")?, key("targets")?);
        let repo = dir.join("repo");
        let pubk = |p: &Path| format!("{}.pub", p.display());
        run(
            "creating the TUF repository (berth repo init)",
            Command::new(&tools.berth)
                .args(["repo", "init"])
                .arg(&repo)
                .arg("--root-key")
                .arg(&root)
                .args(["--timestamp-key", &pubk(&online)])
                .args(["--snapshot-key", &pubk(&online)])
                .args(["--targets-key", &pubk(&targets)]),
        )?;
        let meta = peers::metadata_server(&dir, &ca, mp, &repo)?;
        let links = Links {
            registry: link(rp)?,
            broker: link(mq)?,
            metadata: link(mp)?,
        };
        let env = Environment {
            fleet: fleet.to_string(),
            broker: Broker {
                host: "127.0.0.1".into(),
                port: mq,
                ca: ca.cert(),
                cert: rig.cert,
                key: rig.key,
                prefix: "berth".into(),
            },
            device_ca: ca.clone(),
            metadata_url: format!("https://127.0.0.1:{}/metadata", links.metadata.port),
            root: repo.join("metadata/1.root.json"),
            metadata_ca: ca.cert(),
            registry: links.registry.host(),
            registry_ca: ca.cert(),
            registry_user: USER.into(),
            registry_password_file: pw,
            repo,
            keys: vec![online, targets],
        };
        Ok(Lab {
            registry_storage: dir.join("storage"),
            dir,
            env,
            links,
            peers: vec![broker, registry, meta],
        })
    }

    /// The environment with devices reaching the registry and the metadata
    /// server directly instead of through the links (fleet simulations:
    /// no faults injected, the peers measured and not the rig's relays).
    pub fn direct(&self) -> Environment {
        let port = |n: &str| self.peers.iter().find(|p| p.name == n).map(|p| p.port);
        let mut env = self.env.clone();
        if let Some(p) = port(peers::REGISTRY) {
            env.registry = format!("127.0.0.1:{p}");
        }
        if let Some(p) = port(peers::METADATA) {
            env.metadata_url = format!("https://127.0.0.1:{p}/metadata");
        }
        env
    }

    /// The broker port devices use (through their link).
    pub fn device_broker_port(&self) -> u16 {
        self.links.broker.port
    }

    /// The file in the registry's storage holding blob `sha256:<hex>`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.registry_storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }
}

/// Signs and publishes `release` (TOML) with `berth release publish`,
/// pushing `images` first and notifying the fleet when `notify`.
pub fn publish(
    env: &Environment,
    tools: &Tools,
    release: &Path,
    images: &[PathBuf],
    notify: bool,
) -> Result<(), LabError> {
    let password = std::fs::read_to_string(&env.registry_password_file)
        .map_err(|e| LabError::io(&env.registry_password_file, e))?;
    let mut cmd = Command::new(&tools.berth);
    cmd.args(["release", "publish", "--fleet", &env.fleet])
        .arg(release)
        .arg("--repo")
        .arg(&env.repo);
    for k in &env.keys {
        cmd.arg("--key").arg(k);
    }
    for i in images {
        cmd.arg("--images").arg(i);
    }
    cmd.arg("--registry-ca")
        .arg(&env.registry_ca)
        .args(["--registry-user", &env.registry_user])
        .env("BERTH_REGISTRY_PASSWORD", password.trim_end());
    if notify {
        cmd.args([
            "--broker",
            &format!("{}:{}", env.broker.host, env.broker.port),
        ])
        .arg("--ca")
        .arg(&env.broker.ca)
        .arg("--cert")
        .arg(&env.broker.cert)
        .arg("--mqtt-key")
        .arg(&env.broker.key)
        .args(["--prefix", &env.broker.prefix]);
    }
    run(
        &format!("publishing {} (berth release publish)", release.display()),
        &mut cmd,
    )
    .map(drop)
}

/// Pushes an image layout to `reference` (`host/repo:tag`) with `berth image push`.
pub fn push(
    env: &Environment,
    tools: &Tools,
    layout: &Path,
    reference: &str,
) -> Result<(), LabError> {
    let password = std::fs::read_to_string(&env.registry_password_file)
        .map_err(|e| LabError::io(&env.registry_password_file, e))?;
    run(
        &format!("pushing {} to {reference}", layout.display()),
        Command::new(&tools.berth)
            .args(["image", "push"])
            .arg(layout)
            .arg(reference)
            .arg("--ca")
            .arg(&env.registry_ca)
            .args(["--user", &env.registry_user])
            .env("BERTH_REGISTRY_PASSWORD", password.trim_end()),
    )
    .map(drop)
}

/// A device identity issued by the fleet's device CA.
pub fn enroll(env: &Environment, id: &str) -> Result<Identity, LabError> {
    env.device_ca.client(id)
}
