//! Images: pulls from a real Distribution registry with TLS and auth.
