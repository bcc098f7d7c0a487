//! Berth's device agent library and the operator CLI's building blocks:
//!
//! - [`names`]: newtypes every untrusted name passes through before it
//!   becomes a path or a topic;
//! - [`release`]: the release document, its validation, and the pure planner;
//! - [`reconcile`]: the update state machine in sled, the runtime seam, the
//!   health gate, the update engine and the supervisor;
//! - [`link`]: MQTT over TLS with client certificates;
//! - [`daemon`]: the agent's main loop;
//! - [`api`] and [`status`]: the local API and what it reports;
//! - [`secrets`]: sealing secrets to devices and opening them into a tmpfs;
//! - [`hw`]: the status LED (embedded-hal) and the watchdog;
//! - [`selfupdate`]: the agent's own updates — two slots, a trial with a
//!   deadline, the launcher that falls back;
//! - [`attest`]: the hash-chained launch log and its signed attestation;
//! - [`config`]: layered, validated configuration;
//! - [`device`]: enrollment — the device's keys, its certificate request,
//!   approval with the fleet CA and the fleet directory;
//! - [`source`] and [`images`]: releases through the TUF client, images
//!   through the registry client, blob store and unpacker;
//! - [`agent`]: `berth-agent` assembled from its configuration.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod attest;
pub mod bundle;
pub mod config;
pub mod daemon;
pub mod device;
pub mod hw;
pub mod idle;
pub mod images;
pub mod link;
pub mod names;
pub mod reconcile;
pub mod release;
pub mod secrets;
pub mod selfupdate;
pub mod source;
pub mod status;

/// An error and its sources, one line: `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
