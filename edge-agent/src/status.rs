//! What the agent reports: its state document (the local API's `status`,
//! and the retained MQTT state message), its history, workload logs and the
//! signed launch log.

use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde::Serialize;

use crate::api::{Handler, Request};
use crate::attest::attest;
use crate::reconcile::engine::Engine;
use crate::reconcile::Phase;

/// The state a device reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusDoc {
    pub device: String,
    pub fleet: String,
    pub arch: String,
    pub phase: String,
    /// The generation being fetched, switched to or verified.
    pub target: Option<u64>,
    pub current: Option<u64>,
    pub previous: Option<u64>,
    pub failed: Option<u64>,
    /// Why `failed` was rolled back (with the failing workload's exit
    /// status and last output when it has them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub workloads: Vec<WorkloadStatus>,
    /// The agent's own updates (when a launcher runs it: `self_update`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::selfupdate::AgentReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub status: String,
    pub pid: Option<i32>,
    /// How its process ended, when it stopped and that is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
}

/// Builds the state document from the engine.
pub fn status(engine: &Engine) -> Result<StatusDoc, String> {
    let s = engine.store.load().map_err(|e| e.to_string())?;
    let target = match &s.phase.0 {
        Phase::Idle => None,
        Phase::Fetching { target }
        | Phase::Staged { target }
        | Phase::Switching { target }
        | Phase::Verifying { target, .. } => Some(target.number),
        Phase::RollingBack { failed, .. } => Some(failed.number),
    };
    let workloads = engine
        .runtime
        .states()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| WorkloadStatus {
            name: r.name,
            status: r.status,
            pid: r.pid,
            exit: r.exit.map(|e| e.to_string()),
        })
        .collect();
    let failure = match s.failed {
        Some(g) => engine.store.failure(g).map_err(|e| e.to_string())?,
        None => None,
    };
    Ok(StatusDoc {
        device: engine.me.device.clone(),
        fleet: engine.me.fleet.clone(),
        arch: engine.me.arch.to_string(),
        phase: s.phase.0.name().into(),
        target,
        current: s.current.map(|g| g.number),
        previous: s.previous.map(|g| g.number),
        failed: s.failed,
        failure,
        workloads,
        agent: crate::selfupdate::report(&engine.state_dir),
    })
}

/// The local API's handler over a running agent.
pub struct AgentHandler {
    pub engine: Arc<Engine>,
    pub key: SigningKey,
    /// `berth-runtime` and its state root, for `logs`.
    pub runtime: (PathBuf, PathBuf),
    /// Imports an offline bundle and hands its release to the update loop.
    pub import: Option<Importer>,
}

/// What imports a bundle (the agent's TUF source and blob store).
pub type Importer =
    std::sync::Arc<dyn Fn(&std::path::Path) -> Result<serde_json::Value, String> + Send + Sync>;

impl std::fmt::Debug for AgentHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandler").finish_non_exhaustive()
    }
}

impl Handler for AgentHandler {
    fn handle(&self, req: Request) -> Result<serde_json::Value, String> {
        match req {
            Request::Status => {
                serde_json::to_value(status(&self.engine)?).map_err(|e| e.to_string())
            }
            Request::History => {
                let h = self.engine.store.history().map_err(|e| e.to_string())?;
                serde_json::to_value(h).map_err(|e| e.to_string())
            }
            Request::Logs { workload } => {
                let name =
                    crate::names::WorkloadName::parse(&workload).map_err(|e| e.to_string())?;
                let out = std::process::Command::new(&self.runtime.0)
                    .arg("--root")
                    .arg(&self.runtime.1)
                    .args(["logs", name.as_str()])
                    .output()
                    .map_err(|e| format!("cannot run {}: {e}", self.runtime.0.display()))?;
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
                }
                Ok(serde_json::Value::String(
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                ))
            }
            Request::Import { path } => match &self.import {
                Some(import) => import(std::path::Path::new(&path)),
                None => Err("this agent does not import bundles".into()),
            },
            Request::Attest { nonce } => {
                if nonce.is_empty() || nonce.len() > 256 {
                    return Err("the nonce must be 1 to 256 characters".into());
                }
                let records = self.engine.log.records().map_err(|e| e.to_string())?;
                let a = attest(&self.engine.me.device, &nonce, records, &self.key);
                serde_json::to_value(a).map_err(|e| e.to_string())
            }
        }
    }
}
