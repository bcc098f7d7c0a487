//! The hash functions a measurement may use, and the measurement itself.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::MeasureError;

/// The hash function of a measurement, named by its prefix.
///
/// New measurements use [`Algorithm::Blake3`]; a measurement recorded with
/// [`Algorithm::Sha256`] (every one recorded before BLAKE3 was added) is
/// still checked, with SHA-256, so images unpacked by an older release keep
/// launching after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// SHA-256 (`sha256:`).
    Sha256,
    /// BLAKE3 with 32-byte output (`blake3:`): 4–5 times SHA-256's speed
    /// with x86-64's SHA extensions, and more where a CPU has none.
    #[default]
    Blake3,
}

impl Algorithm {
    /// The name used as the measurement's prefix and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// The digest of `data` in one call.
    pub(super) fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            Algorithm::Sha256 => Sha256::digest(data).into(),
            Algorithm::Blake3 => *blake3::hash(data).as_bytes(),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "blake3" => Ok(Algorithm::Blake3),
            _ => Err(format!("unknown algorithm '{s}': use blake3 or sha256")),
        }
    }
}

/// An incremental hash of one [`Algorithm`].
pub(super) enum Hasher {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub(super) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub(super) fn finalize(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// A rootfs measurement: `blake3:<64 hex>` or `sha256:<64 hex>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Measurement {
    algorithm: Algorithm,
    digest: [u8; 32],
}

impl Measurement {
    pub(super) fn new(algorithm: Algorithm, digest: [u8; 32]) -> Self {
        Self { algorithm, digest }
    }

    /// Parses `blake3:` or `sha256:` followed by 64 lower-case hex digits.
    pub fn parse(text: &str) -> Result<Self, MeasureError> {
        let bad = || MeasureError::BadDigest(text.to_string());
        let (name, hex_part) = text.trim().split_once(':').ok_or_else(bad)?;
        let algorithm: Algorithm = name.parse().map_err(|_| bad())?;
        if hex_part.len() != 64
            || hex_part
                .bytes()
                .any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut digest).map_err(|_| bad())?;
        Ok(Self { algorithm, digest })
    }

    /// The hash function this measurement was taken with; a tree is
    /// checked against it with the same one.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, hex::encode(self.digest))
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Measurement {
    type Err = MeasureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers: the digests of the empty input.
    #[test]
    fn algorithms_are_the_standard_functions() {
        assert_eq!(
            hex::encode(Algorithm::Sha256.digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(Algorithm::Blake3.digest(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        for alg in [Algorithm::Sha256, Algorithm::Blake3] {
            let mut h = Hasher::new(alg);
            h.update(b"berth");
            h.update(b" rootfs");
            assert_eq!(h.finalize(), alg.digest(b"berth rootfs"));
            assert_eq!(alg.name().parse::<Algorithm>(), Ok(alg));
        }
        assert!("md5".parse::<Algorithm>().is_err());
    }
}
