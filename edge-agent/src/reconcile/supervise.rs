//! Keeping the committed generation running between updates.
//!
//! A committed workload that stops is restarted with exponential backoff
//! (`restart.policy = "always"`) or left stopped and reported (`"never"`).
//! The supervisor only ever restarts the committed definition, so a crash
//! loop can never move the device into a mix of generations; it does nothing
//! while an update is in progress. Its events say how the workload's process
//! ended and what it printed last.
//!
//! It runs when the runtime reports an exit ([`ContainerRuntime::changes`],
//! or every [`POLL`] with a runtime that does not) and when a restart is due
//! ([`Supervisor::next_due`]): an idle device with healthy workloads does no
//! work at all.
//!
//! [`ContainerRuntime::changes`]: super::runtime::ContainerRuntime::changes

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::engine::Engine;
use super::machine::Phase;
use crate::attest::LaunchRecord;
use crate::names::WorkloadName;
use crate::release::document::RestartPolicy;
use crate::release::{from_json, resolve};

/// A workload counts as stable (its backoff resets) after this long up.
pub const STABLE: Duration = Duration::from_secs(60);

/// How often workloads are checked with a runtime that does not report
/// exits as they happen.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Track {
    /// Restarts since the workload was last stable.
    attempts: u32,
    next_at: Instant,
    up_since: Option<Instant>,
    /// Its stop was reported (once per stop).
    reported: bool,
    /// How it ended and its last output, not reported yet.
    ended: Option<(Option<String>, Option<String>)>,
    /// Down, with a restart due at `next_at`.
    waiting: bool,
}

/// Per-workload restart bookkeeping (in memory: a restarted agent starts
/// with a clean slate, and `recover` has already restarted what was down).
#[derive(Debug, Default)]
pub struct Supervisor {
    tracks: BTreeMap<WorkloadName, Track>,
}

impl Supervisor {
    /// One pass: restarts what is due and returns the events to report.
    pub fn tick(&mut self, engine: &Engine, now: Instant) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        let Ok(state) = engine.store.load() else {
            return events;
        };
        let (Phase::Idle, Some(current)) = (&state.phase.0, &state.current) else {
            return events;
        };
        let Ok(release) = from_json(&current.digest, &current.document) else {
            return events;
        };
        let Some(resolved) = resolve(&release, engine.me.arch) else {
            return events;
        };
        let Ok(running) = engine.runtime.states() else {
            return events;
        };
        self.tracks
            .retain(|n, _| resolved.iter().any(|r| &r.workload.name == n));
        for r in &resolved {
            let w = &r.workload;
            let c = running.iter().find(|c| c.name == w.name.as_str());
            let t = self.tracks.entry(w.name.clone()).or_insert(Track {
                attempts: 0,
                next_at: now,
                up_since: None,
                reported: false,
                ended: None,
                waiting: false,
            });
            if c.is_some_and(|c| c.status == "running") {
                t.up_since.get_or_insert(now);
                t.reported = false;
                t.ended = None;
                t.waiting = false;
                continue;
            }
            // It ran long enough before it stopped: a fresh backoff.
            if t.up_since
                .take()
                .is_some_and(|since| now.duration_since(since) >= STABLE)
            {
                t.attempts = 0;
                t.next_at = now;
            }
            // How it ended and what it printed last: learnt once per stop
            // (before a restart deletes the old container and its log),
            // reported with the restart or, if none, at once.
            if !t.reported && t.ended.is_none() {
                t.ended = Some((
                    c.and_then(|c| c.exit).map(|e| e.to_string()),
                    engine.runtime.last_output(&w.name),
                ));
            }
            let policy = w.restart.policy;
            t.waiting = policy == RestartPolicy::Always && now < t.next_at;
            if policy == RestartPolicy::Never {
                if let Some((exit, output)) = t.ended.take() {
                    t.reported = true;
                    events.push(json!({"event": "stopped", "workload": w.name.as_str(),
                                       "generation": current.number, "exit": exit, "output": output}));
                }
                continue;
            }
            if t.waiting {
                continue;
            }
            let delay = backoff(
                t.attempts,
                w.restart.backoff_initial_ms,
                w.restart.backoff_max_ms,
            );
            t.attempts = t.attempts.saturating_add(1);
            t.next_at = now + delay;
            let result = engine.restage(current, &w.name).and_then(|spec| {
                engine
                    .runtime
                    .stop(&w.name, engine.stop_grace)
                    .and_then(|()| engine.runtime.start(&spec))
                    .map_err(|e| e.to_string())
                    .map(|()| spec)
            });
            let (exit, output) = t.ended.take().unwrap_or_default();
            t.reported = true;
            match result {
                Ok(spec) => {
                    t.up_since = Some(now);
                    t.reported = false;
                    let _ = engine.log.append(&LaunchRecord {
                        time_ms: (engine.now_ms)(),
                        workload: w.name.to_string(),
                        image: r.image.to_string(),
                        measurement: spec.measurement,
                        generation: current.number,
                    });
                    events.push(json!({"event": "restarted", "workload": w.name.as_str(),
                                       "attempt": t.attempts, "next_backoff_ms": delay.as_millis() as u64,
                                       "exit": exit, "output": output}));
                }
                Err(reason) => {
                    t.waiting = true;
                    events.push(
                        json!({"event": "restart-failed", "workload": w.name.as_str(),
                                       "attempt": t.attempts, "reason": reason,
                                       "exit": exit, "output": output}),
                    );
                }
            }
        }
        events
    }

    /// When the next restart with backoff is due, if one is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.tracks
            .values()
            .filter(|t| t.waiting)
            .map(|t| t.next_at)
            .min()
    }
}

/// `initial * 2^attempts`, capped at `max`.
pub fn backoff(attempts: u32, initial_ms: u64, max_ms: u64) -> Duration {
    let ms = initial_ms.saturating_mul(1u64 << attempts.min(32));
    Duration::from_millis(ms.min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let v: Vec<u64> = (0..8)
            .map(|a| backoff(a, 500, 10_000).as_millis() as u64)
            .collect();
        assert_eq!(v, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
        assert_eq!(backoff(200, 1, u64::MAX), Duration::from_millis(1 << 32));
    }
}
