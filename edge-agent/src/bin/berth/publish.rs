//! `berth release publish`: images pushed where the registry lacks them,
//! the release signed as the TUF target `releases/<fleet>.json`, new
//! snapshot and timestamp written into the repository (which the metadata
//! server serves), and the fleet notified over MQTT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_agent::release::document::Release;
use berth_agent::release::{from_json, from_toml};
use berth_agent::source::release_target;
use berth_image::layout::{self, Layout};
use berth_image::registry::{self, ClientConfig, Credentials, ImageRef};
use berth_trust::repo::{self, publish_expiries, Repo};
use clap::Args;

use crate::fleet::{publish_retained, BrokerArgs};

#[derive(Args)]
pub struct PublishArgs {
    /// The release document (TOML or JSON).
    file: PathBuf,
    /// The fleet it is for (must match the document's `fleet`).
    #[arg(long)]
    fleet: String,
    /// The TUF repository directory (`berth repo init`); its `metadata/`
    /// and `targets/` are what the metadata server serves.
    #[arg(long)]
    repo: PathBuf,
    /// Private keys for the targets, snapshot and timestamp roles.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// OCI image layouts holding the release's images (`berth image
    /// build` output); pushed to the registries the release names.
    #[arg(long = "images")]
    images: Vec<PathBuf>,
    /// Extra CA certificate (PEM) for the registries.
    #[arg(long)]
    registry_ca: Option<PathBuf>,
    /// Registry user; the password is read from BERTH_REGISTRY_PASSWORD.
    #[arg(long)]
    registry_user: Option<String>,
    #[command(flatten)]
    announce: Announce,
}

/// Where devices are notified, and how long the signed metadata lasts
/// (shared by the commands that publish targets).
#[derive(Args)]
pub struct Announce {
    /// Notify devices on this broker (else they find the new target at
    /// their next periodic refresh).
    #[arg(long)]
    pub broker: Option<String>,
    /// CA of the broker's certificate (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The operator's client certificate and key (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The operator's client key (PEM).
    #[arg(long = "mqtt-key")]
    pub key_file: Option<PathBuf>,
    #[arg(long, default_value = "berth")]
    pub prefix: String,
    #[arg(long, default_value_t = 90)]
    pub targets_expires_days: i64,
    #[arg(long, default_value_t = 7)]
    pub snapshot_expires_days: i64,
    #[arg(long, default_value_t = 1)]
    pub timestamp_expires_days: i64,
}

impl Announce {
    pub fn expiries(&self) -> repo::Expiries {
        publish_expiries(
            self.targets_expires_days,
            self.snapshot_expires_days,
            self.timestamp_expires_days,
        )
    }

    /// The broker to notify, if any.
    pub fn broker(&self) -> Option<BrokerArgs> {
        self.broker.as_ref().map(|broker| BrokerArgs {
            broker: broker.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key_file.clone(),
            prefix: self.prefix.clone(),
        })
    }

    /// The retained notification topic of `fleet`.
    pub fn topic(&self, fleet: &str) -> String {
        format!("{}/fleets/{fleet}/timestamp", self.prefix)
    }
}

fn load(file: &Path) -> Result<Release> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    Ok(if file.extension().is_some_and(|e| e == "json") {
        from_json(&name, &bytes)?
    } else {
        from_toml(&name, &String::from_utf8_lossy(&bytes))?
    })
}

/// The generation currently staged for the fleet, if any.
fn published_generation(repo: &Repo, target: &str) -> Result<Option<u64>> {
    let staged = repo.staged_role("targets")?;
    Ok(staged["targets"][target]["custom"]["generation"].as_u64())
}

/// For each manifest digest: the layout holding it and the name of the
/// layout entry to push (a multi-arch index holding it is preferred, so
/// every architecture travels together).
fn index_layouts(dirs: &[PathBuf]) -> Result<BTreeMap<String, (PathBuf, String)>> {
    const REF: &str = "org.opencontainers.image.ref.name";
    let mut out: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
    for d in dirs {
        let lay = Layout::open(d)?;
        let index = lay.index()?;
        for entry in &index.manifests {
            let Some(name) = entry.annotations.get(REF) else {
                continue;
            };
            let mut holds = vec![entry.digest.to_string()];
            if entry.media_type.contains("index") || entry.media_type.contains("list") {
                let bytes = lay.read_blob(entry, "index")?;
                let nested: layout::Index = layout::parse(&bytes, "index", entry.digest.as_str())?;
                holds.extend(nested.manifests.iter().map(|m| m.digest.to_string()));
                for h in holds {
                    out.insert(h, (d.clone(), name.clone()));
                }
            } else {
                for h in holds {
                    out.entry(h).or_insert_with(|| (d.clone(), name.clone()));
                }
            }
        }
    }
    Ok(out)
}

fn push_images(a: &PublishArgs, release: &Release) -> Result<()> {
    if a.images.is_empty() {
        println!("images: none given (--images); the registries must already hold them");
        return Ok(());
    }
    let have = index_layouts(&a.images)?;
    let mut cfg = ClientConfig {
        progress: true,
        ..ClientConfig::default()
    };
    if let Some(ca) = &a.registry_ca {
        cfg.ca_pem
            .push(std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?);
    }
    if let Some(user) = &a.registry_user {
        let password = std::env::var("BERTH_REGISTRY_PASSWORD").context(
            "--registry-user is given but BERTH_REGISTRY_PASSWORD is not set; export the password there",
        )?;
        cfg.credentials = Some(Credentials {
            user: user.clone(),
            password,
        });
    }
    let mut pushed = std::collections::BTreeSet::new();
    for w in &release.workloads {
        let img = &w.image;
        for (arch, digest) in &img.digests {
            let Some((dir, entry)) = have.get(digest.as_str()) else {
                bail!(
                    "workload {}: its {} image {digest} is in none of the --images layouts; build \
                     it (berth image build) and pass its layout",
                    w.name,
                    arch.as_str()
                );
            };
            let repo_key = format!("{}/{}", img.registry, img.repository);
            if !pushed.insert((repo_key.clone(), dir.join(entry))) {
                continue;
            }
            // The layout entry's name is the tag it is pushed under.
            let target: ImageRef = format!("{repo_key}:{entry}").parse()?;
            let report = registry::push_blocking(cfg.clone(), dir, &target)
                .with_context(|| format!("pushing {} to {target} failed", dir.display()))?;
            println!(
                "image: {target} ({} uploaded, {} already there, {} bytes)",
                report.uploaded_blobs, report.existing_blobs, report.uploaded_bytes
            );
        }
    }
    Ok(())
}

pub fn run(a: PublishArgs) -> Result<ExitCode> {
    let release = load(&a.file)?;
    if release.fleet != a.fleet {
        bail!(
            "{} is for fleet {:?}, not {:?}: fix the document's fleet or --fleet",
            a.file.display(),
            release.fleet,
            a.fleet
        );
    }
    let repo = Repo::open(&a.repo);
    let target = release_target(&a.fleet);
    if let Some(g) = published_generation(&repo, &target)? {
        if release.generation <= g {
            bail!(
                "generation {} is not newer than the published generation {g} of fleet {}: devices \
                 refuse it as a rollback; raise `generation`",
                release.generation,
                a.fleet
            );
        }
    }
    push_images(&a, &release)?;

    let doc = serde_json::to_vec_pretty(&release)?;
    let staged = a.repo.join(format!(".{}.release.tmp", a.fleet));
    std::fs::write(&staged, &doc)
        .with_context(|| format!("cannot write into the repository {}", a.repo.display()))?;
    let added = repo.add_target(
        "targets",
        &target,
        &staged,
        Some(serde_json::json!({ "generation": release.generation })),
    );
    let _ = std::fs::remove_file(&staged);
    let sha = added?;
    let keys = crate::trust::private_keys(&a.keys)?;
    for r in repo::publish(&repo, &keys, a.announce.expiries())? {
        println!("signed: {r}");
    }
    let timestamp = repo
        .published("timestamp")?
        .context("the repository has no timestamp after publishing")?;
    let version = timestamp.signed["version"].as_u64().unwrap_or(0);
    println!(
        "release: {target} generation {} ({} workloads, sha256 {sha})",
        release.generation,
        release.workloads.len()
    );
    if let Some(b) = a.announce.broker() {
        let topic = a.announce.topic(&a.fleet);
        let payload = serde_json::to_vec(&serde_json::json!({
            "timestamp_version": version,
            "generation": release.generation,
        }))?;
        publish_retained(&b, &topic, payload)?;
        println!("notified: {topic} (timestamp version {version})");
    }
    Ok(ExitCode::SUCCESS)
}
