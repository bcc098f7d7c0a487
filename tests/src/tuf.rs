//! python-tuf repositories for the trust tests.
