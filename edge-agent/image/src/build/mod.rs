//! `berth image build`: a directory plus a recipe into an OCI image layout,
//! reproducibly and for several architectures.
//!
//! # Input
//!
//! ```text
//! DIR/recipe.toml        entrypoint, cmd, env, user, workdir, volumes, ports,
//!                        architectures, owner/mode overrides ([`recipe::Recipe`])
//! DIR/rootfs/            files common to every architecture (optional)
//! DIR/rootfs-<arch>/     files of one architecture, e.g. its binaries (optional)
//! ```
//!
//! Each architecture's image has the common layer (when `rootfs/` exists)
//! followed by its own layer (when `rootfs-<arch>/` exists): the common layer
//! has one digest shared by all architectures and is stored once.
//!
//! # Output
//!
//! An OCI image layout whose `index.json` names the multi-arch image index
//! `<tag>` and each platform's manifest `<tag>-<arch>`. The same input always
//! gives the same bytes and so the same digests ([`layer`] lists what is
//! normalized); the configuration's `created` time is the recipe's epoch.

pub mod layer;
pub mod recipe;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::layout::{
    Descriptor, Digest, Index, Manifest, Platform, ANNOTATION_REF, MT_CONFIG, MT_INDEX,
    MT_LAYER_GZIP, MT_MANIFEST,
};
use recipe::Recipe;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("recipe {path} is invalid: {reason}")]
    Recipe { path: PathBuf, reason: String },
    #[error("{path} is not a regular file, directory or symlink: images cannot carry devices, fifos or sockets; remove it")]
    Unsupported { path: PathBuf },
    #[error("{path} changed size while it was read: stop whatever writes the build directory and build again")]
    Changed { path: PathBuf },
    #[error("{dir} has neither rootfs/ nor rootfs-{arch}/: the {arch} image would be empty")]
    NoLayers { dir: PathBuf, arch: String },
    #[error("{path} already exists: choose a new output directory or remove it")]
    Exists { path: PathBuf },
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub out: PathBuf,
    /// The multi-arch image index (what `<tag>` names).
    pub index: Descriptor,
    /// One manifest per architecture, in recipe order.
    pub manifests: Vec<Descriptor>,
}

/// Builds the image described by `recipe_path` (default `DIR/recipe.toml`)
/// from `dir` into the new layout directory `out`.
pub fn build(dir: &Path, recipe_path: Option<&Path>, out: &Path) -> Result<Built, BuildError> {
    let default_recipe = dir.join("recipe.toml");
    let recipe = Recipe::load(recipe_path.unwrap_or(&default_recipe))?;
    if fs::symlink_metadata(out).is_ok() {
        return Err(BuildError::Exists {
            path: out.to_path_buf(),
        });
    }
    let mut staged = out.as_os_str().to_owned();
    staged.push(".building");
    let staging = PathBuf::from(staged);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    match fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(&staging)(e)),
        _ => {}
    }
    let res = write_layout(dir, &recipe, &staging);
    match res {
        Ok(mut built) => {
            fs::rename(&staging, out).map_err(io(out))?;
            built.out = out.to_path_buf();
            Ok(built)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn write_layout(dir: &Path, recipe: &Recipe, out: &Path) -> Result<Built, BuildError> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|source| BuildError::Io {
        path: blobs.clone(),
        source,
    })?;
    let overrides = recipe.overrides().map_err(|reason| BuildError::Recipe {
        path: dir.join("recipe.toml"),
        reason,
    })?;
    let common_dir = dir.join("rootfs");
    let common = if common_dir.is_dir() {
        Some(layer::write_layer(
            &common_dir,
            &overrides,
            recipe.epoch,
            &blobs,
        )?)
    } else {
        None
    };
    let mut manifests = Vec::new();
    for arch in &recipe.architectures {
        let mut layers: Vec<layer::Written> = common.iter().cloned().collect();
        let own = dir.join(format!("rootfs-{arch}"));
        if own.is_dir() {
            layers.push(layer::write_layer(&own, &overrides, recipe.epoch, &blobs)?);
        }
        if layers.is_empty() {
            return Err(BuildError::NoLayers {
                dir: dir.to_path_buf(),
                arch: arch.clone(),
            });
        }
        let (architecture, variant) =
            recipe::platform(arch).map_err(|reason| BuildError::Recipe {
                path: dir.join("recipe.toml"),
                reason,
            })?;
        let config = config_json(recipe, architecture, variant, &layers);
        let config_desc = put(&blobs, MT_CONFIG, &config)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MT_MANIFEST.to_string()),
            config: config_desc,
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: MT_LAYER_GZIP.to_string(),
                    digest: l.digest.clone(),
                    size: l.size,
                    platform: None,
                    urls: Vec::new(),
                    annotations: BTreeMap::new(),
                })
                .collect(),
            annotations: BTreeMap::new(),
        };
        let mut desc = put(&blobs, MT_MANIFEST, &to_json(&manifest))?;
        desc.platform = Some(Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: variant.map(str::to_string),
        });
        manifests.push(desc);
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(MT_INDEX.to_string()),
        manifests: manifests.clone(),
        annotations: BTreeMap::new(),
    };
    let mut index_desc = put(&blobs, MT_INDEX, &to_json(&index))?;
    index_desc
        .annotations
        .insert(ANNOTATION_REF.to_string(), recipe.tag.clone());
    let mut top = vec![index_desc.clone()];
    for (m, arch) in manifests.iter().zip(&recipe.architectures) {
        let mut named = m.clone();
        named
            .annotations
            .insert(ANNOTATION_REF.to_string(), format!("{}-{arch}", recipe.tag));
        top.push(named);
    }
    let top = Index {
        schema_version: 2,
        media_type: Some(MT_INDEX.to_string()),
        manifests: top,
        annotations: BTreeMap::new(),
    };
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        fs::write(&p, bytes).map_err(|source| BuildError::Io { path: p, source })
    };
    write("index.json", &to_json(&top))?;
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Built {
        out: out.to_path_buf(),
        index: index_desc,
        manifests,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("image documents always serialize")
}

/// Writes a document blob and returns its descriptor.
fn put(blobs: &Path, media_type: &str, bytes: &[u8]) -> Result<Descriptor, BuildError> {
    let digest = Digest::of(bytes);
    let p = blobs.join(digest.hex());
    fs::write(&p, bytes).map_err(|source| BuildError::Io { path: p, source })?;
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest,
        size: bytes.len() as u64,
        platform: None,
        urls: Vec::new(),
        annotations: BTreeMap::new(),
    })
}

fn config_json(
    r: &Recipe,
    architecture: &str,
    variant: Option<&str>,
    layers: &[layer::Written],
) -> Vec<u8> {
    let created = rfc3339(r.epoch);
    let set = |items: &[String]| -> serde_json::Map<String, serde_json::Value> {
        items.iter().map(|i| (i.clone(), json!({}))).collect()
    };
    let mut config = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        config.insert(k.to_string(), v);
    };
    if !r.entrypoint.is_empty() {
        put("Entrypoint", json!(r.entrypoint));
    }
    if !r.cmd.is_empty() {
        put("Cmd", json!(r.cmd));
    }
    if !r.env.is_empty() {
        put("Env", json!(r.env));
    }
    if let Some(u) = &r.user {
        put("User", json!(u));
    }
    if let Some(w) = &r.workdir {
        put("WorkingDir", json!(w));
    }
    if !r.volumes.is_empty() {
        put("Volumes", json!(set(&r.volumes)));
    }
    if !r.ports.is_empty() {
        put("ExposedPorts", json!(set(&r.ports)));
    }
    if !r.labels.is_empty() {
        put("Labels", json!(r.labels));
    }
    let mut doc = json!({
        "created": created,
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|_| json!({"created": created, "created_by": "berth image build"})).collect::<Vec<_>>(),
    });
    if let Some(v) = variant {
        doc["variant"] = json!(v);
    }
    to_json(&doc)
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for any u64 day count in range.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn same_input_same_digest() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("rootfs/bin")).unwrap();
        fs::create_dir_all(src.join("rootfs-arm64")).unwrap();
        fs::write(src.join("rootfs/bin/app"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("app", src.join("rootfs/bin/alias")).unwrap();
        fs::write(src.join("rootfs-arm64/arch"), b"arm64").unwrap();
        fs::write(
            src.join("recipe.toml"),
            "architectures = [\"amd64\", \"arm64\"]\nentrypoint = [\"/bin/app\"]\n",
        )
        .unwrap();
        let a = build(&src, None, &d.path().join("a")).unwrap();
        fs::write(src.join("rootfs/bin/app"), b"#!/bin/sh\n").unwrap();
        let b = build(&src, None, &d.path().join("b")).unwrap();
        assert_eq!(a.index.digest, b.index.digest);
        assert_eq!(a.manifests.len(), 2);
        assert_ne!(a.manifests[0].digest, a.manifests[1].digest);
        assert!(matches!(
            build(&src, None, &d.path().join("a")),
            Err(BuildError::Exists { .. })
        ));
        let lay = crate::layout::Layout::open(&d.path().join("a")).unwrap();
        assert_eq!(lay.manifests().unwrap().len(), 2);
    }
}
