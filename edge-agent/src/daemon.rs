//! The agent's main loop: triggers (an MQTT notification, a (re)connection,
//! the periodic timer with jitter) lead to a verified refresh, and a failed
//! one that an event asked for is retried with backoff ([`Retry`]); a new
//! verified release for this device is handed to the engine; every outcome
//! is reported on the link (retained state + an event).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::link::{Link, Notice, Notices};
use crate::reconcile::engine::{Engine, Offered};
use crate::reconcile::supervise::{Supervisor, POLL};
use crate::status::status;

/// Where verified release documents come from (the TUF client).
pub trait ReleaseSource: Send + Sync + 'static {
    /// Refreshes the trusted metadata and returns the verified release
    /// document for this device's fleet, or `None` if there is none yet.
    fn refresh(&self) -> Result<Option<Vec<u8>>, String>;
}

/// Timing of the periodic refresh.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub every: Duration,
    pub jitter: Duration,
}

impl Schedule {
    /// The next pause: `every` ± up to `jitter`, from a cheap per-call seed.
    pub fn next(&self, seed: u64) -> Duration {
        let j = self.jitter.as_millis() as u64;
        if j == 0 {
            return self.every;
        }
        let offset = mix(seed) % (2 * j + 1);
        (self.every + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(j))
    }
}

/// What the main loop has achieved since it started, for a new agent on
/// trial (`selfupdate`): whether the link is up and how many verified
/// refreshes finished while it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub connected: bool,
    /// Why the link went down last.
    pub link_error: Option<String>,
    /// Refreshes that verified the fleet's release (and offered it) while
    /// the link was up, or at all when there is no link.
    pub synced: u64,
    /// Why the last refresh failed.
    pub refresh_error: Option<String>,
}

/// splitmix64: spreads devices that booted (or were notified) together.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The first retry of a failed refresh that an event asked for.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Retries of a refresh an event asked for (the start, a notification, a
/// reconnection) that failed, or whose release could not be fetched:
/// after the n-th failure in a row, a pause drawn from the upper half of
/// `RETRY_FIRST · 2^(n-1)` capped at `RETRY_MAX` (so a fleet notified at
/// once does not retry in step). A success or a newer notification starts
/// over; the periodic refresh goes on beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    failures: u32,
}

impl Retry {
    /// Counts a failure and returns the pause before the next retry.
    pub fn failed(&mut self, seed: u64) -> Duration {
        let ceiling = RETRY_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + Duration::from_millis(mix(seed) % (half.as_millis() as u64 + 1))
    }

    /// Starts over (a success, or a newer notification).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Work run (on a blocking thread) after every finished update, e.g.
/// pruning images no generation needs.
pub type Housekeeping = Arc<dyn Fn() + Send + Sync>;

/// What the main loop calls out to besides the engine and the link.
#[derive(Default)]
pub struct Hooks {
    /// Run after every finished update.
    pub housekeeping: Option<Housekeeping>,
    /// Told of the loop's progress (a new agent on trial watches it).
    pub progress: Option<tokio::sync::watch::Sender<Progress>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("housekeeping", &self.housekeeping.is_some())
            .field("progress", &self.progress)
            .finish()
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(
    engine: Arc<Engine>,
    source: Arc<dyn ReleaseSource>,
    link: Option<(Link, Notices)>,
    schedule: Schedule,
    hooks: Hooks,
    mut imports: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let Hooks {
        housekeeping,
        progress,
    } = hooks;
    let progress = progress.unwrap_or_else(|| tokio::sync::watch::channel(Progress::default()).0);
    let has_link = link.is_some();
    let synced = |p: &mut Progress| {
        if p.connected || !has_link {
            p.synced += 1;
        }
        p.refresh_error = None;
    };
    let (link, mut notices) = match link {
        Some((l, n)) => (Some(l), Some(n)),
        None => (None, None),
    };
    let mut seed = std::process::id() as u64 ^ crate::reconcile::engine::wall_ms();
    let mut last_offered: Option<Vec<u8>> = None;
    report(&engine, link.as_ref(), None);
    // A refresh right away: whatever happened while the agent was down.
    let mut due = tokio::time::Instant::now();
    let mut started = false;
    let (mut retry, mut retry_at) = (Retry::default(), None::<tokio::time::Instant>);
    let mut supervisor = Some(Supervisor::default());
    // Workloads are checked when one stops (or every POLL if the runtime
    // cannot tell), when a restart is due, and after every update.
    let mut exits = engine.runtime.changes();
    let mut check = Some(tokio::time::Instant::now());
    // Any turn of the loop is work; SETTLE after the last one the agent
    // gives back what that work needed (`idle`).
    let (mut settle_at, mut settled) = (None, false);
    loop {
        crate::hw::beat();
        if !std::mem::take(&mut settled) {
            settle_at = Some(tokio::time::Instant::now() + crate::idle::SETTLE);
        }
        let trigger = tokio::select! {
            () = &mut shutdown => return,
            () = until(settle_at) => {
                // A few milliseconds, on this thread: no blocking thread
                // is started just to give memory back.
                crate::idle::settle();
                (settle_at, settled) = (None, true);
                continue;
            }
            () = until(check) => {
                let (e, mut sup) = (engine.clone(), supervisor.take().unwrap_or_default());
                let (sup, events) = tokio::task::spawn_blocking(move || {
                    let ev = sup.tick(&e, std::time::Instant::now());
                    (sup, ev)
                })
                .await
                .unwrap_or_else(|e| panic!("supervisor task panicked: {e}"));
                let due = sup.next_due().map(tokio::time::Instant::from_std);
                supervisor = Some(sup);
                check = match &exits {
                    Some(_) => due,
                    None => Some(tokio::time::Instant::now() + POLL),
                };
                if !events.is_empty() {
                    for ev in events {
                        tracing::warn!(event = %ev, "workload supervision");
                        event(link.as_ref(), ev);
                    }
                    report(&engine, link.as_ref(), None);
                }
                continue;
            }
            changed = next_change(&mut exits) => {
                if !changed {
                    exits = None;
                }
                check = Some(tokio::time::Instant::now());
                continue;
            }
            doc = next_import(&mut imports) => match doc {
                Some(doc) => {
                    // Verified by the import (a bundle): offered like a fetch.
                    offer(&engine, link.as_ref(), housekeeping.as_ref(), doc).await;
                    check = Some(tokio::time::Instant::now());
                    continue;
                }
                None => {
                    imports = None;
                    continue;
                }
            },
            () = until(retry_at) => "retry",
            () = tokio::time::sleep_until(due) => if started { "timer" } else { "start" },
            n = next_notice(&mut notices) => match n {
                Some(Notice::Refresh) => "notification",
                Some(Notice::Connected) => {
                    progress.send_modify(|p| p.connected = true);
                    "connected"
                }
                Some(Notice::Down(why)) => {
                    progress.send_modify(|p| {
                        p.connected = false;
                        p.link_error = Some(why.clone());
                    });
                    tracing::warn!(%why, "link down; periodic refresh continues");
                    continue;
                }
                None => {
                    notices = None;
                    continue;
                }
            },
        };
        started = true;
        if trigger == "notification" {
            retry.reset();
        }
        // A failure is retried if an event asked for this refresh, or a
        // retry was still pending.
        let pending = retry_at.take().is_some();
        let chasing = trigger != "timer" || pending;
        seed = seed.wrapping_add(1);
        due = tokio::time::Instant::now() + schedule.next(seed);
        let src = source.clone();
        let fetched = tokio::task::spawn_blocking(move || src.refresh())
            .await
            .unwrap_or_else(|e| Err(format!("refresh task failed: {e}")));
        let done = match fetched {
            Ok(None) => {
                report(&engine, link.as_ref(), None);
                true
            }
            Err(reason) => {
                tracing::warn!(%trigger, %reason, "refresh failed");
                progress.send_modify(|p| p.refresh_error = Some(reason.clone()));
                event(
                    link.as_ref(),
                    json!({"event": "refresh-failed", "reason": reason}),
                );
                false
            }
            Ok(Some(doc)) if last_offered.as_deref() == Some(doc.as_slice()) => true,
            Ok(Some(doc)) => {
                let transient =
                    offer(&engine, link.as_ref(), housekeeping.as_ref(), doc.clone()).await;
                check = Some(tokio::time::Instant::now());
                if !transient {
                    last_offered = Some(doc);
                }
                !transient
            }
        };
        if done {
            retry.reset();
            progress.send_modify(synced);
        } else if chasing {
            let pause = retry.failed(seed);
            tracing::info!(%trigger, retry_in_ms = pause.as_millis() as u64, "refresh will be retried");
            retry_at = Some(tokio::time::Instant::now() + pause);
        }
    }
}

/// Offers a verified document to the engine and reports the outcome;
/// returns whether the outcome is transient (a fetch failure: the same
/// document is tried again on the next trigger).
async fn offer(
    engine: &Arc<Engine>,
    link: Option<&Link>,
    housekeeping: Option<&Housekeeping>,
    doc: Vec<u8>,
) -> bool {
    let e = engine.clone();
    let offered = doc;
    let outcome = tokio::task::spawn_blocking(move || e.offer(&offered))
        .await
        .unwrap_or_else(|e| panic!("update task panicked: {e}"));
    // A fetch failure is transient: the same document is tried again on
    // the next trigger. Any other outcome is final for this document.
    let transient = matches!(&outcome, Ok(Offered::Finished(o)) if o.result == "fetch-failed");
    if let (Ok(Offered::Finished(_)), Some(h)) = (&outcome, housekeeping) {
        let h = h.clone();
        let _ = tokio::task::spawn_blocking(move || h()).await;
    }
    let ev = match outcome {
        Ok(Offered::Finished(o)) => {
            tracing::info!(generation = o.generation, result = %o.result, reason = %o.reason, "update finished");
            json!({"event": o.result, "generation": o.generation, "reason": o.reason})
        }
        Ok(Offered::Known(why)) => {
            tracing::debug!(reason = %why, "release already handled");
            report(engine, link, None);
            return transient;
        }
        Ok(Offered::Ignored(why)) => {
            tracing::info!(reason = %why, "release ignored: not for this device");
            json!({"event": "ignored", "reason": why})
        }
        Err(e) => {
            tracing::warn!(error = %e, "release refused");
            json!({"event": "refused", "reason": e.to_string()})
        }
    };
    report(engine, link, Some(ev));
    transient
}

/// Resolves at `at`, or never.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether the runtime reported a change (false: it no longer reports).
async fn next_change(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn next_import(n: &mut Option<tokio::sync::mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match n {
        Some(n) => n.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_notice(n: &mut Option<Notices>) -> Option<Notice> {
    match n {
        Some(n) => n.recv().await,
        None => std::future::pending().await,
    }
}

fn report(engine: &Engine, link: Option<&Link>, ev: Option<serde_json::Value>) {
    if let Some(ev) = ev {
        event(link, ev);
    }
    let Some(link) = link else { return };
    match status(engine) {
        Ok(s) => {
            link.publish_state(serde_json::to_vec(&s).expect("status serializes"));
        }
        Err(e) => tracing::warn!(error = %e, "cannot build the state report"),
    }
}

fn event(link: Option<&Link>, mut ev: serde_json::Value) {
    crate::hw::observe(&ev);
    let Some(link) = link else { return };
    ev["time_ms"] = crate::reconcile::engine::wall_ms().into();
    link.publish_event(serde_json::to_vec(&ev).expect("event serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let s = Schedule {
            every: Duration::from_secs(900),
            jitter: Duration::from_secs(120),
        };
        let v: Vec<Duration> = (0..1000).map(|i| s.next(i)).collect();
        assert!(v
            .iter()
            .all(|d| *d >= Duration::from_secs(780) && *d <= Duration::from_secs(1020)));
        let distinct: std::collections::BTreeSet<_> = v.iter().collect();
        assert!(distinct.len() > 900);
        let none = Schedule {
            every: Duration::from_secs(5),
            jitter: Duration::ZERO,
        };
        assert_eq!(none.next(42), Duration::from_secs(5));
    }

    #[test]
    fn retries_back_off_with_jitter_up_to_a_minute_and_start_over() {
        let ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for seed in 0..200u64 {
            let mut r = Retry::default();
            for (n, c) in ceilings.iter().enumerate() {
                let c = Duration::from_secs(*c);
                let d = r.failed(seed * 31 + n as u64);
                assert!(
                    d >= c / 2 && d <= c,
                    "failure {}: {d:?} outside [{:?}, {c:?}]",
                    n + 1,
                    c / 2
                );
            }
            // Long outages stay at the cap and never overflow.
            for _ in 0..100 {
                assert!(r.failed(seed) <= RETRY_MAX);
            }
            r.reset();
            assert!(r.failed(seed) <= RETRY_FIRST);
        }
        // Devices failing together spread their retries.
        let firsts: std::collections::BTreeSet<Duration> = (0..100)
            .map(|s| {
                let mut r = Retry::default();
                r.failed(s);
                r.failed(s)
            })
            .collect();
        assert!(firsts.len() > 90, "{}", firsts.len());
    }
}
