//! `berth secret seal`: a secret encrypted (age, X25519) to approved devices'
//! keys from the fleet directory, printed as the `[[secrets]]` table a
//! release carries.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_agent::device::directory::Directory;
use berth_agent::names::WorkloadName;
use berth_agent::release::validate::MAX_SEALED;
use berth_agent::secrets::{self, MAX_PLAINTEXT};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Seal a secret (read from --in, else standard input) to devices.
    Seal(SealArgs),
}

#[derive(Args)]
pub struct SealArgs {
    /// The secret's name: its file in /run/secrets (a-z, 0-9, '-').
    #[arg(long)]
    name: String,
    /// The fleet directory of approved devices (`berth device approve`).
    #[arg(long)]
    fleet_dir: PathBuf,
    /// A device that may open it (repeatable).
    #[arg(long = "to")]
    to: Vec<String>,
    /// Every approved device of this fleet may open it (repeatable).
    #[arg(long = "fleet")]
    fleets: Vec<String>,
    /// The file holding the secret (default: standard input).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Also write the sealed age file here.
    #[arg(short, long)]
    out: Option<PathBuf>,
}

pub fn run(cmd: SecretCmd) -> Result<ExitCode> {
    match cmd {
        SecretCmd::Seal(a) => seal(a),
    }
}

fn seal(a: SealArgs) -> Result<ExitCode> {
    let name =
        WorkloadName::parse(&a.name).map_err(|e| anyhow::anyhow!("--name {:?}: {e}", a.name))?;
    if a.to.is_empty() && a.fleets.is_empty() {
        bail!("name who may open the secret: --to DEVICE and/or --fleet FLEET");
    }
    let dir = Directory::load(&a.fleet_dir)?;
    let recipients = dir.recipients(&a.fleet_dir, &a.to, &a.fleets)?;
    let mut plain = zeroize::Zeroizing::new(Vec::new());
    match &a.input {
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(MAX_PLAINTEXT + 1).read_to_end(&mut plain))
            .with_context(|| format!("cannot read {}", p.display()))?,
        None => std::io::stdin()
            .take(MAX_PLAINTEXT + 1)
            .read_to_end(&mut plain)
            .context("cannot read the secret from standard input")?,
    };
    if plain.len() as u64 > MAX_PLAINTEXT {
        bail!("the secret is larger than {MAX_PLAINTEXT} bytes: deliver large data as a volume or an image");
    }
    let keys: Vec<age::x25519::Recipient> = recipients.values().cloned().collect();
    let sealed = secrets::seal(&plain, &keys)?;
    if sealed.len() > MAX_SEALED {
        bail!("the sealed secret is {} bytes, more than a release accepts ({MAX_SEALED}): seal it to fewer devices per secret", sealed.len());
    }
    if let Some(out) = &a.out {
        std::fs::write(out, &sealed).with_context(|| format!("cannot write {}", out.display()))?;
    }
    eprintln!(
        "sealed {name} for {} device(s): {}",
        recipients.len(),
        recipients.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    println!(
        "[[secrets]]\nname = \"{name}\"\ndigest = \"{}\"\nsealed = '''\n{sealed}'''",
        secrets::digest(&sealed)
    );
    Ok(ExitCode::SUCCESS)
}
