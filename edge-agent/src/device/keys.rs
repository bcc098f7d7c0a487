//! The device's private keys on disk, in the state directory, mode 0600:
//!
//! - `device.key`: the ed25519 identity (PKCS#8 PEM, `BEGIN PRIVATE KEY`),
//!   the one key that signs attestations and authenticates the MQTT link
//!   (its certificate is `device.pem`). A legacy file of 64 hex digits is
//!   still read; `berth device enroll` rewrites it as PEM (same key).
//! - `secrets.key`: the X25519 identity that opens sealed secrets, in age's
//!   `AGE-SECRET-KEY-1…` form.
//!
//! Files are written to a temporary name with mode 0600, synced, then
//! renamed: a power cut leaves the old key or the new one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

use super::DeviceError;

/// The DER prefix of an ed25519 private key in PKCS#8 v1 (RFC 8410): the
/// 32 secret bytes follow.
const PKCS8_ED25519: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The PKCS#8 DER of an ed25519 key.
pub fn pkcs8_der(key: &SigningKey) -> Vec<u8> {
    let mut der = PKCS8_ED25519.to_vec();
    der.extend_from_slice(&key.to_bytes());
    der
}

/// The PKCS#8 PEM of an ed25519 key (what TLS stacks read).
pub fn pkcs8_pem(key: &SigningKey) -> String {
    pem("PRIVATE KEY", &pkcs8_der(key))
}

/// PEM armour of `der` under `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn key_err(path: &Path, reason: impl Into<String>) -> DeviceError {
    DeviceError::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parses an identity key file: PKCS#8 PEM, or the legacy 64 hex digits.
pub fn parse_identity(path: &Path, text: &str) -> Result<SigningKey, DeviceError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        let der = match rustls_pemfile::private_key(&mut text.as_bytes()) {
            Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k))) => k.secret_pkcs8_der().to_vec(),
            _ => return Err(key_err(path, "not a PKCS#8 PEM private key")),
        };
        let secret: [u8; 32] = der
            .strip_prefix(&PKCS8_ED25519[..])
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| key_err(path, "not an ed25519 key (PKCS#8 v1 expected)"))?;
        return Ok(SigningKey::from_bytes(&secret));
    }
    let bytes: [u8; 32] = hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            key_err(
                path,
                "neither a PEM ed25519 key nor 64 hex digits: restore the key or remove it to enrol a new one",
            )
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Reads the identity key; `None` when the file does not exist.
pub fn read_identity(path: &Path) -> Result<Option<SigningKey>, DeviceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_identity(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(key_err(path, format!("cannot read: {e}"))),
    }
}

/// Loads the identity key, or creates a new one (PEM, mode 0600).
pub fn identity(path: &Path) -> Result<SigningKey, DeviceError> {
    if let Some(k) = read_identity(path)? {
        return Ok(k);
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    write_private(path, pkcs8_pem(&key).as_bytes())?;
    Ok(key)
}

/// Reads the secrets key; `None` when the file does not exist.
pub fn read_secrets_key(path: &Path) -> Result<Option<age::x25519::Identity>, DeviceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => age::x25519::Identity::from_str(text.trim())
            .map(Some)
            .map_err(|_| {
                key_err(
                    path,
                    "not an age X25519 identity (AGE-SECRET-KEY-1…): restore it from a backup, or \
                     enrol again and re-seal the device's secrets",
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(key_err(path, format!("cannot read: {e}"))),
    }
}

/// Loads the secrets key, or creates a new one (mode 0600).
pub fn secrets_key(path: &Path) -> Result<age::x25519::Identity, DeviceError> {
    if let Some(k) = read_secrets_key(path)? {
        return Ok(k);
    }
    let key = age::x25519::Identity::generate();
    let text = format!("{}\n", key.to_string().expose_secret());
    write_private(path, text.as_bytes())?;
    Ok(key)
}

/// Writes `bytes` to `path` with mode 0600, atomically (temporary file,
/// sync, rename, directory sync).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DeviceError> {
    write_atomic(path, bytes, 0o600)
}

/// Writes `bytes` to `path` with `mode`, atomically.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DeviceError> {
    let err = |what: &str, e: std::io::Error| key_err(path, format!("cannot {what}: {e}"));
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("key".into(), |n| n.to_string_lossy())
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err("create", e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| err("write", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| err("rename into place", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_created_once_private_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let (id, sk) = (
            dir.path().join("device.key"),
            dir.path().join("secrets.key"),
        );
        let a = identity(&id).unwrap();
        assert_eq!(identity(&id).unwrap().to_bytes(), a.to_bytes());
        assert!(std::fs::read_to_string(&id)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let s = secrets_key(&sk).unwrap();
        assert_eq!(
            secrets_key(&sk).unwrap().to_public().to_string(),
            s.to_public().to_string()
        );
        assert_eq!((mode(&id), mode(&sk)), (0o600, 0o600));
        // What rustls reads is the same key.
        let pem = std::fs::read(&id).unwrap();
        let parsed = rustls_pemfile::private_key(&mut pem.as_slice())
            .unwrap()
            .unwrap();
        assert_eq!(parsed.secret_der(), pkcs8_der(&a).as_slice());
    }

    #[test]
    fn legacy_hex_keys_are_read_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("device.key");
        std::fs::write(&p, hex::encode([7u8; 32])).unwrap();
        assert_eq!(identity(&p).unwrap().to_bytes(), [7u8; 32]);
        std::fs::write(&p, "xyz").unwrap();
        let e = identity(&p).unwrap_err().to_string();
        assert!(e.contains("device.key") && e.contains("64 hex"), "{e}");
        let q = dir.path().join("secrets.key");
        std::fs::write(&q, "AGE-SECRET-KEY-1NOPE").unwrap();
        let e = secrets_key(&q).err().unwrap().to_string();
        assert!(e.contains("secrets.key") && e.contains("re-seal"), "{e}");
    }
}
