//! `berth key …`, `berth repo …`, `berth tuf …`: argument parsing and output; the
//! work is in `berth_trust`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_trust::repo::{self, publish_expiries, Repo, RoleSpec};
use berth_trust::updater::{self, Config, Updater};
use berth_trust::{
    DirStore, DirTransport, HttpTransport, KeyType, PrivateKey, PublicKey, Transport,
};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Generate a signing key: OUT (private, mode 0600) and OUT.pub (public).
    Generate {
        /// ed25519 or p256 (ecdsa-sha2-nistp256).
        #[arg(long = "type", default_value = "ed25519")]
        kind: String,
        /// Private key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the key ID of a key file (private or public).
    Id { file: PathBuf },
}

#[derive(Args)]
pub struct RoleKeyArgs {
    /// Public (or private) key files of the timestamp role.
    #[arg(long = "timestamp-key")]
    timestamp_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    timestamp_threshold: u64,
    /// Key files of the snapshot role.
    #[arg(long = "snapshot-key")]
    snapshot_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    snapshot_threshold: u64,
    /// Key files of the top-level targets role.
    #[arg(long = "targets-key")]
    targets_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    targets_threshold: u64,
    /// Key files of the root role.
    #[arg(long = "root-key")]
    root_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    root_threshold: u64,
}

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create a repository: root v1 (consistent snapshots) and an empty targets role.
    Init {
        dir: PathBuf,
        #[command(flatten)]
        roles: RoleKeyArgs,
        /// Private keys to sign root v1 (default: the private root key files given).
        #[arg(long = "sign")]
        sign: Vec<PathBuf>,
        #[arg(long, default_value_t = 365)]
        root_expires_days: i64,
    },
    /// Add or replace a target (copied into the repository under its sha256).
    AddTarget {
        dir: PathBuf,
        /// Target path, e.g. releases/fleet-a.json.
        #[arg(long)]
        path: String,
        /// File with the target's contents.
        #[arg(long)]
        file: PathBuf,
        /// Targets role that lists it.
        #[arg(long, default_value = "targets")]
        role: String,
        /// JSON object stored as the target's `custom` field.
        #[arg(long)]
        custom: Option<String>,
    },
    /// Delegate target paths from one targets role to another.
    Delegate {
        dir: PathBuf,
        #[arg(long, default_value = "targets")]
        from: String,
        #[arg(long)]
        to: String,
        /// Key files of the delegated role.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Path patterns (`*` and `?` stay within one path component).
        #[arg(long = "path", required = true)]
        paths: Vec<String>,
        /// Stop the search at this role for the paths it covers.
        #[arg(long)]
        terminating: bool,
    },
    /// Sign changed targets roles with new versions, then snapshot and timestamp.
    Publish {
        dir: PathBuf,
        /// Private keys to sign with (each role uses the ones it authorizes).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 90)]
        targets_expires_days: i64,
        #[arg(long, default_value_t = 7)]
        snapshot_expires_days: i64,
        #[arg(long, default_value_t = 1)]
        timestamp_expires_days: i64,
    },
    /// Sign root N+1 replacing the keys of the roles given; needs a threshold of the
    /// old and of the new root keys.
    RotateRoot {
        dir: PathBuf,
        #[command(flatten)]
        roles: RoleKeyArgs,
        /// Private keys to sign with (old and new root keys).
        #[arg(long = "sign", required = true)]
        sign: Vec<PathBuf>,
        #[arg(long, default_value_t = 365)]
        root_expires_days: i64,
    },
    /// Sign a new timestamp for the current snapshot (the online key's scheduled job).
    RefreshTimestamp {
        dir: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        expires_days: i64,
    },
}

#[derive(Args)]
pub struct TufArgs {
    /// Where trusted metadata is kept (root.json, timestamp.json, …).
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Repository metadata base: https://…, http://… (loopback or --allow-http), or a directory.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target to download (repeatable; downloaded in order).
    #[arg(long = "target-name")]
    target_names: Vec<String>,
    /// Target files base: https://…, http://…, or a directory.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Where downloaded targets are stored.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// PEM CA certificates to trust for https instead of the built-in roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept plain http for non-loopback hosts.
    #[arg(long)]
    allow_http: bool,
    #[command(subcommand)]
    cmd: TufCmd,
}

#[derive(Subcommand)]
enum TufCmd {
    /// Trust TRUSTED_ROOT (obtained out of band); no network.
    Init { trusted_root: PathBuf },
    /// A full top-level update.
    Refresh,
    /// Refresh, then fetch and verify each --target-name into --target-dir.
    Download,
}

fn load_key(path: &Path) -> Result<(PublicKey, Option<PrivateKey>)> {
    let bytes = fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a key file (JSON)", path.display()))?;
    if v["keyval"]["private"].is_string() {
        let k =
            PrivateKey::from_file(&v).with_context(|| format!("key file {}", path.display()))?;
        Ok((k.public(), Some(k)))
    } else {
        let k: PublicKey = serde_json::from_value(v)
            .with_context(|| format!("{}: not a TUF public key", path.display()))?;
        Ok((k, None))
    }
}

pub(crate) fn private_keys(paths: &[PathBuf]) -> Result<Vec<PrivateKey>> {
    paths
        .iter()
        .map(|p| match load_key(p)? {
            (_, Some(k)) => Ok(k),
            (_, None) => bail!(
                "{} is a public key file; signing needs the private key",
                p.display()
            ),
        })
        .collect()
}

fn role_spec(paths: &[PathBuf], threshold: u64) -> Result<RoleSpec> {
    let keys = paths
        .iter()
        .map(|p| load_key(p).map(|k| k.0))
        .collect::<Result<Vec<_>>>()?;
    if (keys.len() as u64) < threshold || threshold == 0 {
        bail!(
            "threshold {threshold} needs at least that many keys (given {})",
            keys.len()
        );
    }
    Ok(RoleSpec { keys, threshold })
}

fn role_specs(a: &RoleKeyArgs) -> Result<BTreeMap<String, RoleSpec>> {
    let mut out = BTreeMap::new();
    for (name, keys, t) in [
        ("root", &a.root_keys, a.root_threshold),
        ("timestamp", &a.timestamp_keys, a.timestamp_threshold),
        ("snapshot", &a.snapshot_keys, a.snapshot_threshold),
        ("targets", &a.targets_keys, a.targets_threshold),
    ] {
        if !keys.is_empty() {
            out.insert(name.to_string(), role_spec(keys, t)?);
        }
    }
    Ok(out)
}

pub fn key(cmd: KeyCmd) -> Result<ExitCode> {
    match cmd {
        KeyCmd::Generate { kind, out } => {
            let kt = KeyType::parse(&kind)
                .with_context(|| format!("key type {kind:?}: use ed25519 or p256"))?;
            let k = PrivateKey::generate(kt);
            let mut private = serde_json::to_vec_pretty(&k.to_file()?)?;
            private.push(b'\n');
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("creating {} (it must not exist)", out.display()))?;
            f.write_all(&private)?;
            f.sync_all()?;
            let pub_path = PathBuf::from(format!("{}.pub", out.display()));
            let mut public = serde_json::to_vec_pretty(&k.public())?;
            public.push(b'\n');
            fs::write(&pub_path, public)
                .with_context(|| format!("writing {}", pub_path.display()))?;
            println!("{} key {}", k.public().scheme, k.public().keyid());
            println!("private: {} (mode 0600)", out.display());
            println!("public:  {}", pub_path.display());
        }
        KeyCmd::Id { file } => println!("{}", load_key(&file)?.0.keyid()),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn repo(cmd: RepoCmd) -> Result<ExitCode> {
    match cmd {
        RepoCmd::Init {
            dir,
            roles,
            sign,
            root_expires_days,
        } => {
            let specs = role_specs(&roles)?;
            let signers = if sign.is_empty() {
                let keys: Vec<PrivateKey> = roles
                    .root_keys
                    .iter()
                    .filter_map(|p| load_key(p).ok().and_then(|k| k.1))
                    .collect();
                keys
            } else {
                private_keys(&sign)?
            };
            let (r, rec) = Repo::init(&dir, &specs, &signers, root_expires_days)?;
            println!("{rec}");
            println!(
                "repository {}: serve {}",
                dir.display(),
                r.metadata_dir().display()
            );
        }
        RepoCmd::AddTarget {
            dir,
            path,
            file,
            role,
            custom,
        } => {
            let custom = custom
                .map(|c| serde_json::from_str(&c).context("--custom is not JSON"))
                .transpose()?;
            let sha = Repo::open(&dir).add_target(&role, &path, &file, custom)?;
            println!("staged target {path} (sha256 {sha}) in {role}; run berth repo publish");
        }
        RepoCmd::Delegate {
            dir,
            from,
            to,
            keys,
            threshold,
            paths,
            terminating,
        } => {
            let spec = role_spec(&keys, threshold)?;
            Repo::open(&dir).delegate(&from, &to, &spec, &paths, terminating)?;
            println!(
                "staged delegation {from} -> {to} ({threshold} of {} key(s)) for {}; run berth repo publish",
                spec.keys.len(),
                paths.join(" ")
            );
        }
        RepoCmd::Publish {
            dir,
            keys,
            targets_expires_days,
            snapshot_expires_days,
            timestamp_expires_days,
        } => {
            let days = publish_expiries(
                targets_expires_days,
                snapshot_expires_days,
                timestamp_expires_days,
            );
            let recs = repo::publish(&Repo::open(&dir), &private_keys(&keys)?, days)?;
            if recs.is_empty() {
                println!("nothing changed since the last publish");
            }
            for r in recs {
                println!("{r}");
            }
        }
        RepoCmd::RotateRoot {
            dir,
            roles,
            sign,
            root_expires_days,
        } => {
            let rec = repo::rotate_root(
                &Repo::open(&dir),
                &role_specs(&roles)?,
                &private_keys(&sign)?,
                root_expires_days,
            )?;
            println!("{rec}");
            println!("publish again if timestamp, snapshot or targets keys changed");
        }
        RepoCmd::RefreshTimestamp {
            dir,
            keys,
            expires_days,
        } => {
            let rec =
                repo::refresh_timestamp(&Repo::open(&dir), &private_keys(&keys)?, expires_days)?;
            println!("{rec}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_loopback(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

fn transport(url: &str, a: &TufArgs) -> Result<Box<dyn Transport>> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let ca = a
            .ca_file
            .as_ref()
            .map(|p| fs::read(p).with_context(|| format!("reading CA file {}", p.display())))
            .transpose()?;
        let allow = a.allow_http || is_loopback(url);
        Ok(Box::new(HttpTransport::new(url, ca.as_deref(), allow)?))
    } else {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        Ok(Box::new(DirTransport::new(Path::new(dir))))
    }
}

pub fn tuf(args: TufArgs) -> Result<ExitCode> {
    let store = DirStore::open(&args.metadata_dir)?;
    if let TufCmd::Init { trusted_root } = &args.cmd {
        let root = fs::read(trusted_root)
            .with_context(|| format!("reading trusted root {}", trusted_root.display()))?;
        updater::init(&store, &root)?;
        return Ok(ExitCode::SUCCESS);
    }
    let url = args
        .metadata_url
        .as_deref()
        .context("--metadata-url is required for refresh and download")?;
    let metadata = transport(url, &args)?;
    let targets = args
        .target_base_url
        .as_deref()
        .map(|u| transport(u, &args))
        .transpose()?;
    let mut up = Updater::new(
        &store,
        metadata.as_ref(),
        targets.as_deref(),
        Config::default(),
        chrono_now(),
    )?;
    up.refresh()?;
    if let TufCmd::Download = args.cmd {
        let dir = args
            .target_dir
            .as_ref()
            .context("--target-dir is required for download")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for name in &args.target_names {
            let p = up.download(name, dir)?;
            println!("{name}: {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn chrono_now() -> berth_trust::updater::Time {
    berth_trust::updater::now()
}
