//! End-to-end tests: one binary, modules by area.

mod runtime_cli;
mod runtime_security;
mod runtime_verify;
