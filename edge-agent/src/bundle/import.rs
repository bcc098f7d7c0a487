//! Reading a bundle: the device's import into its trusted state and blob
//! store, and the operator's full check against a root.json. Both run the
//! same one-pass reader; they differ in where verified blobs go.

use std::fs;
use std::path::{Path, PathBuf};

use berth_image::registry::limits::Verified;
use berth_image::registry::Digest;
use berth_image::store::Store;
use berth_trust::updater::Time;
use berth_trust::{StateStore, Updater};

use super::format::ImageEntry;
use super::read::{HashSink, Pass, Sink};
use super::stage::Staged;
use super::{io_err, BundleError, Summary, Versions};
use crate::release::{Arch, Release};

/// Where an import puts what it verified.
pub struct ImportTarget<'a> {
    /// The device's trusted metadata (its root must already be there).
    pub trust: &'a dyn StateStore,
    pub store: &'a Store,
    /// Where the verified release document is written (the agent's targets directory).
    pub targets_dir: &'a Path,
    /// The release target this device follows (see [`super::release_target`]).
    pub target: &'a str,
    /// The device's architecture: only its images are stored.
    pub arch: Arch,
    /// The clock (expiry is checked against the later of it and the time floor).
    pub now: Time,
}

impl std::fmt::Debug for ImportTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportTarget")
            .field("store", &self.store.root())
            .field("targets_dir", &self.targets_dir)
            .field("target", &self.target)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

/// A successful import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The verified release document, exactly as signed.
    pub document: Vec<u8>,
    pub release: Release,
    pub target: String,
    /// Where the document was written.
    pub target_file: PathBuf,
    pub versions: Versions,
    /// The images of the device's architecture.
    pub images: Vec<ImageEntry>,
    /// Blobs written to the store, and their bytes.
    pub blobs_added: u64,
    pub bytes_added: u64,
    /// Blobs the store already held (not read from the bundle).
    pub blobs_present: u64,
}

/// Imports `file` for a device: verifies it like an online update and, only
/// if everything verifies, commits the blobs, the trusted metadata and the
/// release document. On error nothing changed.
///
/// The trusted state's writes are staged and replayed at the end, so the
/// caller runs imports and online refreshes of the same state store one at
/// a time (the agent does both from its update loop).
pub fn import(file: &Path, to: &ImportTarget<'_>) -> Result<Imported, BundleError> {
    let staged = Staged::new(Some(to.trust));
    let mut sink = StoreSink {
        file: file.to_path_buf(),
        store: to.store,
        current: None,
        pending: Vec::new(),
    };
    let read = Pass {
        file,
        expected_target: Some(to.target),
        arches: Some(vec![to.arch]),
        trust: &staged,
        now: to.now,
    }
    .run(&mut sink);
    let out = match read {
        Ok(o) => o,
        Err(e) => {
            sink.abort();
            return Err(e);
        }
    };
    let added = sink.pending.len() as u64;
    let bytes_added = sink.pending.iter().map(Verified::size).sum();
    let present = out.manifest.blobs - added;
    sink.commit()?;
    staged.commit().map_err(|source| BundleError::TrustStore {
        file: file.to_path_buf(),
        source,
    })?;
    fs::create_dir_all(to.targets_dir).map_err(io_err("create", to.targets_dir))?;
    let target_file = Updater::target_file(to.targets_dir, &out.manifest.target);
    berth_trust::store::write_atomic(&target_file, &out.document).map_err(|source| {
        BundleError::TrustStore {
            file: file.to_path_buf(),
            source,
        }
    })?;
    tracing::info!(bundle = %file.display(), target = %out.manifest.target,
        generation = out.release.generation, blobs = added, "imported an offline bundle");
    Ok(Imported {
        document: out.document,
        release: out.release,
        target: out.manifest.target,
        target_file,
        versions: out.versions,
        images: out.manifest.images,
        blobs_added: added,
        bytes_added,
        blobs_present: present,
    })
}

/// Checks `file` completely against `root` (a root.json obtained out of
/// band): signed metadata, release document, and every blob of `arches`
/// (empty: every architecture the bundle says it carries). Writes nothing
/// but a temporary directory.
pub fn verify(
    file: &Path,
    root: &[u8],
    arches: &[Arch],
    now: Time,
) -> Result<Summary, BundleError> {
    let staged = Staged::new(None);
    berth_trust::updater::init(&staged, root).map_err(|source| BundleError::Trust {
        file: file.to_path_buf(),
        hint: "the given root.json is not a valid, self-signed root; pass the fleet's root.json"
            .into(),
        source: Box::new(source),
    })?;
    let out = Pass {
        file,
        expected_target: None,
        arches: (!arches.is_empty()).then(|| arches.to_vec()),
        trust: &staged,
        now,
    }
    .run(&mut HashSink)?;
    if arches.is_empty() && out.claimed != out.manifest {
        return Err(BundleError::Format {
            file: file.to_path_buf(),
            why: "bundle.json does not describe what the bundle holds (images, blobs or sizes differ from the verified content)".into(),
        });
    }
    let file_bytes = fs::metadata(file).map_err(io_err("stat", file))?.len();
    Ok(Summary {
        file: file.to_path_buf(),
        manifest: out.manifest,
        versions: out.versions,
        file_bytes,
    })
}

/// Into the blob store's ingest; renamed into place only by [`StoreSink::commit`].
struct StoreSink<'a> {
    file: PathBuf,
    store: &'a Store,
    current: Option<berth_image::store::Ingest>,
    pending: Vec<Verified>,
}

impl StoreSink<'_> {
    fn err(&self) -> impl FnOnce(berth_image::store::StoreError) -> BundleError {
        let file = self.file.clone();
        move |source| BundleError::Store { file, source }
    }

    /// Removes every partial blob this import wrote.
    fn abort(&mut self) {
        if let Some(i) = self.current.take() {
            let _ = i.discard();
        }
        for p in self.pending.drain(..) {
            if let Ok(i) = self.store.ingest(p.digest()) {
                let _ = i.discard();
            }
        }
    }

    fn commit(mut self) -> Result<(), BundleError> {
        let pending = std::mem::take(&mut self.pending);
        for (n, proof) in pending.iter().enumerate() {
            let r = self
                .store
                .ingest(proof.digest())
                .and_then(|i| i.commit(proof.clone()));
            if let Err(e) = r {
                self.pending = pending[n..].to_vec();
                self.abort();
                return Err(self.err()(e));
            }
        }
        Ok(())
    }
}

impl Sink for StoreSink<'_> {
    fn present(&self, d: &Digest) -> bool {
        self.store.has(d)
    }
    fn read_present(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, BundleError> {
        self.store.read_blob(d, limit).map_err(self.err())
    }
    fn begin(&mut self, d: &Digest, size: u64) -> Result<(), BundleError> {
        self.store.check_space(size).map_err(self.err())?;
        let mut i = self.store.ingest(d).map_err(self.err())?;
        if let Err(e) = i.truncate() {
            let _ = i.discard();
            return Err(self.err()(e));
        }
        self.current = Some(i);
        Ok(())
    }
    fn write(&mut self, b: &[u8]) -> Result<(), BundleError> {
        let r = match self.current.as_mut() {
            Some(i) => i.append(b),
            None => return Ok(()),
        };
        r.map_err(self.err())
    }
    fn end(&mut self, proof: Verified) -> Result<(), BundleError> {
        if let Some(mut i) = self.current.take() {
            let r = i.flush();
            drop(i);
            r.map_err(self.err())?;
        }
        self.pending.push(proof);
        Ok(())
    }
}
