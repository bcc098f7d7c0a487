//! Reconciliation: the update state machine ([`machine`], pure), its
//! crash-consistent persistence in sled ([`store`]), the container runtime
//! seam ([`runtime`]) with exits learnt as they happen ([`exits`]) and the
//! workloads' last output ([`output`]), the health gate ([`health`]), the
//! supervisor of committed workloads ([`supervise`]) and the engine that runs
//! an update from a verified release to a committed or rolled-back
//! generation ([`engine`]).

pub mod engine;
pub mod exits;
pub mod health;
pub mod machine;
pub mod output;
pub mod record;
pub mod runtime;
pub mod store;
pub mod supervise;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod tests;

pub use machine::{Event, Generation, Outcome, Phase, Recovery, Refusal, State};
pub use store::{HistoryEntry, StoreError, UpdateStore};
