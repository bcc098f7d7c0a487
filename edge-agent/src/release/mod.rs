//! Release documents: the schema ([`document`]), parsing and checking with
//! field paths ([`validate`]), and the pure reconciliation planner ([`plan`]).

pub mod document;
pub mod plan;
pub mod validate;

#[cfg(test)]
mod validate_tests;

pub use document::{Arch, Release, Workload};
pub use plan::{plan, resolve, Action, Actual, Resolved, StopWhy};
pub use validate::{applies, from_json, from_toml, Applies, DeviceIdentity, Problem, ReleaseError};
