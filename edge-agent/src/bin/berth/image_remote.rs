//! `berth image push`, `berth image pull`: talking to registries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_image::registry::{self, ClientConfig, Credentials, ImageRef};
use berth_image::store::Store;
use berth_image::unpack::Options;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Push an OCI image layout to a registry (resumable chunked upload).
    Push {
        /// OCI image layout directory.
        layout: PathBuf,
        /// Target: HOST[:PORT]/REPOSITORY[:TAG].
        reference: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Pull an image pinned by manifest digest into a blob store, verifying every byte.
    Pull {
        /// HOST[:PORT]/REPOSITORY[:TAG]@sha256:HEX.
        reference: String,
        /// Blob store directory.
        #[arg(long)]
        store: PathBuf,
        /// Registry mirrors (HOST[:PORT]) tried in order before the image's registry.
        #[arg(long = "mirror")]
        mirrors: Vec<String>,
        /// Minimum transfer rate in bytes/s, averaged over 30 s windows (0: none).
        #[arg(long, default_value_t = 1024)]
        min_rate: u64,
        /// Once pulled, unpack the image from the store into this new
        /// directory (as `berth image unpack` does) and print its measurement.
        #[arg(long, value_name = "DEST")]
        unpack: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Connection options shared by push and pull.
#[derive(Args)]
pub struct Conn {
    /// Extra CA certificate (PEM) to trust for the registry.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Registry user; the password is read from BERTH_REGISTRY_PASSWORD.
    #[arg(long)]
    user: Option<String>,
    /// Layer transfers in flight at once.
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    /// Overall deadline in seconds.
    #[arg(long, default_value_t = 3600)]
    deadline: u64,
}

impl Conn {
    fn config(self) -> Result<ClientConfig> {
        let mut cfg = ClientConfig {
            parallel: self.jobs.max(1),
            deadline: Duration::from_secs(self.deadline),
            progress: true,
            ..ClientConfig::default()
        };
        if let Some(ca) = self.ca {
            let pem = std::fs::read(&ca)
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            cfg.ca_pem.push(pem);
        }
        if let Some(user) = self.user {
            let password = std::env::var("BERTH_REGISTRY_PASSWORD").context(
                "--user is given but BERTH_REGISTRY_PASSWORD is not set; export the password there",
            )?;
            cfg.credentials = Some(Credentials { user, password });
        }
        Ok(cfg)
    }
}

pub fn run(cmd: RemoteCmd) -> Result<ExitCode> {
    match cmd {
        RemoteCmd::Push {
            layout,
            reference,
            conn,
        } => {
            let target: ImageRef = reference.parse()?;
            let report = registry::push_blocking(conn.config()?, &layout, &target)
                .with_context(|| format!("pushing {} to {target} failed", layout.display()))?;
            if let Some(d) = &report.digest {
                println!("digest={d}");
            }
            println!(
                "uploaded_blobs={} existing_blobs={} uploaded_bytes={} resumed_uploads={}",
                report.uploaded_blobs,
                report.existing_blobs,
                report.uploaded_bytes,
                report.resumed_uploads
            );
            Ok(ExitCode::SUCCESS)
        }
        RemoteCmd::Pull {
            reference,
            store,
            mirrors,
            min_rate,
            unpack,
            conn,
        } => {
            let image: ImageRef = reference.parse()?;
            image.pinned()?;
            let mut cfg = conn.config()?;
            cfg.mirrors = mirrors;
            cfg.min_rate = min_rate;
            let store = Store::open(&store)?;
            // With --unpack, layers are applied as they arrive.
            let (pulled, unpacked) = match &unpack {
                Some(dest) => {
                    let (p, u) = registry::pull_unpack_blocking(
                        cfg,
                        &image,
                        &store,
                        dest,
                        &Options::default(),
                    )
                    .with_context(|| {
                        format!(
                            "pulling {image} and unpacking it into {} failed",
                            dest.display()
                        )
                    })?;
                    (p, Some(u))
                }
                None => (
                    registry::pull_blocking(cfg, &image, &store)
                        .with_context(|| format!("pulling {image} failed"))?,
                    None,
                ),
            };
            let r = &pulled.report;
            println!("manifest={}", pulled.manifest.digest);
            println!("config={}", pulled.manifest.config.digest);
            for l in &pulled.manifest.layers {
                println!(
                    "layer={} size={} compression={:?}",
                    l.descriptor.digest, l.descriptor.size, l.compression
                );
            }
            println!(
                "platform={}/{}",
                pulled.config.os, pulled.config.architecture
            );
            println!(
                "fetched_blobs={} present_blobs={} network_bytes={} refetched_bytes={} resumes={} seconds={:.3}",
                r.fetched_blobs,
                r.present_blobs,
                r.network_bytes,
                r.refetched_bytes,
                r.resumes,
                r.elapsed.as_secs_f64()
            );
            if let Some(out) = unpacked {
                println!(
                    "unpacked layers={} entries={} bytes={}",
                    out.layers, out.stats.entries, out.bytes
                );
                println!("measurement={}", out.measurement);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
