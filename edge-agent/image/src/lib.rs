//! Berth's images: how a verified image gets onto a device.

#![forbid(unsafe_code)]
