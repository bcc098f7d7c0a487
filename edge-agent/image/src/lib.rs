//! Berth's images: how a verified image gets onto a device.

#![forbid(unsafe_code)]

pub mod build;
pub mod layout;
pub mod unpack;

pub mod registry;
pub mod store;
