//! `berth`: the operator and admin CLI — keys and signed repositories, images,
//! offline bundles. Thin: every command parses its arguments and calls a library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent;
mod bundle;
#[cfg(feature = "demo")]
mod demo;
mod device;
mod enroll;
mod fleet;
mod image_local;
mod image_remote;
mod publish;
mod release;
mod secret;
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
    /// Offline bundles: a signed release and its images in one file.
    Bundle {
        #[command(subcommand)]
        cmd: bundle::BundleCmd,
    },
    /// The fleet as its devices report it over MQTT.
    Fleet {
        #[command(subcommand)]
        cmd: fleet::FleetCmd,
    },
    /// The whole update story on this machine: build, sign, publish, update,
    /// roll back, refuse a tampered release (needs root; nothing external).
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Release documents.
    Release {
        #[command(subcommand)]
        cmd: release::ReleaseCmd,
    },
    /// This device's generation, update phase and workloads (from the local agent).
    Status(device::ApiArgs),
    /// Finished updates on this device: committed, rolled back, why.
    History(device::ApiArgs),
    /// A workload's retained output on this device.
    Logs(device::LogsArgs),
    /// The device's signed launch log, for a verifier's nonce.
    Attest(device::AttestArgs),
    /// Check a device's attestation against its enrolled key.
    VerifyAttestation(device::VerifyArgs),
    /// Enrollment: a device's keys and request, the operator's approval.
    Device {
        #[command(subcommand)]
        cmd: enroll::DeviceCmd,
    },
    /// Secrets sealed to devices' keys, for releases.
    Secret {
        #[command(subcommand)]
        cmd: secret::SecretCmd,
    },
    /// Agent builds for devices' self-update.
    Agent {
        #[command(subcommand)]
        cmd: agent::AgentCmd,
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
        Cmd::Release { cmd } => release::run(cmd),
        #[cfg(feature = "demo")]
        Cmd::Demo(a) => demo::run(a),
        Cmd::Fleet { cmd } => fleet::run(cmd),
        Cmd::Status(a) => device::status(a),
        Cmd::History(a) => device::history(a),
        Cmd::Logs(a) => device::logs(a),
        Cmd::Attest(a) => device::attest(a),
        Cmd::VerifyAttestation(a) => device::verify_attestation(a),
        Cmd::Device { cmd } => enroll::run(cmd),
        Cmd::Secret { cmd } => secret::run(cmd),
        Cmd::Agent { cmd } => agent::run(cmd),
        Cmd::Bundle { cmd } => bundle::run(cmd),
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
