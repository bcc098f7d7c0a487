//! The update engine: a verified release document in, exactly one
//! generation running out.
//!
//! `offer` runs one update to its end: check the document is for this
//! device, stage every image (nothing running is touched until all are
//! present and verified), switch only the workloads whose definition
//! changed, gate on health, then commit — or roll back to the committed
//! generation. Every step is first recorded in the state store (flushed),
//! then performed; `recover` finishes or undoes whatever a crash
//! interrupted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::health::gate;
use super::machine::{Event, Generation, Outcome, Phase, Recovery, State};
use super::runtime::{volumes_dir, ContainerRuntime, LaunchSpec};
use super::store::{StoreError, UpdateStore};
use crate::attest::{LaunchLog, LaunchRecord};
use crate::names::{Digest, WorkloadName};
use crate::release::document::ImageSpec;
use crate::release::validate::{applies, from_json, Applies, DeviceIdentity};
use crate::release::{plan, resolve, Action, Actual, Resolved};

/// An image unpacked and measured on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub dir: PathBuf,
    pub measurement: String,
}

/// Where images come from (the registry client + unpacker, or a bundle).
pub trait ImageProvider: Send + Sync {
    /// Makes the image pinned by `digest` present and unpacked, verified.
    fn ensure(&self, image: &ImageSpec, digest: &Digest) -> Result<Unpacked, String>;
}

/// What an offered release led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Not meant for this device; nothing changed.
    Ignored(String),
    /// The update finished (committed or rolled back).
    Finished(Outcome),
    /// Already handled while idle: the committed document itself, or a
    /// generation whose health gate failed (offered again after a restart);
    /// nothing changed and nothing is reported as an error.
    Known(String),
}

/// A failure of the engine itself (the previous state is kept).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("release document {digest}: {source}")]
    Document {
        digest: String,
        source: crate::release::ReleaseError,
    },
    #[error("release generation {generation} asks for {what} for workload {workload}, which this device's policy does not allow: ask the device owner to allow it (policy in agent.toml) or change the release")]
    Policy {
        generation: u64,
        workload: String,
        what: String,
    },
    #[error(
        "release generation {generation} is refused: {source}; the running generation is kept"
    )]
    Secret {
        generation: u64,
        source: crate::secrets::SecretsError,
    },
    #[error("launch log: {0}")]
    Log(#[from] crate::attest::AttestError),
    #[error("cannot record the running workloads in {path}: {source}")]
    Actual { path: String, source: sled::Error },
}

/// The engine's collaborators and settings.
pub struct Engine {
    pub store: UpdateStore,
    pub actual: sled::Tree,
    pub log: LaunchLog,
    pub runtime: Box<dyn ContainerRuntime>,
    pub images: Box<dyn ImageProvider>,
    pub me: DeviceIdentity,
    pub policy: crate::config::Policy,
    pub state_dir: PathBuf,
    pub gate_interval: Duration,
    pub stop_grace: Duration,
    pub now_ms: fn() -> u64,
    /// Opens sealed secrets (`None`: the device has no secrets key).
    pub secrets: Option<std::sync::Arc<crate::secrets::Unsealer>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch (the default clock).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    /// Runs one update with a verified release document.
    pub fn offer(&self, document: &[u8]) -> Result<Offered, EngineError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(document)));
        let release = from_json(&digest, document).map_err(|source| EngineError::Document {
            digest: digest.clone(),
            source,
        })?;
        let state = self.store.load()?;
        if state.phase.0 == Phase::Idle {
            if state.current.as_ref().is_some_and(|c| c.digest == digest) {
                return Ok(Offered::Known(format!(
                    "generation {} is the committed release",
                    release.generation
                )));
            }
            if state.failed == Some(release.generation) {
                return Ok(Offered::Known(format!(
                    "generation {} already failed its health gate; waiting for a newer one",
                    release.generation
                )));
            }
        }
        match applies(&release, &self.me) {
            Applies::Yes => {}
            Applies::OtherFleet(f) => {
                return Ok(Offered::Ignored(format!("release is for fleet {f}")))
            }
            Applies::OtherDevices => {
                return Ok(Offered::Ignored("release names other devices".into()))
            }
            Applies::NoImageFor(arch, names) => {
                return Ok(Offered::Ignored(format!(
                    "no {arch} image for {}",
                    names
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
        for w in &release.workloads {
            let refuse = |what: String| EngineError::Policy {
                generation: release.generation,
                workload: w.name.to_string(),
                what,
            };
            if w.network == crate::release::document::Network::Host
                && !self.policy.allow_host_network
            {
                return Err(refuse("the host network".into()));
            }
            if let Some(d) = w
                .devices
                .iter()
                .find(|d| !self.policy.allow_devices.contains(d))
            {
                return Err(refuse(format!("device {d}")));
            }
        }
        self.check_secrets(&release)
            .map_err(|source| EngineError::Secret {
                generation: release.generation,
                source,
            })?;
        let target = Generation {
            number: release.generation,
            digest,
            document: document.to_vec(),
        };
        self.store
            .apply(Event::Release(target.clone()), (self.now_ms)())?;
        self.run_from_fetch(&target).map(Offered::Finished)
    }

    /// Every secret a workload of `release` uses opens on this device, and
    /// one a workload receives as a variable is text that can be one
    /// (checked before anything changes; the plaintext is dropped at once).
    fn check_secrets(
        &self,
        release: &crate::release::Release,
    ) -> Result<(), crate::secrets::SecretsError> {
        let used: std::collections::BTreeSet<&WorkloadName> = release
            .workloads
            .iter()
            .flat_map(|w| w.secrets.iter().map(|s| &s.name))
            .collect();
        if used.is_empty() {
            return Ok(());
        }
        let unsealer =
            self.secrets
                .as_ref()
                .ok_or_else(|| crate::secrets::SecretsError::NoKey {
                    device: self.me.device.clone(),
                    path: self.state_dir.join("secrets.key"),
                })?;
        for s in release.secrets.iter().filter(|s| used.contains(&s.name)) {
            let plain = unsealer.open(s)?;
            // A secret asked for as a variable must be one.
            let as_env = release.workloads.iter().find_map(|w| {
                w.secrets
                    .iter()
                    .find(|r| r.name == s.name && r.env.is_some())
                    .map(|r| (w, r))
            });
            if let Some((w, r)) = as_env {
                crate::secrets::check_env_value(&plain).map_err(|reason| {
                    crate::secrets::SecretsError::NotEnv {
                        secret: s.name.to_string(),
                        workload: w.name.to_string(),
                        env: r.env.clone().unwrap_or_default(),
                        reason,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Puts `spec`'s secrets into its tmpfs directory (before a start).
    fn materialize(&self, spec: &LaunchSpec) -> Result<(), String> {
        match (&self.secrets, &spec.secrets_dir) {
            (Some(u), Some(_)) => u
                .materialize(&spec.resolved.workload.name, &spec.resolved.secrets)
                .map(drop)
                .map_err(|e| e.to_string()),
            (None, Some(_)) => Err(crate::secrets::SecretsError::NoKey {
                device: self.me.device.clone(),
                path: self.state_dir.join("secrets.key"),
            }
            .to_string()),
            _ => Ok(()),
        }
    }

    /// After a restart: finish or undo what the persisted phase says.
    pub fn recover(&self) -> Result<Option<Outcome>, EngineError> {
        let state = self.store.load()?;
        match state.recovery() {
            Recovery::EnsureCurrent => {
                self.converge(&state)?;
                Ok(None)
            }
            Recovery::ResumeFetch => {
                let Phase::Fetching { target } = &state.phase.0 else {
                    unreachable!("ResumeFetch comes from Fetching")
                };
                self.run_from_fetch(target).map(Some)
            }
            Recovery::ResumeSwitch => {
                let Phase::Staged { target } = &state.phase.0 else {
                    unreachable!("ResumeSwitch comes from Staged")
                };
                let staged = match self.stage(target) {
                    Ok(s) => s,
                    Err(reason) => {
                        // Staged images vanished: roll back (nothing switched yet).
                        self.store.apply(Event::SwitchBegun, (self.now_ms)())?;
                        self.store
                            .apply(Event::Unhealthy(reason), (self.now_ms)())?;
                        return self.roll_back().map(Some);
                    }
                };
                self.switch_and_gate(target, &staged).map(Some)
            }
            Recovery::RollBack { .. } => {
                if let Some(s) = state.interrupted() {
                    self.store.replace(&s)?;
                }
                self.roll_back().map(Some)
            }
        }
    }

    fn run_from_fetch(&self, target: &Generation) -> Result<Outcome, EngineError> {
        let staged = match self.stage(target) {
            Ok(s) => s,
            Err(reason) => {
                self.store
                    .apply(Event::FetchFailed(reason.clone()), (self.now_ms)())?;
                return Ok(Outcome {
                    generation: target.number,
                    result: "fetch-failed".into(),
                    reason,
                });
            }
        };
        self.store.apply(Event::Fetched, (self.now_ms)())?;
        self.switch_and_gate(target, &staged)
    }

    /// The launch spec of one workload of `g` (its image made present).
    /// Its secrets are put in place too (it is about to be started).
    pub fn restage(&self, g: &Generation, name: &WorkloadName) -> Result<LaunchSpec, String> {
        let spec = self
            .stage(g)?
            .into_iter()
            .find(|s| &s.resolved.workload.name == name)
            .ok_or_else(|| format!("generation {} has no workload {name}", g.number))?;
        self.materialize(&spec)?;
        Ok(spec)
    }

    /// Every image of `g` present and unpacked: the launch specs, in start order.
    fn stage(&self, g: &Generation) -> Result<Vec<LaunchSpec>, String> {
        let release = from_json(&g.digest, &g.document).map_err(|e| e.to_string())?;
        let resolved = resolve(&release, self.me.arch)
            .ok_or_else(|| format!("release has no {} image for a workload", self.me.arch))?;
        resolved
            .into_iter()
            .map(|r| {
                let u = self
                    .images
                    .ensure(&r.workload.image, &r.image)
                    .map_err(|e| format!("image of workload {}: {e}", r.workload.name))?;
                let secrets_dir = match (&self.secrets, r.secrets.is_empty()) {
                    (_, true) => None,
                    (Some(u), false) => Some(u.dir(&r.workload.name)),
                    (None, false) => Some(self.state_dir.join("no-secrets-key")),
                };
                Ok(LaunchSpec {
                    secrets_dir,
                    volumes_dir: volumes_dir(&self.state_dir, &r.workload.name),
                    resolved: r,
                    image_dir: u.dir,
                    measurement: u.measurement,
                })
            })
            .collect()
    }

    fn switch_and_gate(
        &self,
        target: &Generation,
        staged: &[LaunchSpec],
    ) -> Result<Outcome, EngineError> {
        self.store.apply(Event::SwitchBegun, (self.now_ms)())?;
        if let Err(reason) = self.apply_plan(target.number, staged)? {
            self.store
                .apply(Event::Unhealthy(reason), (self.now_ms)())?;
            return self.roll_back();
        }
        self.store.apply(
            Event::Switched {
                now_ms: (self.now_ms)(),
            },
            (self.now_ms)(),
        )?;
        let resolved: Vec<Resolved> = staged.iter().map(|s| s.resolved.clone()).collect();
        match gate(self.runtime.as_ref(), &resolved, self.gate_interval) {
            Ok(()) => {
                self.store.apply(Event::Healthy, (self.now_ms)())?;
                Ok(Outcome {
                    generation: target.number,
                    result: "committed".into(),
                    reason: String::new(),
                })
            }
            Err(failure) => {
                self.store
                    .apply(Event::Unhealthy(failure.to_string()), (self.now_ms)())?;
                self.roll_back()
            }
        }
    }

    /// Restores the committed generation (or nothing) and records the rollback.
    fn roll_back(&self) -> Result<Outcome, EngineError> {
        let state = self.store.load()?;
        let (failed, reason) = match &state.phase.0 {
            Phase::RollingBack { failed, reason } => (failed.number, reason.clone()),
            _ => (0, String::new()),
        };
        self.converge(&state)?;
        self.store.apply(Event::RolledBack, (self.now_ms)())?;
        Ok(Outcome {
            generation: failed,
            result: "rolled-back".into(),
            reason,
        })
    }

    /// Makes exactly the committed generation run (best effort per workload:
    /// a workload that cannot start is reported, the others still run).
    fn converge(&self, state: &State) -> Result<(), EngineError> {
        let staged = match &state.current {
            Some(g) => match self.stage(g) {
                Ok(s) => s,
                Err(reason) => {
                    tracing::error!(generation = g.number, %reason, "cannot restore the committed generation");
                    return Ok(());
                }
            },
            None => Vec::new(),
        };
        let number = state.current.as_ref().map_or(0, |g| g.number);
        if let Err(reason) = self.apply_plan(number, &staged)? {
            tracing::error!(%reason, "restoring the committed generation left a workload down");
        }
        Ok(())
    }

    /// Runs the plan from what runs now to `staged`. `Ok(Err(reason))` when
    /// a container operation failed (the caller rolls back).
    fn apply_plan(
        &self,
        generation: u64,
        staged: &[LaunchSpec],
    ) -> Result<Result<(), String>, EngineError> {
        let desired: Vec<Resolved> = staged.iter().map(|s| s.resolved.clone()).collect();
        let actual = self.actual_now()?;
        for action in plan(&desired, &actual) {
            match action {
                Action::Stop { name, .. } => {
                    if let Err(e) = self.runtime.stop(&name, self.stop_grace) {
                        return Ok(Err(e.to_string()));
                    }
                    self.actual_remove(&name)?;
                    if let Some(u) = &self.secrets {
                        if let Err(e) = u.remove(&name) {
                            tracing::warn!(workload = %name, error = %e, "cannot remove the secrets of a stopped workload");
                        }
                    }
                }
                Action::Start { name, fingerprint } => {
                    let spec = staged
                        .iter()
                        .find(|s| s.resolved.workload.name == name)
                        .expect("plan starts only desired workloads");
                    // Recorded before the side effect: a crash in between
                    // leaves an entry that the next plan restarts.
                    self.actual_insert(&name, &fingerprint)?;
                    if let Err(reason) = self.materialize(spec) {
                        return Ok(Err(reason));
                    }
                    if let Err(e) = self.runtime.start(spec) {
                        return Ok(Err(e.to_string()));
                    }
                    self.log.append(&LaunchRecord {
                        time_ms: (self.now_ms)(),
                        workload: name.to_string(),
                        image: spec.resolved.image.to_string(),
                        measurement: spec.measurement.clone(),
                        generation,
                    })?;
                }
            }
        }
        Ok(Ok(()))
    }

    /// Recorded definitions joined with what the runtime reports running;
    /// containers the agent has no record of are included (to be stopped).
    fn actual_now(&self) -> Result<BTreeMap<WorkloadName, Actual>, EngineError> {
        let err = |source| EngineError::Actual {
            path: self.state_dir.display().to_string(),
            source,
        };
        let running = self.runtime.list().unwrap_or_default();
        let mut out = BTreeMap::new();
        for kv in self.actual.iter() {
            let (k, v) = kv.map_err(err)?;
            let Ok(name) = WorkloadName::parse(&String::from_utf8_lossy(&k)) else {
                continue;
            };
            let is_running = running
                .iter()
                .any(|r| r.name == name.as_str() && r.status == "running");
            out.insert(
                name,
                Actual {
                    fingerprint: String::from_utf8_lossy(&v).into_owned(),
                    running: is_running,
                },
            );
        }
        for r in running {
            if let Ok(name) = WorkloadName::parse(&r.name) {
                out.entry(name).or_insert(Actual {
                    fingerprint: "unknown".into(),
                    running: r.status == "running",
                });
            }
        }
        Ok(out)
    }

    fn actual_insert(&self, name: &WorkloadName, fingerprint: &str) -> Result<(), EngineError> {
        self.actual
            .insert(name.as_str(), fingerprint.as_bytes())
            .and_then(|_| self.actual.flush())
            .map(drop)
            .map_err(|source| EngineError::Actual {
                path: self.state_dir.display().to_string(),
                source,
            })
    }

    fn actual_remove(&self, name: &WorkloadName) -> Result<(), EngineError> {
        self.actual
            .remove(name.as_str())
            .and_then(|_| self.actual.flush())
            .map(drop)
            .map_err(|source| EngineError::Actual {
                path: self.state_dir.display().to_string(),
                source,
            })
    }
}
