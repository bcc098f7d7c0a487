//! Untrusted names as newtypes: a content digest and an image reference.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Why a digest or a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("digest {0:?} is not `sha256:` followed by 64 lowercase hex digits")]
    Digest(String),
    #[error("image reference {input:?} is invalid: {why}; write HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]")]
    Reference { input: String, why: &'static str },
    #[error("image reference {0:?} has no digest; pin the manifest with @sha256:HEX")]
    NotPinned(String),
}

/// A sha256 content digest, `sha256:` and 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(h: Sha256) -> Self {
        Self {
            hex: hex::encode(h.finalize()),
        }
    }

    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, RefError> {
        let hex = s
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| RefError::Digest(s.chars().take(100).collect()))?;
        Ok(Self {
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]`. The host is mandatory: a device
/// never guesses a default registry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host` or `host:port`.
    pub registry: String,
    /// Path components, lowercase `[a-z0-9._-]`, joined by `/`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The pinned manifest digest, or an error saying to pin one.
    pub fn pinned(&self) -> Result<&Digest, RefError> {
        self.digest
            .as_ref()
            .ok_or_else(|| RefError::NotPinned(self.to_string()))
    }

    /// What to address a manifest by: the digest when pinned, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

fn bad(input: &str, why: &'static str) -> RefError {
    RefError::Reference {
        input: input.chars().take(200).collect(),
        why,
    }
}

impl FromStr for ImageRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, RefError> {
        if s.len() > 512 {
            return Err(bad(s, "longer than 512 bytes"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad(s, "no registry host"))?;
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad(
                s,
                "the registry host has characters outside [A-Za-z0-9.-:]",
            ));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (path, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad(s, "the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                s,
                "a repository component is empty, `.`/`..`, or not lowercase [a-z0-9._-]",
            ));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_accepts_only_lowercase_sha256() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.hex(), HEX);
        for bad in [
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha512:{HEX}"),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            format!("sha256:../{}", &HEX[3..]),
            String::new(),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn references_parse() {
        let r: ImageRef = format!("127.0.0.1:5000/team/app:v1@sha256:{HEX}")
            .parse()
            .unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.pinned().unwrap().hex(), HEX);
        assert_eq!(
            r.to_string(),
            format!("127.0.0.1:5000/team/app:v1@sha256:{HEX}")
        );
        let r: ImageRef = "registry.example/app".parse().unwrap();
        assert!(r.pinned().is_err());
        assert_eq!(r.manifest_reference(), "latest");
        let r: ImageRef = "reg.example:443/a/b:t".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("reg.example:443", "a/b")
        );
    }

    #[test]
    fn references_reject_traversal_and_junk() {
        for bad in [
            "app",
            "reg/../etc",
            "reg/a//b",
            "reg/App",
            "reg/a/./b",
            "reg/a:-x",
            "reg/a\0b",
            "/a",
            "reg/a@sha256:zz",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }
}
