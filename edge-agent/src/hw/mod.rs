//! Hardware signals: a status LED driven through an embedded-hal 1.0
//! [`OutputPin`](embedded_hal::digital::OutputPin) ([`led`]) and the
//! watchdog ([`watchdog`]).
//!
//! The LED shows what the reconciler is doing, one pattern per state:
//!
//! | pattern | meaning | sequence (repeated) |
//! |---|---|---|
//! | `idle` | running the committed generation | 100 ms on, 1900 ms off (heartbeat) |
//! | `updating` | fetching, staging, switching, verifying, rolling back | 500 ms on, 500 ms off |
//! | `rolled-back` | the last update failed its gate and was undone | 150 on, 150 off, 150 on, 1050 off |
//! | `error` | a release was refused, a workload cannot be restarted, or the state is unreadable | 100 ms on, 100 ms off |
//!
//! Precedence: updating, then error, then rolled back, then idle. An error
//! is cleared by the next committed or rolled-back update.
//!
//! The main loop's liveness is a process-wide heartbeat ([`beat`]): the
//! loop beats on every turn and the update engine on every persisted
//! transition; [`watchdog::Pacemaker`] pets the watchdog only while the last
//! beat is recent.

pub mod led;
pub mod watchdog;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::reconcile::{Phase, State};

/// A status LED pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Idle,
    Updating,
    RolledBack,
    Error,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Updating => "updating",
            Self::RolledBack => "rolled-back",
            Self::Error => "error",
        }
    }

    /// (lit, milliseconds) steps, repeated.
    pub fn steps(self) -> &'static [(bool, u64)] {
        match self {
            Self::Idle => &[(true, 100), (false, 1900)],
            Self::Updating => &[(true, 500), (false, 500)],
            Self::RolledBack => &[(true, 150), (false, 150), (true, 150), (false, 1050)],
            Self::Error => &[(true, 100), (false, 100)],
        }
    }

    /// The pattern for a persisted update state and whether an error is
    /// outstanding.
    pub fn of(state: &State, error: bool) -> Pattern {
        if !matches!(state.phase.0, Phase::Idle) {
            return Self::Updating;
        }
        if error {
            return Self::Error;
        }
        let current = state.current.as_ref().map_or(0, |g| g.number);
        match state.failed {
            Some(f) if f > current => Self::RolledBack,
            _ => Self::Idle,
        }
    }
}

fn epoch() -> &'static Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now)
}

static LAST_BEAT_MS: AtomicU64 = AtomicU64::new(0);
/// 0: no error outstanding; 1: an error.
static ERROR: AtomicU8 = AtomicU8::new(0);

/// Records that the main loop (or the update engine) made progress.
pub fn beat() {
    let ms = epoch().elapsed().as_millis() as u64;
    LAST_BEAT_MS.fetch_max(ms.max(1), Ordering::AcqRel);
}

/// How long ago the last [`beat`] was (since start if none yet).
pub fn since_beat() -> Duration {
    let now = epoch().elapsed().as_millis() as u64;
    Duration::from_millis(now.saturating_sub(LAST_BEAT_MS.load(Ordering::Acquire)))
}

/// Notes an event the agent reports (`{"event": …}`): refusals and
/// workloads that cannot be restarted raise the error signal; a finished
/// update clears it.
pub fn observe(event: &serde_json::Value) {
    match event["event"].as_str() {
        Some("refused" | "restart-failed" | "recovery-failed") => ERROR.store(1, Ordering::Release),
        Some("committed" | "rolled-back") => ERROR.store(0, Ordering::Release),
        _ => {}
    }
}

/// Whether an error is outstanding.
pub fn error() -> bool {
    ERROR.load(Ordering::Acquire) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::machine::Generation;

    #[test]
    fn patterns_follow_the_phase_with_precedence() {
        let g = |n| Generation {
            number: n,
            digest: String::new(),
            document: Vec::new(),
        };
        let mut s = State::default();
        assert_eq!(Pattern::of(&s, false), Pattern::Idle);
        s.current = Some(g(2));
        s.failed = Some(3);
        assert_eq!(Pattern::of(&s, false), Pattern::RolledBack);
        assert_eq!(Pattern::of(&s, true), Pattern::Error);
        s.phase.0 = Phase::Fetching { target: g(4) };
        assert_eq!(Pattern::of(&s, true), Pattern::Updating);
        s.phase.0 = Phase::Idle;
        s.current = Some(g(4));
        assert_eq!(Pattern::of(&s, false), Pattern::Idle);
        // Every pattern is distinct and repeats within 2 s.
        let all = [
            Pattern::Idle,
            Pattern::Updating,
            Pattern::RolledBack,
            Pattern::Error,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.steps().iter().map(|s| s.1).sum::<u64>() <= 2000);
            for b in &all[i + 1..] {
                assert_ne!(a.steps(), b.steps());
            }
        }
    }

    #[test]
    fn events_raise_and_clear_the_error() {
        observe(&serde_json::json!({"event": "refused"}));
        assert!(error());
        observe(&serde_json::json!({"event": "ignored"}));
        assert!(error());
        observe(&serde_json::json!({"event": "committed"}));
        assert!(!error());
        beat();
        assert!(since_beat() < Duration::from_secs(5));
    }
}
