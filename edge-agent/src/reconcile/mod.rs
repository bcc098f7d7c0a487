//! Reconciliation: the update state machine ([`machine`], pure) and its
//! crash-consistent persistence in sled ([`store`]).

pub mod health;
pub mod machine;
pub mod runtime;
pub mod store;

#[cfg(test)]
mod tests;

pub use machine::{Event, Generation, Outcome, Phase, Recovery, Refusal, State};
pub use store::{HistoryEntry, StoreError, UpdateStore};
