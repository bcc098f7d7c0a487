//! A scenario file run end to end: its environment (the rig's own lab, or
//! an existing fleet described in TOML), the runner, the summary and the
//! JUnit report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::lab::{Environment, Lab, Tools};
use crate::report::{junit, summary, Case, Metrics};
use crate::runner::{RunError, Runner};
use crate::scenario::Scenario;

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: PathBuf,
    /// Overrides the scenario's cycle count.
    pub cycles: Option<u64>,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// An existing fleet (TOML of [`Environment`]) instead of a local lab.
    pub env: Option<PathBuf>,
    /// The first generation to publish (an existing fleet's next one).
    pub first_generation: u64,
    /// Working directory (devices, lab); a temporary one when `None`.
    pub work: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub tools: Tools,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub seed: u64,
    pub metrics: Metrics,
    pub cases: Vec<Case>,
    pub summary: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.failure.is_none())
    }
}

fn setup(e: impl std::fmt::Display) -> RunError {
    RunError::Setup(e.to_string())
}

/// Reads an existing fleet's description.
pub fn load_env(path: &Path) -> Result<Environment, RunError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| setup(format!("{}: {e}", path.display())))
}

/// Runs the scenario; `progress` sees every case as it ends.
pub fn run(opts: &RunOptions, progress: &mut dyn FnMut(&Case)) -> Result<Outcome, RunError> {
    let scenario = Scenario::load(&opts.scenario).map_err(setup)?;
    let tmp;
    let work = match &opts.work {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("berth-hil-")
                .tempdir()
                .map_err(|e| setup(format!("cannot create a working directory: {e}")))?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&work)
        .map_err(|e| setup(format!("cannot create {}: {e}", work.display())))?;
    // Containers' user namespaces must traverse to the volumes.
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| setup(format!("{}: {e}", work.display())))?;
    // A previous run's lab and devices (stopped with it) are not reused.
    for sub in ["lab", "devices"] {
        let p = work.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .map_err(|e| setup(format!("cannot clear {}: {e}", p.display())))?;
        }
    }
    let lab = match &opts.env {
        Some(_) => None,
        None => Some(Lab::start(&work.join("lab"), "hil", &opts.tools)?),
    };
    let env = match (&opts.env, &lab) {
        (Some(p), _) => load_env(p)?,
        (None, Some(l)) => l.env.clone(),
        (None, None) => unreachable!("a lab is started when no environment is given"),
    };
    let seed = match opts.seed.unwrap_or(scenario.seed) {
        0 => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        s => s,
    };
    let t0 = Instant::now();
    let (metrics, cases) = {
        let mut r = Runner::new(
            &scenario,
            env,
            opts.tools.clone(),
            lab.as_ref(),
            &work.join("devices"),
            opts.first_generation,
            seed,
        )?;
        let cases = r.run(opts.cycles.unwrap_or(scenario.cycles), progress);
        (r.metrics.clone(), cases)
    };
    let text = summary(&scenario.name, seed, &metrics, &cases, t0.elapsed());
    if let Some(j) = &opts.junit {
        std::fs::write(j, junit(&scenario.name, seed, &metrics, &cases)).map_err(|e| {
            setup(format!(
                "cannot write the JUnit report {}: {e}",
                j.display()
            ))
        })?;
    }
    Ok(Outcome {
        name: scenario.name,
        seed,
        metrics,
        cases,
        summary: text,
    })
}
