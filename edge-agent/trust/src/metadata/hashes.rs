//! Checking bytes, whole or streamed, against a declared length and hashes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256, Sha512};

/// Why bytes do not match their declared length or hashes.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{file}: length {actual} differs from the declared {expected}")]
    Length {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: {algorithm} is {actual}, but the signed metadata says {expected}")]
    Mismatch {
        file: String,
        algorithm: String,
        expected: String,
        actual: String,
    },
    #[error("{file}: no supported hash (sha256, sha512) among {algorithms:?}")]
    NoSupportedHash {
        file: String,
        algorithms: Vec<String>,
    },
}

/// Checks `bytes` against a declared length and hashes; every supported hash must match
/// and at least one must be present when any hashes are declared.
pub fn check_hashes(
    file: &str,
    bytes: &[u8],
    length: Option<u64>,
    hashes: Option<&BTreeMap<String, String>>,
) -> Result<(), HashError> {
    let mut h = StreamHashes::for_hashes(hashes);
    h.update(bytes);
    h.check(file, length, hashes)
}

/// The length and hashes of a file computed while it streams past, to be
/// checked like [`check_hashes`] at its end (sha512 only when declared).
#[derive(Clone, Debug, Default)]
pub struct StreamHashes {
    len: u64,
    sha256: Sha256,
    sha512: Option<Sha512>,
}

impl StreamHashes {
    /// Computes what `hashes` declares that this client supports.
    pub fn for_hashes(hashes: Option<&BTreeMap<String, String>>) -> StreamHashes {
        StreamHashes {
            sha512: hashes
                .is_some_and(|h| h.contains_key("sha512"))
                .then(Sha512::new),
            ..StreamHashes::default()
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.sha256.update(bytes);
        if let Some(h) = &mut self.sha512 {
            h.update(bytes);
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks what streamed past against a declared length and hashes.
    pub fn check(
        self,
        file: &str,
        length: Option<u64>,
        hashes: Option<&BTreeMap<String, String>>,
    ) -> Result<(), HashError> {
        if let Some(expected) = length {
            if self.len != expected {
                return Err(HashError::Length {
                    file: file.into(),
                    expected,
                    actual: self.len,
                });
            }
        }
        let Some(hashes) = hashes else {
            return Ok(());
        };
        let sha256 = hex::encode(self.sha256.finalize());
        let sha512 = self.sha512.map(|h| hex::encode(h.finalize()));
        let mut checked = 0;
        for (alg, expected) in hashes {
            let actual = match (alg.as_str(), &sha512) {
                ("sha256", _) => sha256.clone(),
                ("sha512", Some(h)) => h.clone(),
                _ => continue,
            };
            checked += 1;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(HashError::Mismatch {
                    file: file.into(),
                    algorithm: alg.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if checked == 0 {
            return Err(HashError::NoSupportedHash {
                file: file.into(),
                algorithms: hashes.keys().cloned().collect(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_lengths() {
        let data = b"abc";
        let sha = hex::encode(Sha256::digest(data));
        let mut h = BTreeMap::new();
        h.insert("sha256".to_string(), sha);
        check_hashes("f", data, Some(3), Some(&h)).unwrap();
        assert!(matches!(
            check_hashes("f", data, Some(4), Some(&h)),
            Err(HashError::Length { .. })
        ));
        assert!(matches!(
            check_hashes("f", b"abd", None, Some(&h)),
            Err(HashError::Mismatch { .. })
        ));
        let mut only_md5 = BTreeMap::new();
        only_md5.insert("md5".to_string(), "00".to_string());
        assert!(check_hashes("f", data, None, Some(&only_md5)).is_err());
    }
}
