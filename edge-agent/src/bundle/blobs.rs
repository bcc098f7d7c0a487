//! Blobs: which ones the verified release needs, each verified while it is
//! read, and what the bundle turned out to hold.

use std::collections::BTreeSet;
use std::io::Read;

use berth_image::registry::limits::Verifier;
use berth_image::registry::manifest::{parse_config, parse_manifest, MAX_CONFIG, MAX_MANIFEST};
use berth_image::registry::Digest;
use berth_image::unpack::tar::Reader;

use super::format::{self, BundleManifest, ImageEntry};
use super::read::{Outcome, Pass, Sink, State};
use super::BundleError;
use crate::release::Arch;

/// What a blob is to its image.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Manifest,
    Config,
    Layer,
}

/// A blob the verified release needs.
#[derive(Clone)]
pub(super) struct Want {
    /// Declared by a verified manifest; `None` for a manifest (pinned by digest only).
    pub(super) size: Option<u64>,
    pub(super) role: Role,
    /// Which image first needed it (for messages).
    pub(super) image: String,
}

impl Pass<'_> {
    pub(super) fn blob<R: Read>(
        &self,
        tar: &mut Reader<'_, R>,
        st: &mut State,
        sink: &mut dyn Sink,
        d: Digest,
        size: u64,
    ) -> Result<(), BundleError> {
        let Some(want) = st.needed.get(&d).cloned() else {
            return Ok(());
        };
        if st.done.contains_key(&d) {
            return Ok(());
        }
        let what = describe(&want);
        let corrupt = |reason: String| BundleError::Corrupt {
            file: self.file.to_path_buf(),
            digest: d.to_string(),
            what: what.clone(),
            reason,
        };
        match want.size {
            Some(s) if s != size => {
                return Err(corrupt(format!(
                    "{size} bytes, the verified manifest declares {s}"
                )))
            }
            None if size > MAX_MANIFEST => {
                return Err(corrupt(format!(
                    "{size} bytes, over the {MAX_MANIFEST}-byte limit for a manifest"
                )))
            }
            _ => {}
        }
        let keep = want.role != Role::Layer;
        let mut kept = Vec::new();
        let mut v = Verifier::new(d.clone(), size);
        sink.begin(&d, size)?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = tar.read_content(&mut buf).map_err(self.tar_err())?;
            if n == 0 {
                break;
            }
            v.update(&buf[..n]).map_err(|e| corrupt(e.to_string()))?;
            sink.write(&buf[..n])?;
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        let proof = v.finish().map_err(|e| corrupt(e.to_string()))?;
        sink.end(proof)?;
        st.done.insert(d.clone(), size);
        self.parsed(st, sink, &d, want.role, &kept)
    }

    /// A verified manifest adds its config and layers to what is needed; a
    /// verified config is checked against its manifest and architecture.
    pub(super) fn parsed(
        &self,
        st: &mut State,
        sink: &mut dyn Sink,
        d: &Digest,
        role: Role,
        bytes: &[u8],
    ) -> Result<(), BundleError> {
        let image = st
            .needed
            .get(d)
            .map(|w| w.image.clone())
            .unwrap_or_default();
        let bad = |why: String| BundleError::Image {
            file: self.file.to_path_buf(),
            image: image.clone(),
            why,
        };
        match role {
            Role::Layer => Ok(()),
            Role::Manifest => {
                let m = parse_manifest(d, None, bytes).map_err(|e| bad(e.to_string()))?;
                if m.config.size > MAX_CONFIG {
                    return Err(bad(format!(
                        "config {} declares {} bytes, over the {MAX_CONFIG}-byte limit",
                        m.config.digest, m.config.size
                    )));
                }
                let children = std::iter::once((&m.config, Role::Config))
                    .chain(m.layers.iter().map(|l| (&l.descriptor, Role::Layer)));
                let mut configs = Vec::new();
                for (desc, role) in children {
                    if let Some(w) = st.needed.get(&desc.digest) {
                        if w.size.is_some_and(|s| s != desc.size) || w.role == Role::Manifest {
                            return Err(bad(format!(
                                "blob {} is declared twice with different sizes or roles",
                                desc.digest
                            )));
                        }
                        continue;
                    }
                    st.needed.insert(
                        desc.digest.clone(),
                        Want {
                            size: Some(desc.size),
                            role,
                            image: image.clone(),
                        },
                    );
                    if sink.present(&desc.digest) {
                        st.done.insert(desc.digest.clone(), desc.size);
                        if role == Role::Config {
                            configs.push(desc.digest.clone());
                        }
                    }
                }
                let config = m.config.digest.clone();
                st.manifests.insert(d.clone(), m);
                // A config already present (shared with another image) is still checked for this manifest.
                if st.done.contains_key(&config) && !configs.contains(&config) {
                    configs.push(config);
                }
                for c in configs {
                    let bytes = match st.configs.get(&c) {
                        Some(b) => b.clone(),
                        None => sink.read_present(&c, MAX_CONFIG)?,
                    };
                    self.check_config(st, &c, &bytes)?;
                }
                Ok(())
            }
            Role::Config => {
                st.configs.insert(d.clone(), bytes.to_vec());
                self.check_config(st, d, bytes)
            }
        }
    }

    fn check_config(&self, st: &State, config: &Digest, bytes: &[u8]) -> Result<(), BundleError> {
        for (md, m) in st
            .manifests
            .iter()
            .filter(|(_, m)| &m.config.digest == config)
        {
            let image = st
                .needed
                .get(md)
                .map(|w| w.image.clone())
                .unwrap_or_default();
            let bad = |why: String| BundleError::Image {
                file: self.file.to_path_buf(),
                image: image.clone(),
                why,
            };
            let c = parse_config(m, bytes).map_err(|e| bad(e.to_string()))?;
            for (_, _, _, arch, _) in st.images.iter().filter(|i| &i.4 == md) {
                if c.architecture != arch.as_str() {
                    return Err(bad(format!(
                        "manifest {md} is pinned for {arch} but its config is for {}",
                        c.architecture
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) fn finish(&self, st: State) -> Result<Outcome, BundleError> {
        let claimed = st.claimed.expect("checked");
        for (d, w) in &st.needed {
            if !st.done.contains_key(d) {
                let hint = match (w.role, &self.arches) {
                    (Role::Manifest, Some(a)) => format!(
                        " with the images for {} (`--arch`, or no --arch for every architecture)",
                        list(a)
                    ),
                    _ => String::new(),
                };
                return Err(BundleError::Missing {
                    file: self.file.to_path_buf(),
                    digest: d.to_string(),
                    what: describe(w),
                    hint,
                });
            }
        }
        let (document, release, versions) = st.trusted.expect("trust phase ran");
        let mut images = Vec::new();
        for (workload, registry, repository, arch, d) in &st.images {
            let m = &st.manifests[d];
            let mut blobs: BTreeSet<&Digest> = BTreeSet::from([d, &m.config.digest]);
            blobs.extend(m.layers.iter().map(|l| &l.descriptor.digest));
            images.push(ImageEntry {
                workload: workload.clone(),
                registry: registry.clone(),
                repository: repository.clone(),
                arch: *arch,
                manifest: d.to_string(),
                blobs: blobs.len() as u64,
                bytes: blobs.iter().map(|b| st.done[*b]).sum(),
            });
        }
        let manifest = BundleManifest {
            format: format::FORMAT,
            fleet: release.fleet.clone(),
            target: claimed.target.clone(),
            generation: release.generation,
            architectures: st.arches.clone(),
            images,
            blobs: st.done.len() as u64,
            bytes: st.done.values().sum(),
        };
        Ok(Outcome {
            document,
            release,
            versions,
            manifest,
            claimed,
        })
    }
}

fn describe(w: &Want) -> String {
    let role = match w.role {
        Role::Manifest => "manifest",
        Role::Config => "config",
        Role::Layer => "layer",
    };
    format!("{role} of image {}", w.image)
}

fn list(a: &[Arch]) -> String {
    a.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
}
