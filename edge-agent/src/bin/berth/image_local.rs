//! `berth image unpack`, `berth image build`: local image work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_image::build;
use berth_image::layout::Digest;
use berth_image::unpack::{self, Ownership};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum LocalCmd {
    /// Unpack an OCI image layout or one layer tarball (.tar, .tar.gz,
    /// .tar.zst) into the new directory DEST exactly as a device does, and
    /// print the rootfs measurement. A refused layer exits non-zero with the reason.
    Unpack {
        /// An OCI image layout directory, or a layer tarball.
        src: PathBuf,
        /// The image directory to create (rootfs/, config.json, measurement, manifest).
        dest: PathBuf,
        /// The manifest to unpack when the layout holds several (sha256:…).
        #[arg(long)]
        digest: Option<String>,
        /// Create device nodes and fifos instead of refusing them.
        #[arg(long)]
        allow_devices: bool,
        /// Keep setuid/setgid bits instead of clearing them.
        #[arg(long)]
        allow_setid: bool,
        /// Keep security.capability attributes instead of dropping them.
        #[arg(long)]
        allow_file_caps: bool,
        /// Write owners shifted into the host id range START:SIZE.
        #[arg(long, value_name = "START:SIZE")]
        map_ids: Option<String>,
        /// Cap on uncompressed bytes over all layers.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Cap on tar headers over all layers.
        #[arg(long)]
        max_entries: Option<u64>,
    },
    /// Build an OCI image layout from DIR (recipe.toml, rootfs/, rootfs-<arch>/),
    /// reproducibly: the same input always gives the same digests.
    Build {
        /// The directory holding the recipe and the files.
        dir: PathBuf,
        /// The layout directory to create.
        #[arg(short, long)]
        out: PathBuf,
        /// The recipe (default DIR/recipe.toml).
        #[arg(long)]
        recipe: Option<PathBuf>,
    },
}

pub fn run(cmd: LocalCmd) -> Result<ExitCode> {
    match cmd {
        LocalCmd::Unpack {
            src,
            dest,
            digest,
            allow_devices,
            allow_setid,
            allow_file_caps,
            map_ids,
            max_bytes,
            max_entries,
        } => {
            let mut opts = unpack::Options::default();
            opts.policy.allow_devices = allow_devices;
            opts.policy.allow_setid = allow_setid;
            opts.policy.allow_file_caps = allow_file_caps;
            if let Some(b) = max_bytes {
                opts.limits.max_bytes = b;
            }
            if let Some(e) = max_entries {
                opts.limits.max_entries = e;
            }
            if let Some(m) = map_ids {
                let (base, size) = m
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .with_context(|| format!("--map-ids {m:?}: expected START:SIZE"))?;
                opts.ownership = Ownership::Shift { base, size };
            }
            let digest = digest
                .map(|d| Digest::parse(&d))
                .transpose()
                .context("--digest")?;
            let out = if src.is_dir() {
                unpack::unpack_layout(&src, digest.as_ref(), &dest, &opts)
            } else {
                if digest.is_some() {
                    bail!(
                        "--digest picks a manifest of an image layout, but {} is a layer tarball",
                        src.display()
                    );
                }
                unpack::unpack_tarball(&src, &dest, &opts)
            }
            .with_context(|| format!("cannot unpack {}", src.display()))?;
            if let Some(m) = &out.manifest {
                println!("manifest {m}");
            }
            println!(
                "layers {} entries {} bytes {} stripped {} whiteouts {}",
                out.layers, out.stats.entries, out.bytes, out.stats.stripped, out.stats.whiteouts
            );
            println!("measurement {}", out.measurement);
            Ok(ExitCode::SUCCESS)
        }
        LocalCmd::Build { dir, out, recipe } => {
            let built = build::build(&dir, recipe.as_deref(), &out)
                .with_context(|| format!("cannot build an image from {}", dir.display()))?;
            println!("index {}", built.index.digest);
            for m in &built.manifests {
                let arch = m.platform.as_ref().map_or("?", |p| p.architecture.as_str());
                println!("manifest {arch} {}", m.digest);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
