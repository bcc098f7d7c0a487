//! Trust: `berth repo` output consumed by python-tuf ngclient.
