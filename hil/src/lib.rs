//! Berth's hardware-in-loop rig library.
//!
//! - [`power`] and [`led`]: a device under test's power relay, reset line
//!   and status LED over embedded-hal 1.0 pins, with a pattern decoder;
//! - [`pins`]: simulated pins; [`gpio`] (feature `gpio`): Linux GPIO
//!   character devices for real rigs;
//! - [`watch`]: the fleet as the rig sees it over MQTT (TLS, client cert);
//! - [`lab`]: a local fleet environment (broker, registry, TUF repository,
//!   signing keys) or an existing one; [`proxy`]: links the rig can
//!   partition and throttle;
//! - [`sim`]: the simulated backend (device = `berth-agent` process);
//! - [`scenario`], [`runner`] and [`report`]: TOML scenarios, their
//!   execution with fault injection, the summary and the JUnit report;
//! - [`campaign`]: a scenario file run end to end;
//! - [`fleet`]: many simulated devices against one broker and registry,
//!   measuring how fast a release reaches all of them.

#![forbid(unsafe_code)]

pub mod campaign;
pub mod fleet;
#[cfg(feature = "gpio")]
pub mod gpio;
pub mod lab;
pub mod led;
pub mod pins;
pub mod power;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sim;
pub mod watch;
