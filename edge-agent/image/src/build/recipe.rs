//! The recipe: what an image runs, for which architectures, and any owner or
//! mode that differs from the normalized defaults.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::BuildError;

/// `recipe.toml` beside the image's files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The reference name written into `index.json` for the multi-arch index;
    /// each platform's manifest is named `<tag>-<arch>`.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Debian/OCI architecture names: `amd64`, `arm64`, `arm` (v7).
    pub architectures: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Container paths meant to be volumes (`/data`).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Exposed ports (`8080/tcp`).
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Timestamp written as every entry's mtime and the image's creation time,
    /// in seconds since the epoch (default 0: builds are reproducible).
    #[serde(default)]
    pub epoch: u64,
    /// Owner and mode overrides, by path relative to the root.
    #[serde(default, rename = "path")]
    pub paths: Vec<PathRule>,
}

fn default_tag() -> String {
    "latest".to_string()
}

/// `[[path]]`: the owner and/or mode of one entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    pub path: String,
    /// Octal, e.g. `"0750"`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `uid:gid`.
    #[serde(default)]
    pub owner: Option<String>,
}

/// A path rule parsed: mode bits and owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Self, BuildError> {
        let text = std::fs::read_to_string(path).map_err(|source| BuildError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let r: Recipe = toml::from_str(&text).map_err(|e| BuildError::Recipe {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        r.check().map_err(|reason| BuildError::Recipe {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(r)
    }

    fn check(&self) -> Result<(), String> {
        if self.architectures.is_empty() {
            return Err("'architectures' is empty: list at least one (amd64, arm64)".into());
        }
        for a in &self.architectures {
            platform(a)?;
        }
        let valid_tag = !self.tag.is_empty()
            && self.tag.len() <= 128
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid_tag {
            return Err(format!(
                "tag {:?} must be 1-128 of [A-Za-z0-9._-]",
                self.tag
            ));
        }
        for e in &self.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(format!("env entry {e:?} must be NAME=VALUE"));
            }
        }
        for v in &self.volumes {
            if !v.starts_with('/') {
                return Err(format!("volume {v:?} must be an absolute container path"));
            }
        }
        for p in &self.paths {
            self.meta_of(p)?;
        }
        Ok(())
    }

    /// The parsed overrides, keyed by the path as written in the layer.
    pub fn overrides(&self) -> Result<BTreeMap<String, Meta>, String> {
        self.paths
            .iter()
            .map(|p| Ok((p.path.trim_matches('/').to_string(), self.meta_of(p)?)))
            .collect()
    }

    fn meta_of(&self, p: &PathRule) -> Result<Meta, String> {
        let mode = p
            .mode
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("path {:?}: mode {m:?} is not octal 0000-7777", p.path))
            })
            .transpose()?;
        let owner = p
            .owner
            .as_deref()
            .map(|o| {
                o.split_once(':')
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                    .ok_or_else(|| format!("path {:?}: owner {o:?} is not uid:gid", p.path))
            })
            .transpose()?;
        Ok(Meta { mode, owner })
    }
}

/// The OCI platform of a Debian-style architecture name: (architecture, variant).
pub fn platform(arch: &str) -> Result<(&'static str, Option<&'static str>), String> {
    Ok(match arch {
        "amd64" => ("amd64", None),
        "arm64" => ("arm64", Some("v8")),
        "arm" | "armhf" => ("arm", Some("v7")),
        other => {
            return Err(format!(
                "architecture {other:?} is not supported: use amd64, arm64 or arm"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let r: Recipe = toml::from_str(
            r#"
            architectures = ["amd64", "arm64"]
            entrypoint = ["/app"]
            volumes = ["/data"]
            [[path]]
            path = "/data"
            mode = "0750"
            owner = "1000:1000"
            "#,
        )
        .unwrap();
        r.check().unwrap();
        let o = r.overrides().unwrap();
        assert_eq!(
            o["data"],
            Meta {
                mode: Some(0o750),
                owner: Some((1000, 1000))
            }
        );
        let bad: Recipe = toml::from_str("architectures = [\"sparc\"]").unwrap();
        assert!(bad.check().unwrap_err().contains("sparc"));
        assert!(toml::from_str::<Recipe>("architectures = []\nbogus = 1").is_err());
    }
}
