//! `berth`: the operator and admin CLI — keys and signed repositories, images,
//! offline bundles. Thin: every command parses its arguments and calls a library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod image_local;
mod image_remote;
mod trust;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Build, sign and publish Berth releases"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Signing keys (ed25519, ecdsa-sha2-nistp256).
    Key {
        #[command(subcommand)]
        cmd: trust::KeyCmd,
    },
    /// A TUF repository of signed releases.
    Repo {
        #[command(subcommand)]
        cmd: trust::RepoCmd,
    },
    /// The TUF client (also the conformance-suite client-under-test interface).
    Tuf(trust::TufArgs),
    /// OCI images: build, unpack, push, pull.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    #[command(flatten)]
    Local(image_local::LocalCmd),
    #[command(flatten)]
    Remote(image_remote::RemoteCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Key { cmd } => trust::key(cmd),
        Cmd::Repo { cmd } => trust::repo(cmd),
        Cmd::Tuf(args) => trust::tuf(args),
        Cmd::Image { cmd } => match cmd {
            ImageCmd::Local(cmd) => image_local::run(cmd),
            ImageCmd::Remote(cmd) => image_remote::run(cmd),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
