//! Berth's chain of trust: a TUF 1.0 client and signer for releases.

#![forbid(unsafe_code)]
