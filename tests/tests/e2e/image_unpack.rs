//! Images: safe layer unpacking against malicious layers; parity with umoci.
