//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/<hex>`)
//! and the documents in them: indexes, manifests and image configurations.
//!
//! Documents are parsed into small typed structs with ordered maps, so that
//! what Berth writes serializes the same way every time. Every blob read
//! through [`Layout::read_blob`] is checked against its descriptor's size and
//! digest before it is parsed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ANNOTATION_REF: &str = "org.opencontainers.image.ref.name";

/// Largest JSON document (index, manifest, configuration) read from a layout.
pub const MAX_DOCUMENT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not an OCI image layout (no 'oci-layout' file with imageLayoutVersion 1.0.0)"
    )]
    NotLayout { path: PathBuf },
    #[error("invalid digest {0:?}: expected 'sha256:' and 64 lower-case hex digits")]
    BadDigest(String),
    #[error("{what} {digest} is {size} bytes, over the {limit}-byte limit for documents")]
    TooLarge {
        what: String,
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("blob {digest} in {layout} does not match its descriptor ({reason}): the layout is corrupt; rebuild or fetch it again")]
    Mismatch {
        layout: PathBuf,
        digest: Digest,
        reason: String,
    },
    #[error("{what} {digest} is not valid JSON of its kind: {reason}")]
    Parse {
        what: String,
        digest: String,
        reason: String,
    },
    #[error("{layout} holds no image manifest")]
    Empty { layout: PathBuf },
    #[error("{layout} holds {count} image manifests ({list}): choose one with --digest")]
    Ambiguous {
        layout: PathBuf,
        count: usize,
        list: String,
    },
    #[error("manifest {digest} is not in {layout} (its index lists: {list})")]
    NoSuchManifest {
        layout: PathBuf,
        digest: Digest,
        list: String,
    },
    #[error("document {digest} has media type {media_type}, not an image manifest or index")]
    WrongType { digest: Digest, media_type: String },
}

/// A content digest: `sha256:` and 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, LayoutError> {
        let ok = s.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(LayoutError::BadDigest(s.chars().take(100).collect()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(bytes).into())
    }

    pub fn from_sha256(raw: [u8; 32]) -> Self {
        Self(format!("sha256:{}", hex::encode(raw)))
    }

    /// The hex part: a safe file name.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = LayoutError;
    fn try_from(s: String) -> Result<Self, LayoutError> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The part of an image configuration unpacking needs: the layer diff ids.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigRootfs {
    pub rootfs: RootfsDiffs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootfsDiffs {
    pub diff_ids: Vec<Digest>,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// Opens `dir`, checking its `oci-layout` marker.
    pub fn open(dir: &Path) -> Result<Self, LayoutError> {
        let marker = fs::read(dir.join("oci-layout")).map_err(|_| LayoutError::NotLayout {
            path: dir.to_path_buf(),
        })?;
        let v: serde_json::Value =
            serde_json::from_slice(&marker).map_err(|_| LayoutError::NotLayout {
                path: dir.to_path_buf(),
            })?;
        if v["imageLayoutVersion"] != "1.0.0" {
            return Err(LayoutError::NotLayout {
                path: dir.to_path_buf(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Opens a blob for streaming; the caller checks size and digest as it reads.
    pub fn open_blob(&self, d: &Digest) -> Result<File, LayoutError> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|source| LayoutError::Io { path, source })
    }

    /// Reads a small document blob, checked against its descriptor.
    pub fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, LayoutError> {
        if desc.size > MAX_DOCUMENT {
            return Err(LayoutError::TooLarge {
                what: what.to_string(),
                digest: desc.digest.clone(),
                size: desc.size,
                limit: MAX_DOCUMENT,
            });
        }
        let path = self.blob_path(&desc.digest);
        let mut bytes = Vec::new();
        self.open_blob(&desc.digest)?
            .take(desc.size + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| LayoutError::Io { path, source })?;
        let mismatch = |reason: String| LayoutError::Mismatch {
            layout: self.dir.clone(),
            digest: desc.digest.clone(),
            reason,
        };
        if bytes.len() as u64 != desc.size {
            return Err(mismatch(format!(
                "{} bytes, the descriptor says {}",
                bytes.len(),
                desc.size
            )));
        }
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(mismatch(format!("its content hashes to {actual}")));
        }
        Ok(bytes)
    }

    pub fn index(&self) -> Result<Index, LayoutError> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(|source| LayoutError::Io { path, source })?;
        parse(&bytes, "index", "index.json")
    }

    /// Every image manifest descriptor the layout's index reaches (through
    /// nested indexes too), first occurrence of each digest kept.
    pub fn manifests(&self) -> Result<Vec<Descriptor>, LayoutError> {
        let mut out: Vec<Descriptor> = Vec::new();
        let mut todo = self.index()?.manifests;
        let mut seen_indexes = 0;
        while let Some(d) = todo.pop() {
            match d.media_type.as_str() {
                MT_MANIFEST | MT_DOCKER_MANIFEST if !out.iter().any(|o| o.digest == d.digest) => {
                    out.push(d);
                }
                MT_INDEX | MT_DOCKER_LIST => {
                    seen_indexes += 1;
                    if seen_indexes > 64 {
                        continue;
                    }
                    let bytes = self.read_blob(&d, "index")?;
                    let nested: Index = parse(&bytes, "index", d.digest.as_str())?;
                    todo.extend(nested.manifests);
                }
                _ => {}
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// The manifest `digest`, or the only one in the layout.
    pub fn manifest(&self, digest: Option<&Digest>) -> Result<(Descriptor, Manifest), LayoutError> {
        let all = self.manifests()?;
        let list = || {
            all.iter()
                .map(|d| match &d.platform {
                    Some(p) => format!("{} {}/{}", d.digest, p.os, p.architecture),
                    None => d.digest.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let desc = match digest {
            Some(want) => all
                .iter()
                .find(|d| &d.digest == want)
                .cloned()
                .ok_or_else(|| LayoutError::NoSuchManifest {
                    layout: self.dir.clone(),
                    digest: want.clone(),
                    list: list(),
                })?,
            None => match all.len() {
                0 => {
                    return Err(LayoutError::Empty {
                        layout: self.dir.clone(),
                    })
                }
                1 => all[0].clone(),
                n => {
                    return Err(LayoutError::Ambiguous {
                        layout: self.dir.clone(),
                        count: n,
                        list: list(),
                    })
                }
            },
        };
        let bytes = self.read_blob(&desc, "manifest")?;
        let m: Manifest = parse(&bytes, "manifest", desc.digest.as_str())?;
        if let Some(mt) = &m.media_type {
            if mt != MT_MANIFEST && mt != MT_DOCKER_MANIFEST {
                return Err(LayoutError::WrongType {
                    digest: desc.digest.clone(),
                    media_type: mt.clone(),
                });
            }
        }
        Ok((desc, m))
    }
}

pub fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    digest: &str,
) -> Result<T, LayoutError> {
    serde_json::from_slice(bytes).map_err(|e| LayoutError::Parse {
        what: what.to_string(),
        digest: digest.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_strict() {
        let good = format!("sha256:{}", "0a".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().hex(), &good[7..]);
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &good.to_uppercase(),
            &format!("{good}/.."),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Digest>("\"sha256:../../etc\"").is_err());
    }
}
