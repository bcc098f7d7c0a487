//! The operator side of enrollment: check a device's request completely,
//! then issue its MQTT client certificate with the fleet CA. The CSR only
//! contributes its public key (proven by its own signature and equal to the
//! identity key); every other field of the certificate is set here.

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::enroll::Request;
use super::DeviceError;

/// What approval produced.
#[derive(Debug, Clone)]
pub struct Approved {
    pub certificate_pem: String,
    /// Unix seconds of the certificate's end of validity.
    pub not_after: i64,
}

/// The parts of a certificate enrollment cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name.
    pub subject: String,
    /// The raw subject public key (32 bytes for ed25519).
    pub public_key: Vec<u8>,
    pub not_after: i64,
}

/// Parses the first certificate of a PEM file.
pub fn certificate_info(pem: &[u8]) -> Result<CertInfo, DeviceError> {
    let der = rustls_pemfile::certs(&mut &*pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| DeviceError::Certificate("not a PEM certificate".into()))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| DeviceError::Certificate(format!("not a valid X.509 certificate: {e}")))?;
    let subject = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(CertInfo {
        subject,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn refuse(device: &str, reason: impl Into<String>) -> DeviceError {
    DeviceError::Request {
        device: device.to_string(),
        reason: reason.into(),
    }
}

/// Checks `req` for the device the operator means to approve (`expect`):
/// its id, its signature, its CSR's signature, subject and key.
pub fn check(req: &Request, expect: &str) -> Result<(), DeviceError> {
    if req.device != expect {
        return Err(refuse(
            &req.device,
            format!(
                "it is for device {:?}, not {expect:?}: approve it as --device {:?} if that is \
                 the device you mean, or ask {expect:?} for its own request",
                req.device, req.device
            ),
        ));
    }
    let identity = req.verify_signature()?;
    let csr = CertificateSigningRequestParams::from_pem(&req.csr).map_err(|e| {
        refuse(
            &req.device,
            format!(
                "its CSR is malformed or its signature does not verify ({e}): it was damaged or \
                 tampered with; enrol the device again"
            ),
        )
    })?;
    let cn = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .and_then(dn_text)
        .unwrap_or_default();
    if cn != req.device {
        return Err(refuse(
            &req.device,
            format!(
                "its CSR asks for a certificate for {cn:?}, not for the device {:?}",
                req.device
            ),
        ));
    }
    use rcgen::PublicKeyData as _;
    if csr.public_key.algorithm() != &rcgen::PKCS_ED25519
        || csr.public_key.der_bytes() != identity.as_bytes()
    {
        return Err(refuse(
            &req.device,
            "its CSR's key is not the device's identity key: enrol the device again",
        ));
    }
    Ok(())
}

fn dn_text(v: &rcgen::DnValue) -> Option<String> {
    match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Issues the client certificate for a checked request with the fleet CA,
/// valid from now (less 5 minutes of clock skew) for `days`.
pub fn issue(
    req: &Request,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    days: u32,
    now: i64,
) -> Result<Approved, DeviceError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| {
        DeviceError::Ca(format!(
            "the CA key is not a PEM private key rcgen can sign with ({e})"
        ))
    })?;
    let ca = certificate_info(ca_cert_pem.as_bytes())
        .map_err(|e| DeviceError::Ca(format!("the CA certificate: {e}")))?;
    if ca.public_key != ca_key.public_key_raw() {
        return Err(DeviceError::Ca(
            "the CA key does not belong to the CA certificate: pass the matching pair".into(),
        ));
    }
    let csr = CertificateSigningRequestParams::from_pem(&req.csr)
        .map_err(|e| refuse(&req.device, format!("its CSR: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| DeviceError::Ca(format!("the CA certificate: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.device.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let ts = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(s)
            .map_err(|e| DeviceError::Ca(format!("validity: {e}")))
    };
    let not_after = now + i64::from(days) * 86_400;
    params.not_before = ts(now - 300)?;
    params.not_after = ts(not_after)?;
    let cert = CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    }
    .signed_by(&issuer)
    .map_err(|e| DeviceError::Ca(format!("signing failed: {e}")))?;
    Ok(Approved {
        certificate_pem: cert.pem(),
        not_after,
    })
}
