//! OCI and Docker v2 manifests, indexes and image configs: parsed once, checked,
//! and refused with a reason when they are ambiguous, foreign, or contradict
//! their media type. No I/O.

use serde::Deserialize;

use super::reference::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Largest manifest or index accepted (bytes).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config accepted (bytes).
pub const MAX_CONFIG: u64 = 8 << 20;

/// Why a manifest, index or config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {digest} is not valid JSON of an image manifest or index: {source}")]
    Json {
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("manifest {digest} has schemaVersion {found}; only schema 2 (OCI, Docker v2) is supported — republish the image with a current tool")]
    Schema { digest: Digest, found: u64 },
    #[error(
        "manifest {digest} has both `manifests` and `layers`: an ambiguous document is refused"
    )]
    Ambiguous { digest: Digest },
    #[error("manifest {digest} declares media type {declared:?} but {why}")]
    MediaType {
        digest: Digest,
        declared: String,
        why: String,
    },
    #[error("manifest {digest} is an index; pin one of its per-platform manifests in the signed release instead: {candidates}")]
    IndexNotPinned { digest: Digest, candidates: String },
    #[error("layer {layer} of manifest {digest} is a foreign layer ({why}); foreign layers are never fetched — rebuild the image with distributable layers")]
    Foreign {
        digest: Digest,
        layer: Digest,
        why: String,
    },
    #[error("layer {layer} of manifest {digest} has unsupported media type {media_type:?} (expected tar, tar+gzip or tar+zstd)")]
    LayerType {
        digest: Digest,
        layer: Digest,
        media_type: String,
    },
    #[error("config {config} of manifest {digest} is invalid: {why}")]
    Config {
        digest: Digest,
        config: Digest,
        why: String,
    },
}

/// A content descriptor: what to fetch and how big it may be.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer the unpacker will apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub compression: Compression,
}

/// A checked image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Layer>,
}

/// What the registry returned for a pinned digest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// Parses and checks a manifest fetched by `digest` (already verified to hash
/// to it). `content_type` is what the server said; an index is refused because
/// the device never picks a platform without a signed pin.
pub fn parse_manifest(
    digest: &Digest,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<Manifest, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        digest: digest.clone(),
        source,
    })?;
    let schema = raw.schema_version.unwrap_or(0);
    if schema != 2 {
        return Err(ManifestError::Schema {
            digest: digest.clone(),
            found: schema,
        });
    }
    if raw.manifests.is_some() && (raw.layers.is_some() || raw.config.is_some()) {
        return Err(ManifestError::Ambiguous {
            digest: digest.clone(),
        });
    }
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media_type = match (raw.media_type.as_deref(), content_type) {
        (Some(doc), Some(hdr)) if doc != hdr => {
            return Err(ManifestError::MediaType {
                digest: digest.clone(),
                declared: doc.to_string(),
                why: format!("the registry served it as {hdr:?}"),
            })
        }
        (Some(doc), _) => doc.to_string(),
        (None, Some(hdr)) => hdr.to_string(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    let mt_err = |why: &str| ManifestError::MediaType {
        digest: digest.clone(),
        declared: media_type.clone(),
        why: why.to_string(),
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let Some(list) = raw.manifests else {
                return Err(mt_err("it has no `manifests`"));
            };
            let candidates = list
                .iter()
                .map(|d| match &d.platform {
                    Some(p) => format!(
                        "{}/{}{} {}",
                        p.os,
                        p.architecture,
                        p.variant
                            .as_deref()
                            .map(|v| format!("/{v}"))
                            .unwrap_or_default(),
                        d.digest
                    ),
                    None => d.digest.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            Err(ManifestError::IndexNotPinned {
                digest: digest.clone(),
                candidates,
            })
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            if raw.manifests.is_some() {
                return Err(mt_err("it has `manifests`, which only an index has"));
            }
            let (Some(config), Some(layers)) = (raw.config, raw.layers) else {
                return Err(mt_err("it lacks `config` or `layers`"));
            };
            let docker = media_type == DOCKER_MANIFEST;
            let config_ok = if docker {
                config.media_type == DOCKER_CONFIG
            } else {
                config.media_type == OCI_CONFIG
            };
            if !config_ok {
                return Err(mt_err(&format!(
                    "its config has media type {:?}, which is not an image config of that format",
                    config.media_type
                )));
            }
            let layers = layers
                .into_iter()
                .map(|l| check_layer(digest, docker, l))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Manifest {
                digest: digest.clone(),
                media_type,
                config,
                layers,
            })
        }
        other => Err(ManifestError::MediaType {
            digest: digest.clone(),
            declared: other.to_string(),
            why: "that is not an OCI or Docker v2 manifest or index".to_string(),
        }),
    }
}

fn check_layer(digest: &Digest, docker: bool, l: Descriptor) -> Result<Layer, ManifestError> {
    let foreign = |why: String| ManifestError::Foreign {
        digest: digest.clone(),
        layer: l.digest.clone(),
        why,
    };
    if !l.urls.is_empty() {
        return Err(foreign(format!("it lists urls {:?}", l.urls)));
    }
    if l.media_type.contains("nondistributable") || l.media_type.contains(".foreign.") {
        return Err(foreign(format!("media type {:?}", l.media_type)));
    }
    let compression = match (docker, l.media_type.as_str()) {
        (false, "application/vnd.oci.image.layer.v1.tar") => Compression::None,
        (false, "application/vnd.oci.image.layer.v1.tar+gzip") => Compression::Gzip,
        (false, "application/vnd.oci.image.layer.v1.tar+zstd") => Compression::Zstd,
        (true, "application/vnd.docker.image.rootfs.diff.tar.gzip") => Compression::Gzip,
        (true, "application/vnd.docker.image.rootfs.diff.tar") => Compression::None,
        (true, "application/vnd.docker.image.rootfs.diff.tar.zstd") => Compression::Zstd,
        _ => {
            return Err(ManifestError::LayerType {
                digest: digest.clone(),
                layer: l.digest.clone(),
                media_type: l.media_type.clone(),
            })
        }
    };
    Ok(Layer {
        descriptor: l,
        compression,
    })
}

/// The parts of an image config the device relies on, checked against the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// Parses the config of `manifest` and checks it describes exactly its layers.
pub fn parse_config(manifest: &Manifest, bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
    let err = |why: String| ManifestError::Config {
        digest: manifest.digest.clone(),
        config: manifest.config.digest.clone(),
        why,
    };
    let c: ImageConfig = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    if c.rootfs.kind != "layers" {
        return Err(err(format!(
            "rootfs.type is {:?}, not \"layers\"",
            c.rootfs.kind
        )));
    }
    if c.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(err(format!(
            "it lists {} diff_ids for {} layers",
            c.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn manifest_json(layer_type: &str, extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":10}},
            "layers":[{{"mediaType":"{layer_type}","digest":"{}","size":20{extra}}}]}}"#,
            d(1),
            d(2)
        )
    }

    fn parse(ct: Option<&str>, s: &str) -> Result<Manifest, ManifestError> {
        parse_manifest(&Digest::of(s.as_bytes()), ct, s.as_bytes())
    }

    #[test]
    fn oci_manifest_parses_with_every_compression() {
        for (t, c) in [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
        ] {
            let m = parse(Some(OCI_MANIFEST), &manifest_json(t, "")).unwrap();
            assert_eq!(m.layers[0].compression, c);
            assert_eq!(m.config.size, 10);
        }
    }

    #[test]
    fn docker_manifest_parses() {
        let s = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":10}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":20}}]}}"#,
            d(1),
            d(2)
        );
        let m = parse(Some(DOCKER_MANIFEST), &s).unwrap();
        assert_eq!(m.layers[0].compression, Compression::Gzip);
    }

    #[test]
    fn both_manifests_and_layers_is_refused() {
        let s = manifest_json("application/vnd.oci.image.layer.v1.tar", "").replacen(
            "\"layers\"",
            "\"manifests\":[],\"layers\"",
            1,
        );
        let e = parse(None, &s).unwrap_err();
        assert!(matches!(e, ManifestError::Ambiguous { .. }), "{e}");
    }

    #[test]
    fn media_type_contradicting_content_is_refused() {
        let s = manifest_json("application/vnd.oci.image.layer.v1.tar", "");
        let e = parse(Some(DOCKER_MANIFEST), &s).unwrap_err();
        assert!(matches!(e, ManifestError::MediaType { .. }), "{e}");
        let s = s.replace(OCI_MANIFEST, OCI_INDEX);
        let e = parse(None, &s).unwrap_err();
        assert!(e.to_string().contains("no `manifests`"), "{e}");
        let s = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","manifests":[]}}"#);
        let e = parse(None, &s).unwrap_err();
        assert!(e.to_string().contains("only an index"), "{e}");
        let s = manifest_json("application/vnd.oci.image.layer.v1.tar", "")
            .replace(OCI_CONFIG, DOCKER_CONFIG);
        assert!(parse(None, &s).is_err());
    }

    #[test]
    fn foreign_layers_are_refused() {
        let s = manifest_json(
            "application/vnd.oci.image.layer.v1.tar",
            r#","urls":["https://example.invalid/l"]"#,
        );
        let e = parse(None, &s).unwrap_err();
        assert!(matches!(e, ManifestError::Foreign { .. }), "{e}");
        let s = manifest_json(
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "",
        );
        assert!(matches!(
            parse(None, &s).unwrap_err(),
            ManifestError::Foreign { .. }
        ));
        let s = manifest_json("application/x-unknown", "");
        assert!(matches!(
            parse(None, &s).unwrap_err(),
            ManifestError::LayerType { .. }
        ));
    }

    #[test]
    fn index_without_pin_is_refused_with_candidates() {
        let s = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,
              "platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
            d(3)
        );
        let e = parse(Some(OCI_INDEX), &s).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("linux/arm64/v8") && msg.contains(&d(3)),
            "{msg}"
        );
    }

    #[test]
    fn schema1_and_junk_are_refused() {
        assert!(matches!(
            parse(None, r#"{"schemaVersion":1}"#).unwrap_err(),
            ManifestError::Schema { .. }
        ));
        assert!(matches!(
            parse(None, "not json").unwrap_err(),
            ManifestError::Json { .. }
        ));
        let s = manifest_json("application/vnd.oci.image.layer.v1.tar", "")
            .replace(&d(2), "sha256:UPPER");
        assert!(parse(None, &s).is_err());
    }

    #[test]
    fn config_must_match_layers() {
        let m = parse(
            None,
            &manifest_json("application/vnd.oci.image.layer.v1.tar", ""),
        )
        .unwrap();
        let ok = format!(
            r#"{{"architecture":"arm64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d(9)
        );
        assert_eq!(
            parse_config(&m, ok.as_bytes()).unwrap().architecture,
            "arm64"
        );
        let two = ok.replace(
            &format!("\"{}\"", d(9)),
            &format!("\"{}\",\"{}\"", d(9), d(8)),
        );
        assert!(parse_config(&m, two.as_bytes()).is_err());
        let kind = ok.replace("\"layers\"", "\"other\"");
        assert!(parse_config(&m, kind.as_bytes()).is_err());
    }
}
