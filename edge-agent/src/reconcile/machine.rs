//! The update state machine, as pure transitions.
//!
//! ```text
//!            new release                fetched            switch begins
//!   Idle ───────────────▶ Fetching ───────────▶ Staged ───────────────▶ Switching
//!    ▲  ▲                    │ fetch failed                                  │ switched
//!    │  └────────────────────┘ (transient: retried on the next trigger)      ▼
//!    │  committed: current := target, previous := old current          Verifying
//!    ├───────────────────────────────────────────────────────── healthy ◀────┤
//!    │                                                                       │ unhealthy /
//!    │  rolled back: current unchanged, target marked failed                 │ deadline
//!    └────────────────────────────── RollingBack ◀────────────────────────────┘
//! ```
//!
//! The new generation is fully fetched and unpacked (`Staged`) before
//! anything running is touched (`Switching`). A restart in `Fetching` or
//! `Staged` resumes the fetch; a restart in `Switching`, `Verifying` or
//! `RollingBack` rolls back, because only the previous generation is known
//! good. A generation that failed its gate is not retried until a newer one
//! arrives.

use serde::{Deserialize, Serialize};

/// One release as the device knows it: the verified document bytes and
/// their digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub number: u64,
    /// `sha256:` of the verified release document.
    pub digest: String,
    /// The verified release document (JSON), exactly as signed.
    pub document: Vec<u8>,
}

/// Where an update stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    Idle,
    Fetching { target: Generation },
    Staged { target: Generation },
    Switching { target: Generation },
    Verifying { target: Generation, since_ms: u64 },
    RollingBack { failed: Generation, reason: String },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Fetching { .. } => "fetching",
            Phase::Staged { .. } => "staged",
            Phase::Switching { .. } => "switching",
            Phase::Verifying { .. } => "verifying",
            Phase::RollingBack { .. } => "rolling-back",
        }
    }
}

/// The whole persisted update state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: PhaseBox,
    /// The committed generation (what runs when idle).
    pub current: Option<Generation>,
    /// The one committed before it (kept for garbage collection decisions).
    pub previous: Option<Generation>,
    /// The newest generation that failed its health gate.
    pub failed: Option<u64>,
}

/// `Phase` with a `Default` (serde-friendly wrapper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhaseBox(pub Phase);

impl Default for PhaseBox {
    fn default() -> Self {
        Self(Phase::Idle)
    }
}

/// Something that happened, which may move the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A verified release for this device.
    Release(Generation),
    Fetched,
    FetchFailed(String),
    SwitchBegun,
    Switched {
        now_ms: u64,
    },
    Healthy,
    Unhealthy(String),
    RolledBack,
}

/// Why an event does not apply in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("release generation {offered} is not newer than the current generation {current}: ignored (rollback protection)")]
    NotNewer { offered: u64, current: u64 },
    #[error("release generation {0} already failed its health gate: it is not retried; publish a newer generation")]
    AlreadyFailed(u64),
    #[error("event {event} does not apply while {phase}")]
    Unexpected { event: String, phase: &'static str },
}

/// What the history records for a finished update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub generation: u64,
    pub result: String,
    pub reason: String,
}

impl State {
    /// The generation number a new release must exceed.
    pub fn floor(&self) -> u64 {
        let busy = match &self.phase.0 {
            Phase::Idle | Phase::RollingBack { .. } => 0,
            Phase::Fetching { target }
            | Phase::Staged { target }
            | Phase::Switching { target }
            | Phase::Verifying { target, .. } => target.number,
        };
        self.current.as_ref().map_or(0, |g| g.number).max(busy)
    }

    /// The next state after `event`, and the outcome to record if an update
    /// finished. Pure: the caller persists the result before acting on it.
    pub fn next(&self, event: Event) -> Result<(State, Option<Outcome>), Refusal> {
        let mut s = self.clone();
        let phase = self.phase.0.name();
        let unexpected = |e: &Event| Refusal::Unexpected {
            event: format!("{e:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap_or("?")
                .to_string(),
            phase,
        };
        let outcome = match (&self.phase.0, event) {
            (Phase::Idle | Phase::Fetching { .. }, Event::Release(g)) => {
                let current = self.current.as_ref().map_or(0, |c| c.number);
                if g.number <= current {
                    return Err(Refusal::NotNewer {
                        offered: g.number,
                        current,
                    });
                }
                if self.failed.is_some_and(|f| g.number <= f) {
                    return Err(Refusal::AlreadyFailed(g.number));
                }
                if let Phase::Fetching { target } = &self.phase.0 {
                    if g.number <= target.number {
                        return Err(Refusal::NotNewer {
                            offered: g.number,
                            current: target.number,
                        });
                    }
                }
                s.phase.0 = Phase::Fetching { target: g };
                None
            }
            (Phase::Fetching { target }, Event::Fetched) => {
                s.phase.0 = Phase::Staged {
                    target: target.clone(),
                };
                None
            }
            (Phase::Fetching { target }, Event::FetchFailed(reason)) => {
                s.phase.0 = Phase::Idle;
                Some(Outcome {
                    generation: target.number,
                    result: "fetch-failed".into(),
                    reason,
                })
            }
            (Phase::Staged { target }, Event::SwitchBegun) => {
                s.phase.0 = Phase::Switching {
                    target: target.clone(),
                };
                None
            }
            (Phase::Switching { target }, Event::Switched { now_ms }) => {
                s.phase.0 = Phase::Verifying {
                    target: target.clone(),
                    since_ms: now_ms,
                };
                None
            }
            (Phase::Verifying { target, .. }, Event::Healthy) => {
                s.previous = s.current.take();
                s.current = Some(target.clone());
                s.phase.0 = Phase::Idle;
                Some(Outcome {
                    generation: target.number,
                    result: "committed".into(),
                    reason: String::new(),
                })
            }
            (
                Phase::Switching { target } | Phase::Verifying { target, .. },
                Event::Unhealthy(reason),
            ) => {
                s.phase.0 = Phase::RollingBack {
                    failed: target.clone(),
                    reason,
                };
                None
            }
            (Phase::RollingBack { failed, reason }, Event::RolledBack) => {
                s.failed = Some(s.failed.unwrap_or(0).max(failed.number));
                s.phase.0 = Phase::Idle;
                Some(Outcome {
                    generation: failed.number,
                    result: "rolled-back".into(),
                    reason: reason.clone(),
                })
            }
            (_, e) => return Err(unexpected(&e)),
        };
        Ok((s, outcome))
    }

    /// What a restarted agent must do first.
    pub fn recovery(&self) -> Recovery {
        match &self.phase.0 {
            Phase::Idle => Recovery::EnsureCurrent,
            Phase::Fetching { .. } => Recovery::ResumeFetch,
            Phase::Staged { .. } => Recovery::ResumeSwitch,
            Phase::Switching { target } | Phase::Verifying { target, .. } => Recovery::RollBack {
                failed: target.number,
            },
            Phase::RollingBack { failed, .. } => Recovery::RollBack {
                failed: failed.number,
            },
        }
    }

    /// A restart interrupted a switch or a health gate: roll back.
    pub fn interrupted(&self) -> Option<State> {
        let (Phase::Switching { target } | Phase::Verifying { target, .. }) = &self.phase.0 else {
            return None;
        };
        let mut s = self.clone();
        s.phase.0 = Phase::RollingBack {
            failed: target.clone(),
            reason: "the agent restarted before the update was verified".into(),
        };
        Some(s)
    }
}

/// The first thing a restarted agent does, decided by the persisted phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Make sure exactly the current generation runs.
    EnsureCurrent,
    /// Nothing running was touched: fetch the target again.
    ResumeFetch,
    /// The target is staged: start the switch.
    ResumeSwitch,
    /// Stop whatever of `failed` runs and restore the current generation.
    RollBack { failed: u64 },
}
