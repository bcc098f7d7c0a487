//! The trial agent's side: it commits itself once it has reconnected (when
//! it has a link), verified the fleet's release, reconciled (no update in
//! progress, every workload of the committed generation running) and
//! published that state. Until then it keeps a note of what it waits for
//! (`<state>/agent/trial-progress`), which the launcher quotes when the
//! deadline passes. Every agent started by a launcher also publishes the
//! agent updates it has not reported yet as events.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::record::{write_atomic, Record};
use super::{now_ms, progress_path, Slot, ENV_INSTALLED_SHA256};
use crate::daemon::Progress;
use crate::link::Link;
use crate::reconcile::engine::Engine;
use crate::reconcile::Phase;

/// What a trial agent still waits for, or `None` when it is healthy.
pub fn waiting_for(engine: &Engine, has_link: bool, p: &Progress) -> Option<String> {
    if has_link && !p.connected {
        return Some(match &p.link_error {
            Some(e) => format!("the MQTT link ({e})"),
            None => "the MQTT link".into(),
        });
    }
    if p.synced == 0 {
        return Some(match &p.refresh_error {
            Some(e) => format!("a verified refresh of the release ({e})"),
            None => "a verified refresh of the release".into(),
        });
    }
    let state = match engine.store.load() {
        Ok(s) => s,
        Err(e) => return Some(format!("the update state ({e})")),
    };
    if !matches!(state.phase.0, Phase::Idle) {
        return Some(format!(
            "the update in progress (phase {})",
            state.phase.0.name()
        ));
    }
    match engine.runtime.states() {
        Ok(states) => states
            .into_iter()
            .find(|w| w.status != "running")
            .map(|w| format!("workload {} ({})", w.name, w.status)),
        Err(e) => Some(format!("the workloads' states ({e})")),
    }
}

/// Publishes every finished agent update not reported yet as an event
/// (`agent-committed`, `agent-fell-back`, `agent-reinstalled`).
pub fn report_outcomes(state: &Path, link: &Link) {
    let mut r = match Record::load(state) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the slot record");
            return;
        }
    };
    let mut changed = false;
    for o in r.history.iter_mut().filter(|o| !o.reported) {
        let ev = json!({
            "event": format!("agent-{}", o.result.name()),
            "slot": o.slot.name(),
            "sha256": o.sha256,
            "reason": o.reason,
            "time_ms": o.time_ms,
        });
        if o.result == super::record::Ending::FellBack {
            tracing::warn!(slot = %o.slot, sha256 = %o.sha256, reason = %o.reason, "agent update fell back");
        }
        if link.publish_event(serde_json::to_vec(&ev).expect("event serializes")) {
            o.reported = true;
            changed = true;
        }
    }
    if changed {
        if let Err(e) = r.save(state) {
            tracing::warn!(error = %e, "cannot record the reported agent updates");
        }
    }
}

/// Runs in a trial agent until it commits or `stopped` resolves.
pub async fn commit_when_healthy(
    state: std::path::PathBuf,
    slot: Slot,
    engine: Arc<Engine>,
    link: Option<Link>,
    mut progress: tokio::sync::watch::Receiver<Progress>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut noted: Option<String> = None;
    loop {
        let p = progress.borrow_and_update().clone();
        let e = engine.clone();
        let has_link = link.is_some();
        let waiting = tokio::task::spawn_blocking(move || waiting_for(&e, has_link, &p))
            .await
            .unwrap_or_else(|e| Some(format!("the health check ({e})")));
        let waiting = match (waiting, &link) {
            (None, Some(l)) => match crate::status::status(&engine) {
                Ok(s) if l.publish_state(serde_json::to_vec(&s).expect("status serializes")) => {
                    None
                }
                Ok(_) => Some("the state report (the link's queue is full)".into()),
                Err(e) => Some(format!("the state report ({e})")),
            },
            (w, _) => w,
        };
        match waiting {
            None => {
                let st = state.clone();
                let r = tokio::task::spawn_blocking(move || commit(&st, slot)).await;
                match r {
                    Ok(Ok(())) => {
                        tracing::info!(slot = %slot, "the new agent is healthy: committed");
                        if let Some(l) = &link {
                            report_outcomes(&state, l);
                        }
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot commit the new agent");
                    }
                    Err(e) => tracing::error!(error = %e, "commit task failed"),
                }
            }
            Some(w) if noted.as_deref() != Some(w.as_str()) => {
                tracing::info!(waiting_for = %w, "agent trial");
                if let Err(e) = write_atomic(&progress_path(&state), w.as_bytes(), 0o600) {
                    tracing::warn!(error = %e, "cannot write the trial's progress note");
                }
                noted = Some(w);
            }
            Some(_) => {}
        }
        tokio::select! {
            () = &mut stopped => return,
            r = progress.changed() => if r.is_err() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn commit(state: &Path, slot: Slot) -> Result<(), super::SelfUpdateError> {
    let mut r = Record::load(state)?;
    let installed = std::env::var(ENV_INSTALLED_SHA256).ok();
    r.commit(slot, installed, now_ms())?;
    r.save(state)?;
    let _ = std::fs::remove_file(progress_path(state));
    Ok(())
}
