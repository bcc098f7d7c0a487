//! Sealed secrets: the operator seals a secret to devices' X25519 keys in
//! the age format ([`seal`]); a release carries it by name and digest; the
//! agent opens it with its `secrets.key` ([`Unsealer`]) only in memory and
//! into a tmpfs, one directory per workload, bind-mounted read-only at
//! `/run/secrets` into that workload alone and given to its user there.
//!
//! The plaintext never reaches persistent storage: [`Unsealer`] refuses a
//! directory that is not on a tmpfs (or ramfs), buffers are zeroed when
//! dropped, and no error, log line or status message carries it.
//!
//! A workload that asks for a secret as an environment variable (`env` on
//! its reference) gets it through the same file: the agent passes
//! `berth-runtime` only the variable's name and the file's path inside the
//! container (`--secret-env VAR=/run/secrets/NAME`), which the runtime keeps
//! as an annotation in the bundle's `config.json`; the runtime's executor
//! reads the file inside the container, as the workload's user, right
//! before it executes the workload, and sets the variable in that process
//! alone. No spec, argument list, state file or log holds the value; only
//! the workload's memory (`/proc/PID/environ`, readable by its own user and
//! root) does. [`check_env_value`] refuses, before a release is applied,
//! a value no variable can hold.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::names::WorkloadName;
use crate::release::document::Secret;

/// Where a workload's secrets appear inside its container.
pub const MOUNT: &str = "/run/secrets";

/// The largest plaintext [`Unsealer`] opens.
pub const MAX_PLAINTEXT: u64 = 64 * 1024;

/// A secret that cannot be sealed, opened or delivered.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot seal: {0}")]
    Seal(String),
    #[error("secret {secret} is not sealed for device {device} (none of its recipients is this device's key): seal it again including {device} (berth secret seal --to {device})")]
    NotForDevice { secret: String, device: String },
    #[error("secret {secret} cannot be opened on device {device}: {reason}")]
    Open {
        secret: String,
        device: String,
        reason: String,
    },
    #[error("secret {secret}: the sealed text does not match its digest {digest}")]
    Digest { secret: String, digest: String },
    #[error("secrets directory {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("device {device} has no secrets key ({path}): enrol it (berth device enroll) before sending it releases with secrets")]
    NoKey { device: String, path: PathBuf },
    #[error("secret {secret} cannot be the environment variable {env} of workload {workload}: {reason}; a variable holds UTF-8 text without NUL bytes: seal such a value, or drop `env` and read the file {MOUNT}/{secret}")]
    NotEnv {
        secret: String,
        workload: String,
        env: String,
        reason: String,
    },
}

/// Whether an opened secret can be an environment variable's value: UTF-8
/// text without NUL (the reason, never the bytes, when not).
pub fn check_env_value(plain: &[u8]) -> Result<(), String> {
    if plain.contains(&0) {
        return Err("its value contains a NUL byte".into());
    }
    std::str::from_utf8(plain)
        .map(drop)
        .map_err(|e| format!("its value is not UTF-8 text (at byte {})", e.valid_up_to()))
}

/// The `sha256:` digest of a sealed text, as releases reference it.
pub fn digest(sealed: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(sealed.as_bytes())))
}

/// Seals `plaintext` to every recipient (ASCII-armoured age).
pub fn seal(
    plaintext: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<String, SecretsError> {
    let err = |e: &dyn std::fmt::Display| SecretsError::Seal(e.to_string());
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| err(&e))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| err(&e))?;
    let mut w = enc.wrap_output(armor).map_err(|e| err(&e))?;
    w.write_all(plaintext).map_err(|e| err(&e))?;
    w.finish()
        .and_then(|armor| armor.finish())
        .map_err(|e| err(&e))?;
    String::from_utf8(out).map_err(|e| err(&e))
}

/// The device's side: its X25519 identity and the tmpfs directory where
/// workloads' secrets are materialized.
pub struct Unsealer {
    pub device: String,
    identity: age::x25519::Identity,
    root: PathBuf,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealer")
            .field("device", &self.device)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Unsealer {
    pub fn new(device: &str, identity: age::x25519::Identity, root: PathBuf) -> Unsealer {
        Unsealer {
            device: device.to_string(),
            identity,
            root,
        }
    }

    /// Opens `s` in memory, after checking its digest.
    pub fn open(&self, s: &Secret) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        if digest(&s.sealed) != s.digest.as_str() {
            return Err(SecretsError::Digest {
                secret: s.name.to_string(),
                digest: s.digest.to_string(),
            });
        }
        let open_err = |reason: String| SecretsError::Open {
            secret: s.name.to_string(),
            device: self.device.clone(),
            reason,
        };
        let dec = age::Decryptor::new(age::armor::ArmoredReader::new(s.sealed.as_bytes()))
            .map_err(|e| open_err(e.to_string()))?;
        let reader = dec
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => SecretsError::NotForDevice {
                    secret: s.name.to_string(),
                    device: self.device.clone(),
                },
                other => open_err(other.to_string()),
            })?;
        let mut buf = Zeroizing::new(Vec::new());
        reader
            .take(MAX_PLAINTEXT + 1)
            .read_to_end(&mut buf)
            .map_err(|e| open_err(format!("the sealed text is damaged: {e}")))?;
        if buf.len() as u64 > MAX_PLAINTEXT {
            return Err(open_err(format!("it is larger than {MAX_PLAINTEXT} bytes")));
        }
        Ok(buf)
    }

    /// The host directory holding `workload`'s secrets.
    pub fn dir(&self, workload: &WorkloadName) -> PathBuf {
        self.root.join(workload.as_str())
    }

    /// Writes `workload`'s secrets (files 0400 in a 0500 directory) into
    /// the tmpfs, replacing what was there; returns the directory.
    pub fn materialize(
        &self,
        workload: &WorkloadName,
        secrets: &[Secret],
    ) -> Result<PathBuf, SecretsError> {
        let dir_err = |path: &Path, reason: String| SecretsError::Dir {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(|e| dir_err(&self.root, format!("cannot create: {e}")))?;
        // Traversable by the workloads' mapped users, listable only by the agent.
        std::fs::set_permissions(
            &self.root,
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .map_err(|e| dir_err(&self.root, format!("cannot restrict: {e}")))?;
        ensure_tmpfs(&self.root)?;
        let dir = self.dir(workload);
        let fresh = self.root.join(format!(".{workload}.new"));
        remove_tree(&fresh).map_err(|e| dir_err(&fresh, format!("cannot clear: {e}")))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&fresh)
            .map_err(|e| dir_err(&fresh, format!("cannot create: {e}")))?;
        for s in secrets {
            let plain = self.open(s)?;
            let path = fresh.join(s.name.as_str());
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(|e| dir_err(&path, format!("cannot create: {e}")))?;
            f.write_all(&plain)
                .map_err(|e| dir_err(&path, format!("cannot write: {e}")))?;
        }
        std::fs::set_permissions(&fresh, std::os::unix::fs::PermissionsExt::from_mode(0o500))
            .map_err(|e| dir_err(&fresh, format!("cannot restrict: {e}")))?;
        remove_tree(&dir).map_err(|e| dir_err(&dir, format!("cannot replace: {e}")))?;
        std::fs::rename(&fresh, &dir).map_err(|e| dir_err(&dir, format!("cannot rename: {e}")))?;
        Ok(dir)
    }

    /// Removes `workload`'s secrets (after its container stopped).
    pub fn remove(&self, workload: &WorkloadName) -> Result<(), SecretsError> {
        let dir = self.dir(workload);
        remove_tree(&dir).map_err(|e| SecretsError::Dir {
            path: dir,
            reason: format!("cannot remove: {e}"),
        })
    }
}

/// Removes a directory tree that may hold read-only entries; absent is fine.
fn remove_tree(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return std::fs::remove_file(p),
        Ok(_) => {}
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    std::fs::remove_dir_all(p)
}

/// The filesystem type `path` lives on, from `/proc/self/mountinfo` (the
/// longest mount point that contains it).
pub fn fs_type(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let (pre, post) = line.split_once(" - ")?;
        let mount = unescape(pre.split(' ').nth(4)?);
        let fstype = post.split(' ').next()?.to_string();
        let m = Path::new(&mount);
        if path.starts_with(m) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), fstype));
        }
    }
    best.map(|(_, t)| t)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses a directory not on a memory filesystem.
pub fn ensure_tmpfs(dir: &Path) -> Result<(), SecretsError> {
    match fs_type(dir).as_deref() {
        Some("tmpfs" | "ramfs") => Ok(()),
        other => Err(SecretsError::Dir {
            path: dir.to_path_buf(),
            reason: format!(
                "is on {}, not a tmpfs: secrets are never written to persistent storage; set \
                 paths.secrets to a directory on a tmpfs (the default /run/berth/secrets is one \
                 under systemd)",
                other.unwrap_or("an unknown filesystem")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Digest;

    fn secret(name: &str, sealed: String) -> Secret {
        Secret {
            name: WorkloadName::parse(name).unwrap(),
            digest: Digest::parse(&digest(&sealed)).unwrap(),
            sealed,
        }
    }

    #[test]
    fn sealed_for_several_devices_opens_on_each_and_not_elsewhere() {
        let (a, b, c) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let sealed = seal(b"hunter2", &[a.to_public(), b.to_public()]).unwrap();
        assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(!sealed.contains("hunter2"));
        let s = secret("db-password", sealed);
        for (id, k) in [("gw-1", a), ("gw-2", b)] {
            let u = Unsealer::new(id, k, "/nonexistent".into());
            assert_eq!(u.open(&s).unwrap().as_slice(), b"hunter2");
        }
        let u = Unsealer::new("gw-3", c, "/nonexistent".into());
        let e = u.open(&s).unwrap_err().to_string();
        assert!(
            e.contains("db-password") && e.contains("gw-3") && !e.contains("hunter2"),
            "{e}"
        );
        let mut t = s.clone();
        t.sealed = t.sealed.replace('A', "B");
        assert!(matches!(u.open(&t), Err(SecretsError::Digest { .. })));
    }

    #[test]
    fn materialized_secrets_are_read_only_files_on_a_tmpfs_and_removable() {
        use std::os::unix::fs::PermissionsExt;
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        if fs_type(shm.path()).as_deref() != Some("tmpfs") {
            return;
        }
        let k = age::x25519::Identity::generate();
        let s = secret("token", seal(b"s3cret", &[k.to_public()]).unwrap());
        let u = Unsealer::new("gw-1", k, shm.path().join("secrets"));
        let w = WorkloadName::parse("web").unwrap();
        let dir = u.materialize(&w, std::slice::from_ref(&s)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(std::fs::read(dir.join("token")).unwrap(), b"s3cret");
        assert_eq!((mode(&dir), mode(&dir.join("token"))), (0o500, 0o400));
        assert_eq!(mode(&shm.path().join("secrets")), 0o711);
        // Again (a restart): replaced, not added to.
        u.materialize(&w, &[s]).unwrap();
        u.remove(&w).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn mountinfo_escapes_and_disk_directories_are_refused() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        if fs_type(dir.path()).as_deref() != Some("tmpfs") {
            let e = ensure_tmpfs(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains("not a tmpfs") && e.contains("paths.secrets"),
                "{e}"
            );
        }
    }
}
