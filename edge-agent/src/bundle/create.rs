//! Creating a bundle on the operator's side: verify the published repository
//! the way a device will, collect exactly the blobs the release needs from
//! OCI image layouts or blob stores, and write the archive under a temporary
//! name that is renamed into place only when complete.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use berth_image::registry::limits::Verifier;
use berth_image::registry::manifest::{parse_config, parse_manifest, MAX_CONFIG, MAX_MANIFEST};
use berth_image::registry::Digest;
use berth_trust::updater::{Config, Time};
use berth_trust::{DirTransport, StateStore, Updater};
use serde_json::json;

use super::format::{self, BundleManifest, ImageEntry, TarWriter};
use super::stage::{Recording, Staged, TempDir};
use super::{io_err, repo_hint, BundleError, Summary, Versions};
use crate::release::{from_json, Arch};

/// What to pack.
#[derive(Debug, Clone)]
pub struct CreateOptions<'a> {
    /// A repository directory as `berth repo publish` writes it (`metadata/`, `targets/`).
    pub repo: &'a Path,
    /// The release target, e.g. `releases/pumps.json`.
    pub target: &'a str,
    /// OCI image layouts or blob store directories (each with `blobs/sha256/`),
    /// searched in order for every blob.
    pub sources: &'a [PathBuf],
    /// Only these architectures; empty: every architecture in the release.
    pub arches: &'a [Arch],
    /// The bundle file to write.
    pub out: &'a Path,
    /// The clock the repository's metadata must be valid at.
    pub now: Time,
}

/// A blob to pack and where it comes from.
struct Blob {
    digest: Digest,
    size: u64,
    path: PathBuf,
    image: String,
    what: &'static str,
}

/// Writes the bundle for `o.target` to `o.out`; returns what it holds.
pub fn create(o: &CreateOptions<'_>) -> Result<Summary, BundleError> {
    let repo_err = |why: String| BundleError::Repo {
        repo: o.repo.to_path_buf(),
        why,
    };
    let meta_dir = o.repo.join("metadata");
    let targets_dir = o.repo.join("targets");
    let root1 = fs::read(meta_dir.join("1.root.json")).map_err(|e| {
        repo_err(format!(
            "cannot read metadata/1.root.json ({e}); pass the directory `berth repo init` and `berth repo publish` wrote"
        ))
    })?;
    for s in o.sources {
        if !s.join("blobs/sha256").is_dir() {
            return Err(BundleError::NotSource { dir: s.clone() });
        }
    }

    // Verify the repository as a device will, recording every file it reads.
    let staged = Staged::new(None);
    staged
        .save("root", &root1)
        .map_err(|e| repo_err(e.to_string()))?;
    let meta = Recording::new(DirTransport::new(&meta_dir));
    let targets = Recording::new(DirTransport::new(&targets_dir));
    let tmp_parent = std::env::temp_dir();
    let tmp = TempDir::new(&tmp_parent, "berth-bundle-create")
        .map_err(io_err("create a directory in", &tmp_parent))?;
    let trust_err = |source| BundleError::RepoTrust {
        repo: o.repo.to_path_buf(),
        target: o.target.to_string(),
        hint: repo_hint(&source),
        source: Box::new(source),
    };
    let mut up = Updater::new(&staged, &meta, Some(&targets), Config::default(), o.now)
        .map_err(trust_err)?;
    up.refresh().map_err(trust_err)?;
    let path = up.download(o.target, tmp.path()).map_err(trust_err)?;
    let document = fs::read(&path).map_err(io_err("read", &path))?;
    let versions = Versions::of(up.trusted());
    let source_name = format!("{} in {}", o.target, o.repo.display());
    let release =
        from_json(&source_name, &document).map_err(|source| BundleError::RepoRelease {
            repo: o.repo.to_path_buf(),
            source,
        })?;

    let all: BTreeSet<Arch> = release
        .workloads
        .iter()
        .flat_map(|w| w.image.digests.keys().copied())
        .collect();
    let arches: Vec<Arch> = if o.arches.is_empty() {
        all.iter().copied().collect()
    } else {
        let wanted: BTreeSet<Arch> = o.arches.iter().copied().collect();
        if let Some(a) = wanted.iter().find(|a| !all.contains(a)) {
            return Err(repo_err(format!(
                "the release {} has no image for {a} (it has: {}); choose other --arch values",
                o.target,
                all.iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        wanted.into_iter().collect()
    };

    // Collect the blobs: manifests, then configs, then layers, each once.
    let mut manifests: Vec<Blob> = Vec::new();
    let mut configs: Vec<Blob> = Vec::new();
    let mut layers: Vec<Blob> = Vec::new();
    let mut seen: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut images = Vec::new();
    let mut index = Vec::new();
    for w in &release.workloads {
        for arch in &arches {
            let Some(d) = w.image.digests.get(arch) else {
                continue;
            };
            let image = format!(
                "{}/{} (workload {}, {arch})",
                w.image.registry, w.image.repository, w.name
            );
            let d: Digest = d.as_str().parse().map_err(|e| {
                repo_err(format!(
                    "release {}: {e}; fix and publish it again",
                    o.target
                ))
            })?;
            let (mblob, mbytes) = small(o.sources, &image, "manifest", &d, MAX_MANIFEST)?;
            let bad = |why: String| BundleError::BadSource {
                image: image.clone(),
                what: "manifest",
                digest: d.to_string(),
                path: mblob.path.clone(),
                why,
            };
            let m = parse_manifest(&d, None, &mbytes).map_err(|e| bad(e.to_string()))?;
            if m.config.size > MAX_CONFIG {
                return Err(bad(format!(
                    "its config declares {} bytes, over the {MAX_CONFIG}-byte limit",
                    m.config.size
                )));
            }
            let (cblob, cbytes) = small(o.sources, &image, "config", &m.config.digest, MAX_CONFIG)?;
            let config = parse_config(&m, &cbytes).map_err(|e| bad(e.to_string()))?;
            if config.architecture != arch.as_str() {
                return Err(bad(format!(
                    "the release pins it for {arch} but its config is for {}; fix the release and publish it again",
                    config.architecture
                )));
            }
            let mut own: BTreeMap<Digest, u64> = BTreeMap::new();
            own.insert(d.clone(), mblob.size);
            own.insert(cblob.digest.clone(), cblob.size);
            index.push(json!({
                "mediaType": m.media_type,
                "digest": d.to_string(),
                "size": mblob.size,
                "platform": { "architecture": arch.as_str(), "os": config.os },
                "annotations": { berth_image::layout::ANNOTATION_REF: format!("{}-{arch}", w.name) },
            }));
            for b in [mblob, cblob] {
                let list = if b.what == "manifest" {
                    &mut manifests
                } else {
                    &mut configs
                };
                if seen.insert(b.digest.clone(), b.size).is_none() {
                    list.push(b);
                }
            }
            for l in &m.layers {
                let desc = &l.descriptor;
                own.insert(desc.digest.clone(), desc.size);
                if seen.contains_key(&desc.digest) {
                    continue;
                }
                let b = find(o.sources, &image, "layer", &desc.digest, desc.size)?;
                seen.insert(desc.digest.clone(), desc.size);
                layers.push(b);
            }
            images.push(ImageEntry {
                workload: w.name.to_string(),
                registry: w.image.registry.clone(),
                repository: w.image.repository.clone(),
                arch: *arch,
                manifest: d.to_string(),
                blobs: own.len() as u64,
                bytes: own.values().sum(),
            });
        }
    }
    let mut listed = BTreeSet::new();
    index.retain(|d| listed.insert(d["digest"].as_str().unwrap_or_default().to_string()));

    let manifest = BundleManifest {
        format: format::FORMAT,
        fleet: release.fleet.clone(),
        target: o.target.to_string(),
        generation: release.generation,
        architectures: arches,
        images,
        blobs: seen.len() as u64,
        bytes: seen.values().sum(),
    };

    // The metadata: every root version, then what the client fetched.
    let mut metadata: Vec<(String, Vec<u8>)> = Vec::new();
    for v in 1..=versions.root {
        let name = format!("{v}.root.json");
        let p = meta_dir.join(&name);
        metadata.push((name, fs::read(&p).map_err(io_err("read", &p))?));
    }
    let fetched = meta.fetched.into_inner();
    let mut rest: Vec<(String, Vec<u8>)> = fetched
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".root.json"))
        .collect();
    rest.sort_by_key(|(n, _)| (n != "timestamp.json", n.clone()));
    metadata.extend(rest);
    let target_files = targets.fetched.into_inner();

    let blobs: Vec<Blob> = manifests.into_iter().chain(configs).chain(layers).collect();
    let file_bytes = write(o, &manifest, &metadata, &target_files, &index, &blobs)?;
    tracing::info!(bundle = %o.out.display(), target = o.target, blobs = manifest.blobs, "bundle created");
    Ok(Summary {
        file: o.out.to_path_buf(),
        manifest,
        versions,
        file_bytes,
    })
}

/// The first source that holds `d`.
fn locate(
    sources: &[PathBuf],
    image: &str,
    what: &'static str,
    d: &Digest,
) -> Result<PathBuf, BundleError> {
    sources
        .iter()
        .map(|s| s.join("blobs/sha256").join(d.hex()))
        .find(|p| p.is_file())
        .ok_or_else(|| BundleError::MissingSource {
            image: image.to_string(),
            what: what.to_string(),
            digest: d.to_string(),
            searched: sources
                .iter()
                .map(|s| s.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A blob of the declared `size` (its content is verified while it is packed).
fn find(
    sources: &[PathBuf],
    image: &str,
    what: &'static str,
    d: &Digest,
    size: u64,
) -> Result<Blob, BundleError> {
    let path = locate(sources, image, what, d)?;
    let len = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
    if len != size {
        return Err(BundleError::BadSource {
            image: image.to_string(),
            what,
            digest: d.to_string(),
            path,
            why: format!("{len} bytes, the manifest declares {size}"),
        });
    }
    Ok(Blob {
        digest: d.clone(),
        size,
        path,
        image: image.to_string(),
        what,
    })
}

/// A manifest or config: read whole and verified now (it is parsed).
fn small(
    sources: &[PathBuf],
    image: &str,
    what: &'static str,
    d: &Digest,
    cap: u64,
) -> Result<(Blob, Vec<u8>), BundleError> {
    let path = locate(sources, image, what, d)?;
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(cap + 1).read_to_end(&mut bytes))
        .map_err(io_err("read", &path))?;
    let bad = |why: String| BundleError::BadSource {
        image: image.to_string(),
        what,
        digest: d.to_string(),
        path: path.clone(),
        why,
    };
    if bytes.len() as u64 > cap {
        return Err(bad(format!("over the {cap}-byte limit")));
    }
    let actual = Digest::of(&bytes);
    if &actual != d {
        return Err(bad(format!("its content hashes to {actual}")));
    }
    let blob = Blob {
        digest: d.clone(),
        size: bytes.len() as u64,
        path: path.clone(),
        image: image.to_string(),
        what,
    };
    Ok((blob, bytes))
}

/// Writes the archive to a temporary name beside `o.out`, then renames it.
fn write(
    o: &CreateOptions<'_>,
    manifest: &BundleManifest,
    metadata: &[(String, Vec<u8>)],
    target_files: &BTreeMap<String, Vec<u8>>,
    index: &[serde_json::Value],
    blobs: &[Blob],
) -> Result<u64, BundleError> {
    let dir = match o.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = o
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let result = write_to(&tmp, manifest, metadata, target_files, index, blobs);
    let done = result.and_then(|n| {
        fs::rename(&tmp, o.out).map_err(io_err("rename into", o.out))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(n)
    });
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done
}

fn write_to(
    tmp: &Path,
    manifest: &BundleManifest,
    metadata: &[(String, Vec<u8>)],
    target_files: &BTreeMap<String, Vec<u8>>,
    index: &[serde_json::Value],
    blobs: &[Blob],
) -> Result<u64, BundleError> {
    let io = |e| BundleError::Io {
        what: "write",
        path: tmp.to_path_buf(),
        source: e,
    };
    let f = File::create(tmp).map_err(io_err("create", tmp))?;
    let mut w = TarWriter::new(BufWriter::with_capacity(256 << 10, f));
    let mut m = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    m.push(b'\n');
    w.file(format::MANIFEST, &m).map_err(io)?;
    for (name, bytes) in metadata {
        w.file(&format!("metadata/{name}"), bytes).map_err(io)?;
    }
    for (name, bytes) in target_files {
        w.file(&format!("targets/{name}"), bytes).map_err(io)?;
    }
    w.file("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}")
        .map_err(io)?;
    let idx = json!({
        "schemaVersion": 2,
        "mediaType": berth_image::layout::MT_INDEX,
        "manifests": index,
    });
    let idx = serde_json::to_vec(&idx).expect("an index serializes");
    w.file("index.json", &idx).map_err(io)?;
    let mut buf = vec![0u8; 256 << 10];
    for b in blobs {
        let bad = |why: String| BundleError::BadSource {
            image: b.image.clone(),
            what: b.what,
            digest: b.digest.to_string(),
            path: b.path.clone(),
            why,
        };
        let mut f = File::open(&b.path)
            .map_err(io_err("open", &b.path))?
            .take(b.size);
        w.begin_file(&format!("blobs/sha256/{}", b.digest.hex()), b.size)
            .map_err(io)?;
        let mut v = Verifier::new(b.digest.clone(), b.size);
        loop {
            let n = f.read(&mut buf).map_err(io_err("read", &b.path))?;
            if n == 0 {
                break;
            }
            v.update(&buf[..n]).map_err(|e| bad(e.to_string()))?;
            w.content(&buf[..n]).map_err(io)?;
        }
        v.finish().map_err(|e| bad(e.to_string()))?;
        w.end_file(b.size).map_err(io)?;
    }
    let written = w.written() + 1024;
    let f = w
        .finish()
        .map_err(io)?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    Ok(written)
}
