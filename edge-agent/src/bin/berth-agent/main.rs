//! `berth-agent`: the device side of Berth. It hears of releases over MQTT
//! (and a periodic refresh), verifies them through the TUF chain, pulls and
//! unpacks their images, switches to them behind a health gate, and rolls
//! back on failure — resuming or undoing an interrupted update on start.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_agent::agent::Agent;
use berth_agent::config;
use berth_agent::selfupdate;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "Berth's device agent: verified, health-gated, crash-consistent releases"
)]
struct Cli {
    /// Configuration file (its `agent.d/*.toml` drop-ins are read too).
    #[arg(long, default_value = "/etc/berth/agent.toml", global = true)]
    config: PathBuf,
    /// Override one setting: SECTION.KEY=VALUE (repeatable; wins over files
    /// and BERTH__SECTION__KEY variables).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", global = true)]
    overrides: Vec<String>,
    /// Stay attached to the terminal, logging to stderr (the default; kept
    /// for service managers that pass it).
    #[arg(long, global = true)]
    foreground: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration and print it as TOML.
    CheckConfig,
    /// Hand an offline bundle (`berth bundle create`) to the running agent:
    /// it is verified like an online update, then applied.
    Import {
        /// The bundle file.
        file: PathBuf,
    },
}

/// The log filter when `BERTH_LOG` is unset.
const DEFAULT_LOG: &str = "info,sled=warn,rumqttc=warn";

/// Logs to stderr, filtered by `BERTH_LOG` (`LEVEL` and `TARGET=LEVEL`
/// directives, comma-separated: a plain target filter, no per-thread
/// state and no regular expressions in the agent).
fn init_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default: Targets = DEFAULT_LOG.parse().expect("the default filter parses");
    let (filter, bad) = match std::env::var("BERTH_LOG") {
        Ok(v) => match v.parse::<Targets>() {
            Ok(f) => (f, None),
            Err(e) => (
                default,
                Some(format!(
                    "BERTH_LOG={v:?} is not a filter ({e}); using {DEFAULT_LOG:?}"
                )),
            ),
        },
        Err(_) => (default, None),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .init();
    if let Some(bad) = bad {
        tracing::warn!("{bad}");
    }
}

/// glibc's allocator settings for a long-running, mostly idle daemon with
/// short bursts of work on a few threads: one arena (instead of one per
/// thread, up to eight per core, each keeping its own free memory), buffers
/// of 64 KiB and more mapped and unmapped on their own (a pull's buffers do
/// not fragment the heap), no spare padding at the top of the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TUNABLES: &str =
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=65536:glibc.malloc.top_pad=0";

/// glibc reads [`TUNABLES`] once, when the process starts: the agent
/// executes itself again with them, unless `GLIBC_TUNABLES` is set already
/// (the operator's choice wins). Same pid, same arguments.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn lean_malloc() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "berth-agent".into());
    // By its path (not /proc/self/exe): the process keeps its name.
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let err = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", TUNABLES)
        .exec();
    eprintln!("berth-agent: cannot execute itself again with GLIBC_TUNABLES={TUNABLES} ({err}); going on with glibc's defaults");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn lean_malloc() {}

async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
}

/// One thread runs every async task (the link, the API, the pidfd
/// watches, the registry client's connections: all waiting on I/O);
/// blocking work (an update, the health gate, sled, spawning
/// berth-runtime, an API request) runs on a small pool whose threads leave
/// when idle. `None` (after saying why) when it cannot be built.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("berth-agent: cannot start the async runtime: {e}");
            None
        }
    }
}

/// The launcher of `[self_update]`: runs the committed or the trial agent
/// as its child (see `berth_agent::selfupdate::launch`).
fn launch(cfg: &config::AgentConfig, su: &config::SelfUpdate) -> ExitCode {
    let installed = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth-agent: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let launcher = selfupdate::launch::Launcher {
        state: cfg.paths.state.clone(),
        installed,
        args: std::env::args_os().skip(1).collect(),
        deadline: std::time::Duration::from_secs(su.deadline_s),
        tries: su.tries,
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(launcher.run()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("berth-agent: {}", berth_agent::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, None | Some(Cmd::Run)) {
        lean_malloc();
    }
    let cfg = match config::load(&cli.config, std::env::vars(), &cli.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::CheckConfig => {
            match toml::to_string_pretty(&cfg) {
                Ok(t) => print!("{t}"),
                Err(e) => {
                    eprintln!("berth-agent: cannot print the configuration: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Import { file } => {
            let path = match std::fs::canonicalize(&file) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!(
                        "berth-agent: cannot read the bundle {}: {e}",
                        file.display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            let req = berth_agent::api::Request::Import {
                path: path.display().to_string(),
            };
            match berth_agent::api::request(&cfg.paths.socket, &req) {
                Ok(v) => {
                    println!(
                        "imported {} generation {} from {} ({} new blobs, {} bytes; {} already present); the agent applies it now",
                        v["target"].as_str().unwrap_or("?"),
                        v["generation"],
                        path.display(),
                        v["blobs_added"],
                        v["bytes_added"],
                        v["blobs_present"]
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth-agent: import of {} failed: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run => {
            init_tracing();
            if let Some(su) = &cfg.self_update {
                if selfupdate::running().is_none() {
                    return launch(&cfg, su);
                }
                if !selfupdate::tie_to_launcher() {
                    eprintln!("berth-agent: its launcher is gone; not starting");
                    return ExitCode::FAILURE;
                }
            }
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            let agent = match Agent::open(cfg, rt.handle().clone()) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("berth-agent: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(
                foreground = cli.foreground,
                device = %agent.cfg.device.id,
                fleet = %agent.cfg.device.fleet,
                "berth-agent started"
            );
            let restart = agent.restart.clone();
            match rt.block_on(agent.run(signalled())) {
                Ok(()) if restart.requested() => ExitCode::from(selfupdate::EXIT_RESTART),
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
