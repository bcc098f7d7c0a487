//! A real Distribution registry (docker-registry) with TLS and htpasswd on loopback.
