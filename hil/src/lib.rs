//! Berth's hardware-in-loop rig library. A rig drives each device under test
//! through embedded-hal pins; this crate starts with the power and reset
//! lines ([`power`]) and grows the scenario runner and backends on top.

#![forbid(unsafe_code)]

pub mod power;
