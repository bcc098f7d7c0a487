//! `berth-hil`: runs hardware-in-loop scenarios and fleet simulations.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use std::time::Duration;

use berth_hil::campaign::{run, RunOptions};
use berth_hil::fleet::{self, FleetOptions};
use berth_hil::lab::Tools;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-hil", version, about = "Berth's hardware-in-loop rig")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario (TOML) against simulated devices; prints a summary,
    /// exits non-zero when a cycle failed.
    Run {
        scenario: PathBuf,
        /// Cycles to run (default: the scenario's `cycles`).
        #[arg(long)]
        cycles: Option<u64>,
        /// Seed of the random delays (default: the scenario's, else the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Drive an existing fleet described in this TOML file instead of
        /// starting a local lab.
        #[arg(long)]
        env: Option<PathBuf>,
        /// First generation to publish (an existing fleet's next one).
        #[arg(long, default_value_t = 1)]
        first_generation: u64,
        /// Keep devices, logs and the lab here (default: a temporary directory).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Start N simulated devices against one broker and one registry,
    /// publish a release and measure how long until every device runs it;
    /// exits non-zero when some did not.
    Fleet {
        /// Devices to simulate.
        #[arg(long)]
        devices: usize,
        /// Of these, how many start real containers (the rest record).
        #[arg(long, default_value_t = 2)]
        real: usize,
        /// Size of the new image layer the release carries (KiB).
        #[arg(long, default_value_t = 64)]
        payload_kib: u64,
        /// Seconds to wait for bring-up and for convergence, each.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Keep devices, logs and the lab here (default: a temporary directory).
        #[arg(long)]
        work: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match main_() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-hil: {e}");
            let mut cur = e.source();
            while let Some(c) = cur {
                eprintln!("  caused by: {c}");
                cur = c.source();
            }
            ExitCode::from(2)
        }
    }
}

fn main_() -> Result<ExitCode> {
    let cli = Cli::parse();
    let tools = Tools::find(&std::env::current_exe()?);
    match cli.cmd {
        Cmd::Run {
            scenario,
            cycles,
            seed,
            env,
            first_generation,
            work,
            junit,
        } => {
            let opts = RunOptions {
                scenario,
                cycles,
                seed,
                env,
                first_generation,
                work,
                junit,
                tools,
            };
            let out = run(&opts, &mut |c| match &c.failure {
                None => println!("{:<10} ok    {:>7.1} s", c.name, c.time.as_secs_f64()),
                Some(f) => println!(
                    "{:<10} FAIL  {:>7.1} s  {}",
                    c.name,
                    c.time.as_secs_f64(),
                    f.replace('\n', "\n                          ")
                ),
            })?;
            print!("{}", out.summary);
            Ok(if out.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Fleet {
            devices,
            real,
            payload_kib,
            timeout,
            work,
        } => {
            let tmp;
            let work = match work {
                Some(w) => w,
                None => {
                    tmp = tempfile::Builder::new()
                        .prefix("berth-hil-fleet-")
                        .tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            let opts = FleetOptions {
                devices,
                real,
                payload_kib,
                timeout: Duration::from_secs(timeout),
                work,
                tools,
            };
            let report = fleet::run(&opts, &mut |line| println!("{line}"))?;
            print!("{}", report.summary());
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
