//! Trust: our TUF client against python-tuf repositories and the attack list.
