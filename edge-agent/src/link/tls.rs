//! The TLS client configuration of the link: the broker's CA only (no
//! system roots), the device's certificate and key, ring as the one crypto
//! provider (explicit, so no process-wide default is needed).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Builds the client configuration from PEM bytes; the error names the part.
pub fn client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &*ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA file is not PEM certificates: {e}"))?;
    if cas.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| format!("the CA certificate is unusable: {e}"))?;
    }
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &*cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the device certificate file is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the device certificate file holds no certificate".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &*key_pem)
        .map_err(|e| format!("the device key file is not PEM: {e}"))?
        .ok_or("the device key file holds no private key")?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                format!("the device certificate and key do not form a usable identity: {e}")
            })?;
    Ok(Arc::new(config))
}
