//! `berth bundle …`: offline bundles (one file with a signed release, its
//! metadata and its images) for devices without a network.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_agent::bundle::{self, CreateOptions, Summary};
use berth_agent::release::Arch;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BundleCmd {
    /// Pack a published release, the metadata that proves it and exactly the image
    /// blobs it needs into one file.
    Create {
        /// Repository directory, as `berth repo publish` writes it.
        #[arg(long)]
        repo: PathBuf,
        /// Fleet whose release to pack (the target releases/FLEET.json).
        #[arg(long, required_unless_present = "target", conflicts_with = "target")]
        fleet: Option<String>,
        /// Release target name, instead of releases/FLEET.json.
        #[arg(long)]
        target: Option<String>,
        /// OCI image layout (`berth image build` output) or blob store holding the
        /// images; repeat to search several, in order.
        #[arg(long = "from", required = true)]
        from: Vec<PathBuf>,
        /// Only this architecture's images (repeatable; default: every architecture
        /// in the release).
        #[arg(long = "arch")]
        arches: Vec<String>,
        /// The bundle file to write.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Check a bundle completely against a trusted root.json (no device, no network):
    /// signatures, expiry, the release document and every blob.
    Verify {
        file: PathBuf,
        /// The fleet's root.json, obtained out of band.
        #[arg(long)]
        root: PathBuf,
        /// Only this architecture's blobs (repeatable; default: all the bundle carries).
        #[arg(long = "arch")]
        arches: Vec<String>,
    },
}

fn arches(names: &[String]) -> Result<Vec<Arch>> {
    names
        .iter()
        .map(|n| bundle::parse_arch(n).map_err(anyhow::Error::msg))
        .collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print(s: &Summary) {
    let m = &s.manifest;
    println!(
        "release {} (fleet {}, generation {})",
        m.target, m.fleet, m.generation
    );
    println!(
        "metadata: root v{}, timestamp v{}, snapshot v{}, targets v{}",
        s.versions.root, s.versions.timestamp, s.versions.snapshot, s.versions.targets
    );
    let archs: Vec<&str> = m.architectures.iter().map(|a| a.as_str()).collect();
    println!("architectures: {}", archs.join(", "));
    println!("images:");
    let width = m.images.iter().map(|i| i.workload.len()).max().unwrap_or(0);
    for i in &m.images {
        println!(
            "  {:width$}  {:5}  {}/{}@{}  {} blobs, {} bytes",
            i.workload,
            i.arch.as_str(),
            i.registry,
            i.repository,
            i.manifest,
            i.blobs,
            i.bytes
        );
    }
    println!(
        "{} blobs, {} bytes ({}); bundle file {} bytes",
        m.blobs,
        m.bytes,
        mib(m.bytes),
        s.file_bytes
    );
}

pub fn run(cmd: BundleCmd) -> Result<ExitCode> {
    match cmd {
        BundleCmd::Create {
            repo,
            fleet,
            target,
            from,
            arches: names,
            out,
        } => {
            let target = target
                .or_else(|| fleet.as_deref().map(bundle::release_target))
                .context("pass --fleet or --target")?;
            let arches = arches(&names)?;
            let s = bundle::create(&CreateOptions {
                repo: &repo,
                target: &target,
                sources: &from,
                arches: &arches,
                out: &out,
                now: bundle::now(),
            })?;
            println!("wrote {}", s.file.display());
            print(&s);
            Ok(ExitCode::SUCCESS)
        }
        BundleCmd::Verify {
            file,
            root,
            arches: names,
        } => {
            let arches = arches(&names)?;
            let root_bytes = std::fs::read(&root).with_context(|| {
                format!(
                    "cannot read {}: pass the fleet's root.json with --root",
                    root.display()
                )
            })?;
            let s = bundle::verify(&file, &root_bytes, &arches, bundle::now())?;
            println!("{}: verified against {}", file.display(), root.display());
            print(&s);
            Ok(ExitCode::SUCCESS)
        }
    }
}
