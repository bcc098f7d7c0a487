//! End-to-end tests: one binary, modules by area.

mod agent_bundle;
mod agent_bundle_refuse;
mod agent_cli;
mod agent_crash;
mod agent_faults;
mod agent_link;
mod agent_offline;
mod agent_runtime;
mod agent_selfupdate;
mod agent_update;
mod device_enroll;
mod device_hw;
mod device_secrets;
mod hil;
mod image_build;
mod image_pull;
mod image_unpack;
mod package;
mod runtime_cli;
mod runtime_idmap;
mod runtime_security;
mod runtime_verify;
mod trust_client;
mod trust_signer;
