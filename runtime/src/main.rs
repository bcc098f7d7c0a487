//! `berth-runtime`: an OCI runtime (runc-style commands on bundles) and the
//! verified, hardened `launch` of unpacked images.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_runtime::{
    measure, seal, BundleOptions, ContainerId, Image, Measurement, NetworkMode, Output, Resources,
    Runtime, RuntimeConfig, Volume, WorkloadOptions,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-runtime",
    version,
    about = "Verified, hardened, rootless OCI runtime"
)]
struct Cli {
    /// State directory (default /run/berth as root, $XDG_RUNTIME_DIR/berth otherwise).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Write runtime diagnostics to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Diagnostics format: text or json (json is written as text lines).
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Verbose diagnostics.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility; systemd cgroup management is not supported.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Bundle directory holding config.json.
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Write the container's init pid to this file.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket to receive the console pseudo-terminal.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Do not use pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Extra file descriptors (after stdio) passed to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container from a bundle (the process waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print the OCI state of a container as JSON.
    State { id: String },
    /// Send a signal to a container (default TERM).
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a container (with --force, a running one too).
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Create and start a container from a bundle; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// List containers.
    List {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Verify an unpacked image against its measurement and launch it with the
    /// hardened defaults.
    Launch(Box<LaunchArgs>),
    /// Print a container's retained output.
    Logs { id: String },
    /// Run a command inside a running container, in all its namespaces, with
    /// its user, capabilities and seccomp filter; exits with the command's status
    /// (125: the runtime failed, 126: cannot run it, 127: not found).
    Exec {
        id: String,
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Measure a rootfs; with --record, write `measurement` and `manifest` into an image directory.
    Measure {
        /// A rootfs directory, or with --record an image directory holding rootfs/.
        dir: PathBuf,
        #[arg(long)]
        record: bool,
        /// The hash function: blake3, or sha256 (as measurements recorded by
        /// earlier releases).
        #[arg(long, default_value = "blake3")]
        algorithm: measure::Algorithm,
    },
}

#[derive(clap::Args)]
struct LaunchArgs {
    /// Unpacked image directory: rootfs/, config.json, manifest.
    #[arg(long)]
    image: PathBuf,
    /// The trusted rootfs measurement (blake3:... or sha256:...), or @FILE to read it from a file.
    #[arg(long)]
    measurement: String,
    /// Extra environment, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// KEY=PATH: set KEY, when the workload is executed, to the content of
    /// the file PATH inside the container (a secret on a tmpfs mount); the
    /// value is never written into the bundle (repeatable).
    #[arg(long = "secret-env", value_name = "KEY=PATH")]
    secret_env: Vec<String>,
    /// User inside the container: uid[:gid] or a name from the image.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Memory limit in bytes (suffixes k, m, g).
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit in CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long)]
    pids: Option<i64>,
    /// Host directory mounted into the container: SRC:DST[:ro][,U] (repeatable; U gives the
    /// tree to the container's user first).
    #[arg(long = "volume", short = 'v')]
    volumes: Vec<String>,
    /// Host device passed through (repeatable).
    #[arg(long = "device")]
    devices: Vec<PathBuf>,
    /// Network: none (only lo) or host.
    #[arg(long, default_value = "none")]
    network: String,
    /// Return once started; output goes to the log files.
    #[arg(long, short = 'd')]
    detach: bool,
    /// /etc/subuid-style file with the pool of subordinate ids.
    #[arg(long = "subid-file")]
    subid_file: Option<PathBuf>,
    /// Name whose entries in the subordinate id file form the pool
    /// (default: berth as root, the user's name otherwise).
    #[arg(long = "subid-name")]
    subid_name: Option<String>,
    /// Run without resource limits where they cannot be applied.
    #[arg(long = "allow-unlimited")]
    allow_unlimited: bool,
    /// Bytes per log file before rotation.
    #[arg(long = "log-max-bytes", default_value_t = 1 << 20)]
    log_max_bytes: u64,
    /// Log files kept per container.
    #[arg(long = "log-max-files", default_value_t = 3)]
    log_max_files: u32,
    id: String,
    /// Command and arguments replacing the image's entrypoint and command.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // exec reserves 1..=124 for the command: its own failures are 125.
    let failure = if matches!(cli.cmd, Cmd::Exec { .. }) {
        ExitCode::from(125)
    } else {
        ExitCode::FAILURE
    };
    // Re-executing from a protected executable comes first, before any
    // diagnostics set-up: work done before the re-execution is done twice.
    let launches = matches!(
        cli.cmd,
        Cmd::Create(_) | Cmd::Run { .. } | Cmd::Launch(_) | Cmd::Exec { .. }
    );
    if launches {
        if let Err(e) = seal::ensure_sealed() {
            let e = anyhow::Error::from(e)
                .context("cannot re-execute the runtime from a write-protected executable");
            return report(&e, failure);
        }
    }
    init_tracing(&cli);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(&e, failure),
    }
}

/// Prints an error and its whole cause chain once.
fn report(e: &anyhow::Error, failure: ExitCode) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "berth-runtime: error: {e}");
    for cause in e.chain().skip(1) {
        let _ = writeln!(err, "  caused by: {cause}");
    }
    failure
}

fn init_tracing(cli: &Cli) {
    let level = if cli.debug {
        "debug"
    } else {
        "warn,libcontainer=error,libcgroups=error"
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
    let _ = &cli.log_format;
}

fn id(s: &str) -> Result<ContainerId> {
    Ok(ContainerId::parse(s)?)
}

fn run(cli: Cli) -> Result<u8> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup is not supported: berth-runtime manages cgroups itself; drop the flag");
    }
    let mut cfg = RuntimeConfig::with_root(cli.root.clone());
    if let Cmd::Launch(a) = &cli.cmd {
        cfg.subid_file = a.subid_file.clone();
        if let Some(n) = &a.subid_name {
            cfg.subid_name = n.clone();
        }
        cfg.allow_unlimited = a.allow_unlimited;
        cfg.log_limits.max_bytes = a.log_max_bytes;
        cfg.log_limits.max_files = a.log_max_files;
    }
    if let Cmd::Measure {
        dir,
        record,
        algorithm,
    } = &cli.cmd
    {
        let threads = cfg.measure_threads;
        let m = if *record {
            Image::record_with(dir, *algorithm, threads)?
        } else {
            measure::measure_tree(dir, *algorithm, threads)?.measurement()
        };
        println!("{m}");
        return Ok(0);
    }
    let mut rt = Runtime::new(cfg)?;
    match cli.cmd {
        Cmd::Create(a) => {
            let opts = bundle_opts(&a);
            rt.create_bundle(&id(&a.id)?, &a.bundle, Output::Inherit, &opts)?;
        }
        Cmd::Start { id: i } => rt.load(&id(&i)?)?.start()?,
        Cmd::State { id: i } => println!(
            "{}",
            serde_json::to_string_pretty(&rt.load(&id(&i)?)?.state())?
        ),
        Cmd::Kill { all, id: i, signal } => rt.load(&id(&i)?)?.kill(&signal, all)?,
        Cmd::Delete { force, id: i } => rt.load(&id(&i)?)?.delete(force)?,
        Cmd::Run { create, detach } => {
            let opts = bundle_opts(&create);
            let mut c =
                rt.create_bundle(&id(&create.id)?, &create.bundle, Output::Inherit, &opts)?;
            if let Err(e) = c.start() {
                let _ = c.delete(true);
                return Err(e.into());
            }
            if !detach {
                if let Some(pid) = c.pid() {
                    berth_runtime::sys::forward_signals(pid)?;
                }
                let code = c.wait()?;
                c.delete(true)?;
                return Ok(exit_byte(code));
            }
        }
        Cmd::List { format, quiet } => list(&rt, &format, quiet)?,
        Cmd::Launch(a) => return launch(&mut rt, *a),
        Cmd::Logs { id: i } => std::io::stdout().write_all(&rt.logs(&id(&i)?)?)?,
        Cmd::Exec { id: i, args } => {
            return Ok(u8::try_from(rt.exec(&id(&i)?, args)?).unwrap_or(255))
        }
        Cmd::Measure { .. } => unreachable!("handled above"),
    }
    Ok(0)
}

/// Starts a created container, first forwarding signals to it when the
/// runtime stays in the foreground; deletes it if it cannot start.
fn start(c: &mut berth_runtime::Container, foreground: bool) -> Result<()> {
    let started = match c.pid() {
        Some(pid) if foreground => berth_runtime::sys::forward_signals(pid)
            .map_err(berth_runtime::RuntimeError::Io)
            .and_then(|()| c.start()),
        _ => c.start(),
    };
    if let Err(e) = started {
        let _ = c.delete(true);
        return Err(e.into());
    }
    Ok(())
}

fn bundle_opts(a: &CreateArgs) -> BundleOptions {
    BundleOptions {
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        preserve_fds: a.preserve_fds,
    }
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

fn list(rt: &Runtime, format: &str, quiet: bool) -> Result<()> {
    let states = rt.list()?;
    if quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&states)?),
        "table" => {
            println!(
                "{:<24} {:<8} {:<10} {:<26} BUNDLE",
                "ID", "PID", "STATUS", "CREATED"
            );
            for s in &states {
                let created = s.created.clone().unwrap_or_default();
                println!(
                    "{:<24} {:<8} {:<10} {:<26} {}",
                    s.id,
                    s.pid,
                    s.status,
                    created,
                    s.bundle.display()
                );
            }
        }
        other => bail!("unknown list format '{other}': use table or json"),
    }
    Ok(())
}

fn parse_bytes(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1i64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: i64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a size: use bytes or a number with k, m or g"))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .with_context(|| format!("size '{s}' is out of range"))
}

fn launch(rt: &mut Runtime, a: LaunchArgs) -> Result<u8> {
    let id = id(&a.id)?;
    let text = match a.measurement.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read measurement file {file}"))?,
        None => a.measurement.clone(),
    };
    let measurement = Measurement::parse(&text)?;
    let image = Image::open(&a.image, measurement)?;
    let mut resources = Resources::default();
    if let Some(m) = &a.memory {
        resources.memory_bytes = parse_bytes(m)?;
    }
    if let Some(c) = a.cpus {
        if !(c > 0.0 && c <= 1024.0) {
            bail!("--cpus {c} is out of range: use a number of CPUs above 0");
        }
        resources.cpu_millis = (c * 1000.0).round() as u64;
    }
    if let Some(p) = a.pids {
        if p < 1 {
            bail!("--pids {p} is out of range: use at least 1");
        }
        resources.pids = p;
    }
    let mut volumes = Vec::new();
    for v in &a.volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (source, target, options) = match parts.as_slice() {
            [s, t] => (s, t, ""),
            [s, t, o] => (s, t, *o),
            _ => bail!("--volume '{v}' is not SRC:DST[:OPTIONS]"),
        };
        let (mut read_only, mut chown) = (false, false);
        for o in options.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => read_only = true,
                "rw" => read_only = false,
                "U" => chown = true,
                _ => bail!("--volume '{v}': unknown option '{o}' (use ro, rw, U)"),
            }
        }
        volumes.push(Volume {
            source: PathBuf::from(source),
            target: target.to_string(),
            read_only,
            chown,
        });
    }
    let network: NetworkMode = a.network.parse().map_err(anyhow::Error::msg)?;
    let opts = WorkloadOptions {
        args: (!a.args.is_empty()).then(|| a.args.clone()),
        env: a.env.clone(),
        user: a.user.clone(),
        resources,
        volumes,
        devices: a.devices.clone(),
        network,
        secret_env: a
            .secret_env
            .iter()
            .map(|s| berth_runtime::secret_env::parse_arg(s))
            .collect::<Result<_, _>>()?,
    };
    let output = if a.detach {
        Output::LogsDetached
    } else {
        Output::Logs { tee: true }
    };
    let mut c = rt.create_from_image(&id, &image, &opts, output)?;
    start(&mut c, !a.detach)?;
    if a.detach {
        println!("{} {}", c.id(), c.pid().unwrap_or(0));
        return Ok(0);
    }
    let code = c.wait()?;
    c.delete(true)?;
    Ok(exit_byte(code))
}
