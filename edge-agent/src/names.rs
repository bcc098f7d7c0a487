//! Untrusted names become newtypes before they become paths or keys.
//!
//! Every name that arrives from a release document, a registry or a message
//! is parsed into one of these types first; each rejects what could escape a
//! directory or alias another name (`..`, `/`, NUL, upper-case hex, empty).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A rejected name: which kind, the offending text, and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {text:?}: {rule}")]
pub struct NameError {
    pub kind: &'static str,
    pub text: String,
    pub rule: &'static str,
}

fn err(kind: &'static str, text: &str, rule: &'static str) -> NameError {
    NameError {
        kind,
        text: text.chars().take(200).collect(),
        rule,
    }
}

/// A content digest: `sha256:` and 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| err("digest", s, "must start with 'sha256:'"))?;
        if hex.len() != 64 {
            return Err(err("digest", s, "must have 64 hex digits"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err(
                "digest",
                s,
                "hex digits must be 0-9 or a-f (lower case)",
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The hex part, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A workload name: 1-63 of `[a-z0-9-]`, starting with a letter or digit
/// (a DNS label, so it can serve as hostname, container id and directory).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadName(String);

impl WorkloadName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > 63 {
            return Err(err("workload name", s, "must be 1 to 63 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err("workload name", s, "may only contain a-z, 0-9 and '-'"));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(err("workload name", s, "must not start or end with '-'"));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A TUF target path: relative, `/`-separated, no empty, `.` or `..`
/// components, no backslash or NUL, at most 512 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetPath(String);

impl TargetPath {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > 512 {
            return Err(err("target path", s, "must be 1 to 512 bytes"));
        }
        if s.contains(['\0', '\\']) {
            return Err(err("target path", s, "must not contain NUL or backslash"));
        }
        if s.starts_with('/') {
            return Err(err("target path", s, "must be relative"));
        }
        if s.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(err(
                "target path",
                s,
                "must not have empty, '.' or '..' components",
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(Digest);
string_newtype!(WorkloadName);
string_newtype!(TargetPath);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let good = format!("sha256:{}", "0a".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "0a".repeat(32));
        for bad in [
            "".to_string(),
            "0a".repeat(32),
            format!("sha512:{}", "0a".repeat(32)),
            format!("sha256:{}", "0A".repeat(32)),
            format!("sha256:{}/", "0a".repeat(32)),
            format!("sha256:{}", "0a".repeat(31)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workload_names() {
        for good in ["web", "a", "sensor-1", &"x".repeat(63)] {
            assert!(WorkloadName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "..",
            "a.b",
            "a\0",
            &"x".repeat(64),
        ] {
            assert!(WorkloadName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn target_paths() {
        for good in ["releases/fleet.json", "a", "agent/aarch64/berth-agent"] {
            assert!(TargetPath::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "./a",
            "a/",
            "a\\b",
            "a\0b",
        ] {
            assert!(TargetPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<WorkloadName>("\"ok-name\"").is_ok());
        let e = serde_json::from_str::<WorkloadName>("\"../etc\"").unwrap_err();
        assert!(e.to_string().contains("invalid workload name"), "{e}");
    }
}
