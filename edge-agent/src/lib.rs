//! Berth's device agent library: the chain of trust from a pinned TUF root to
//! a verified release, image retrieval and unpacking, the release state
//! machine, and the link to the fleet. This crate grows module by module; the
//! first is [`names`], the newtypes every untrusted name passes through before
//! it becomes a path.

#![forbid(unsafe_code)]

pub mod api;
pub mod attest;
pub mod config;
pub mod daemon;
pub mod link;
pub mod names;
pub mod reconcile;
pub mod release;
pub mod status;
