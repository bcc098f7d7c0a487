//! Pull: a manifest pinned by digest, then its config and layers, into the
//! store; referenced only once every blob is present and verified.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::blob::Counters;
use super::client::Client;
use super::limits::Verifier;
use super::manifest::{parse_config, parse_manifest, Descriptor, MAX_CONFIG, MAX_MANIFEST};
use super::{ClientConfig, Digest, ImageConfig, ImageRef, Manifest, RegistryError};
use crate::store::{Gate, Store, StoreError};

/// A pulled image: every blob verified in the store, manifest and config checked.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: ImageRef,
    pub manifest: Manifest,
    pub config: ImageConfig,
    /// The store owner that now references the image's blobs.
    pub owner: String,
    pub report: PullReport,
}

/// What a pull moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Body bytes received from the network (manifest, config, layers).
    pub network_bytes: u64,
    /// Bytes received again after they had already been verified (a server
    /// that ignored Range); zero when every resume continued where it stopped.
    pub refetched_bytes: u64,
    /// Requests that continued a blob from a verified offset.
    pub resumes: u64,
    /// Blobs downloaded.
    pub fetched_blobs: u64,
    /// Blobs already present, not fetched again.
    pub present_blobs: u64,
    /// Sum of the declared sizes of config and layers.
    pub image_bytes: u64,
    /// From the start until every blob was verified (an overlapped unpack
    /// may still be applying the last layer).
    pub elapsed: Duration,
}

/// The store owner name of a pulled image.
pub fn owner_of(image: &ImageRef, digest: &Digest) -> String {
    format!("image:{}/{}@{digest}", image.registry, image.repository)
}

impl Client {
    /// Pulls `image` (which must be pinned by digest) into `store`, within the
    /// configured deadline.
    pub async fn pull(
        &self,
        image: &ImageRef,
        store: &Store,
    ) -> Result<PulledImage, RegistryError> {
        let secs = self.cfg.deadline.as_secs();
        tokio::time::timeout(self.cfg.deadline, self.pull_inner(image, store))
            .await
            .map_err(|_| RegistryError::Deadline {
                what: format!("pull of {image}"),
                secs,
            })?
    }

    async fn pull_inner(
        &self,
        image: &ImageRef,
        store: &Store,
    ) -> Result<PulledImage, RegistryError> {
        let started = Instant::now();
        let counters = Counters::default();
        let plan = self.prepare(image, store, &counters).await?;
        let results = self
            .download(image, store, &plan.blobs, &counters, None)
            .await?;
        self.finish(image, store, plan, &results, &counters, started.elapsed())
    }

    /// Fetches (or reads) the pinned manifest, checks it, checks free space,
    /// and stores the manifest (referenced by nothing yet).
    pub(super) async fn prepare(
        &self,
        image: &ImageRef,
        store: &Store,
        counters: &Counters,
    ) -> Result<Plan, RegistryError> {
        let digest = image.pinned()?.clone();
        let stored = store.has(&digest);
        let (bytes, content_type) = if stored {
            (store.read_blob(&digest, MAX_MANIFEST)?, None)
        } else {
            self.fetch_manifest(image, &digest, counters).await?
        };
        // Checked before anything is written: a refused document never
        // enters the store.
        let manifest = parse_manifest(&digest, content_type.as_deref(), &bytes)?;
        if manifest.config.size > MAX_CONFIG {
            return Err(RegistryError::Manifest(super::ManifestError::Config {
                digest: digest.clone(),
                config: manifest.config.digest.clone(),
                why: format!(
                    "it declares {} bytes, over the {MAX_CONFIG}-byte limit",
                    manifest.config.size
                ),
            }));
        }
        let mut seen = BTreeSet::new();
        let blobs: Vec<Descriptor> = std::iter::once(manifest.config.clone())
            .chain(manifest.layers.iter().map(|l| l.descriptor.clone()))
            .filter(|d| seen.insert(d.digest.clone()))
            .collect();
        let needed: u64 = blobs
            .iter()
            .filter(|d| !store.has(&d.digest))
            .map(|d| d.size.saturating_sub(store.partial_len(&d.digest)))
            .sum();
        let manifest_len = if stored { 0 } else { bytes.len() as u64 };
        store.check_space(needed.saturating_add(manifest_len))?;
        if !stored {
            put_verified(store, &digest, &bytes)?;
        }
        Ok(Plan {
            digest,
            manifest,
            blobs,
        })
    }

    /// Fetches every blob of the plan not yet present, `parallel` at a time,
    /// started in manifest order (configuration, then layers from the
    /// bottom), telling `gate` of each one verified or already present.
    /// Returns, per blob, whether it was downloaded.
    pub(super) async fn download(
        &self,
        image: &ImageRef,
        store: &Store,
        blobs: &[Descriptor],
        counters: &Counters,
        gate: Option<&Gate>,
    ) -> Result<Vec<bool>, RegistryError> {
        let results: Result<Vec<bool>, RegistryError> =
            stream::iter(blobs.iter().map(|d| async move {
                let fetched = self.fetch_blob(image, d, store, counters).await?;
                if let Some(g) = gate {
                    g.ready(&d.digest);
                }
                Ok(fetched)
            }))
            .buffer_unordered(self.cfg.parallel.max(1))
            .try_collect()
            .await;
        match &results {
            // A full filesystem is left as the pull found it: the partial
            // downloads of this pull go too, not only the one whose write
            // failed.
            Err(RegistryError::Store(StoreError::Full { .. })) => remove_partials(store, blobs),
            // Downloads cut short by another blob's failure keep what they
            // verified for a resume; those that had nothing yet leave nothing.
            Err(_) => {
                for d in blobs.iter().filter(|d| store.partial_len(&d.digest) == 0) {
                    let _ = store.remove_partial(&d.digest);
                }
            }
            Ok(_) => {}
        }
        results
    }

    /// References the pulled blobs (all verified) and reports; `elapsed` is
    /// the time from the start until every blob was verified.
    pub(super) fn finish(
        &self,
        image: &ImageRef,
        store: &Store,
        plan: Plan,
        results: &[bool],
        counters: &Counters,
        elapsed: Duration,
    ) -> Result<PulledImage, RegistryError> {
        let Plan {
            digest,
            manifest,
            blobs,
        } = plan;
        let config_bytes = store.read_blob(&manifest.config.digest, MAX_CONFIG)?;
        let config = parse_config(&manifest, &config_bytes)?;
        let owner = owner_of(image, &digest);
        let mut all: Vec<Digest> = blobs.iter().map(|d| d.digest.clone()).collect();
        all.push(digest.clone());
        store.set_refs(&owner, &all)?;
        let fetched = counters.fetched.load(Ordering::Relaxed);
        let report = PullReport {
            network_bytes: counters.network.load(Ordering::Relaxed),
            refetched_bytes: counters.refetched.load(Ordering::Relaxed),
            resumes: counters.resumes.load(Ordering::Relaxed),
            fetched_blobs: fetched,
            present_blobs: results.iter().filter(|f| !**f).count() as u64,
            image_bytes: blobs.iter().map(|d| d.size).sum(),
            elapsed,
        };
        tracing::info!(image = %image, fetched = fetched, bytes = report.network_bytes, "pulled");
        Ok(PulledImage {
            reference: image.clone(),
            manifest,
            config,
            owner,
            report,
        })
    }
}

/// What a pull fetches: the checked manifest and its distinct blobs.
#[derive(Debug)]
pub(super) struct Plan {
    pub digest: Digest,
    pub manifest: Manifest,
    pub blobs: Vec<Descriptor>,
}

/// Removes what interrupted downloads of `blobs` left.
pub(super) fn remove_partials(store: &Store, blobs: &[Descriptor]) {
    for d in blobs {
        let _ = store.remove_partial(&d.digest);
    }
}

/// Stores a blob held in memory, verified against `digest` first (a
/// manifest just fetched, or a blob from a local image layout).
pub fn put_verified(store: &Store, digest: &Digest, bytes: &[u8]) -> Result<(), RegistryError> {
    let mut v = Verifier::new(digest.clone(), bytes.len() as u64);
    let mut ingest = store.ingest(digest)?;
    ingest.truncate()?;
    v.update(bytes).map_err(|source| RegistryError::Verify {
        url: digest.to_string(),
        source,
    })?;
    ingest.append(bytes)?;
    let proof = v.finish().map_err(|source| RegistryError::Verify {
        url: digest.to_string(),
        source,
    })?;
    ingest.commit(proof)?;
    Ok(())
}

/// Pulls on a private async runtime, for callers that are not async.
pub fn pull_blocking(
    cfg: ClientConfig,
    image: &ImageRef,
    store: &Store,
) -> Result<PulledImage, RegistryError> {
    super::block_on(cfg, async |client| client.pull(image, store).await)
}
