//! The agent's images: pulled into the content-addressed blob store
//! (`<state>/blobs`), unpacked once per manifest into `<state>/images/<hex>`,
//! their measurement kept in the state database (never read back from a
//! file beside the rootfs, which is what it protects).
//!
//! A manifest whose blobs are all in the store (an earlier pull, or an
//! offline bundle import) is unpacked without touching the network; layers
//! still to fetch are applied in order as soon as each is verified.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_image::registry::{Client, ClientConfig, ImageRef};
use berth_image::store::Store;
use berth_image::unpack::Options;

use crate::names::Digest;
use crate::reconcile::engine::{ImageProvider, Unpacked};
use crate::release::document::ImageSpec;

/// Pulls with the registry client and unpacks from the blob store.
pub struct StoreImages {
    store: Store,
    client: Client,
    rt: tokio::runtime::Handle,
    images: PathBuf,
    measured: sled::Tree,
    options: Options,
    /// One ensure at a time: two workloads of one release may share an image.
    busy: Mutex<()>,
}

impl std::fmt::Debug for StoreImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreImages")
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

/// The store owner that holds an unpacked image's blobs.
pub fn owner(manifest: &Digest) -> String {
    format!("unpacked:{manifest}")
}

impl StoreImages {
    /// `state` is the agent's state directory; `db` its state database;
    /// `rt` the runtime the registry client runs on (callers are blocking
    /// threads of it).
    pub fn open(
        state: &Path,
        db: &sled::Db,
        cfg: ClientConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let store = Store::with_db(&state.join("blobs"), db).map_err(|e| e.to_string())?;
        let client = {
            let _guard = rt.enter();
            Client::new(cfg).map_err(|e| e.to_string())?
        };
        let images = state.join("images");
        std::fs::create_dir_all(&images)
            .map_err(|e| format!("cannot create {}: {e}", images.display()))?;
        let measured = db
            .open_tree("images")
            .map_err(|e| format!("cannot open the images table of the state database: {e}"))?;
        Ok(Self {
            store,
            client,
            rt,
            images,
            measured,
            options: Options::default(),
            busy: Mutex::new(()),
        })
    }

    /// The blob store (for bundle imports and garbage collection).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn dir(&self, manifest: &Digest) -> PathBuf {
        self.images.join(manifest.hex())
    }

    /// Removes unpacked images and blobs that none of `keep` (manifest
    /// digests of the generations still needed) uses, and leftovers of
    /// interrupted unpacks. Returns how many images were removed.
    pub fn prune(&self, keep: &[Digest]) -> Result<usize, String> {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let keep: std::collections::BTreeSet<&str> = keep.iter().map(|d| d.hex()).collect();
        let mut removed = 0;
        let rd = std::fs::read_dir(&self.images)
            .map_err(|e| format!("cannot list {}: {e}", self.images.display()))?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(name.as_str()) {
                continue;
            }
            let path = entry.path();
            // The record goes first: an image without one is never used.
            if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                self.measured
                    .remove(d.as_str())
                    .map_err(|e| format!("state database: {e}"))?;
                self.store.release(&owner(&d)).map_err(|e| e.to_string())?;
            }
            self.measured
                .flush()
                .map_err(|e| format!("state database: {e}"))?;
            std::fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            removed += 1;
        }
        self.store.gc().map_err(|e| e.to_string())?;
        Ok(removed)
    }

    fn ensure_inner(&self, image: &ImageSpec, digest: &Digest) -> Result<Unpacked, String> {
        let dir = self.dir(digest);
        if let Some(m) = self
            .measured
            .get(digest.as_str())
            .map_err(|e| format!("state database: {e}"))?
        {
            if dir.join("rootfs").is_dir() {
                return Ok(Unpacked {
                    dir,
                    measurement: String::from_utf8_lossy(&m).into_owned(),
                });
            }
        }
        let reference: ImageRef = format!("{}/{}@{digest}", image.registry, image.repository)
            .parse()
            .map_err(|e| format!("image {}/{}: {e}", image.registry, image.repository))?;
        // A leftover of an unpack a crash interrupted is not trusted.
        if std::fs::symlink_metadata(&dir).is_ok() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove the stale {}: {e}", dir.display()))?;
        }
        // Layers are applied as they arrive; nothing is referenced or
        // recorded unless every one was verified and applied.
        let (pulled, out) = self
            .rt
            .block_on(
                self.client
                    .pull_unpack(&reference, &self.store, &dir, &self.options),
            )
            .map_err(|e| format!("image {reference}: {}", crate::error_chain(&e)))?;
        // The unpacked image's owner takes over the blobs the pull held.
        let blobs = self.store.refs(&pulled.owner).map_err(|e| e.to_string())?;
        let measurement = out.measurement.to_string();
        self.store
            .set_refs(&owner(digest), &blobs)
            .map_err(|e| e.to_string())?;
        self.store
            .release(&pulled.owner)
            .map_err(|e| e.to_string())?;
        self.measured
            .insert(digest.as_str(), measurement.as_bytes())
            .map_err(|e| format!("state database: {e}"))?;
        self.measured
            .flush()
            .map_err(|e| format!("state database: {e}"))?;
        Ok(Unpacked { dir, measurement })
    }
}

/// A shared [`StoreImages`] as the engine's provider.
#[derive(Debug, Clone)]
pub struct Shared(pub std::sync::Arc<StoreImages>);

impl ImageProvider for Shared {
    fn ensure(&self, image: &ImageSpec, digest: &Digest) -> Result<Unpacked, String> {
        self.0.ensure(image, digest)
    }
}

impl ImageProvider for StoreImages {
    fn ensure(&self, image: &ImageSpec, digest: &Digest) -> Result<Unpacked, String> {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_inner(image, digest)
    }
}
