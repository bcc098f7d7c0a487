//! Pull and unpack overlapped: layer `i` is applied as soon as the
//! configuration and layers `0..=i` are verified in the store, while later
//! layers are still downloading.
//!
//! The unpack runs on a blocking thread and reads each blob from the store
//! only after the pull committed it (a [`Gate`]); it applies layers strictly
//! in manifest order, checks each blob digest and diff id again as it
//! streams, and measures the rootfs once every layer is in, as
//! [`Store::unpack`] does. A failed download aborts the gate (the unpack
//! stops, even mid-layer, and removes its staging directory); a refused
//! layer cancels the downloads still running. Either way no rootfs appears
//! at the destination and the pull's blobs are referenced by nothing: they
//! are referenced only once the rootfs is in place.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::blob::Counters;
use super::client::Client;
use super::pull::{remove_partials, PulledImage};
use super::{ClientConfig, ImageRef, RegistryError};
use crate::store::{Gate, Store};
use crate::unpack::{Options, UnpackError, Unpacked};

/// Aborts the gate when the pull future is dropped before it finished (a
/// caller's timeout, a shutdown), so the unpack thread never waits forever.
struct AbortOnDrop(Arc<Gate>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort("the pull was cancelled".into());
    }
}

impl Client {
    /// Pulls `image` (pinned by digest) into `store` and unpacks it into the
    /// new directory `dest`, overlapping the two. The pull's deadline covers
    /// the downloads; the unpack of what they brought then finishes.
    pub async fn pull_unpack(
        &self,
        image: &ImageRef,
        store: &Store,
        dest: &Path,
        opts: &Options,
    ) -> Result<(PulledImage, Unpacked), RegistryError> {
        let started = Instant::now();
        let deadline = |_| RegistryError::Deadline {
            what: format!("pull of {image}"),
            secs: self.cfg.deadline.as_secs(),
        };
        let counters = Counters::default();
        let plan = tokio::time::timeout(self.cfg.deadline, self.prepare(image, store, &counters))
            .await
            .map_err(deadline)??;
        let gate = Arc::new(Gate::default());
        let _abort = AbortOnDrop(gate.clone());
        let mut unpack = tokio::task::spawn_blocking({
            let (store, gate, digest) = (store.clone(), gate.clone(), plan.digest.clone());
            let (dest, opts) = (dest.to_path_buf(), *opts);
            move || store.unpack_when_verified(&digest, &dest, &opts, &gate)
        });
        let left = self.cfg.deadline.saturating_sub(started.elapsed());
        let blobs = plan.blobs.clone();
        let downloads = tokio::time::timeout(
            left,
            self.download(image, store, &blobs, &counters, Some(&gate)),
        );
        // Boxed so that a refused layer can drop (cancel) it at once.
        let mut downloads = Box::pin(downloads);
        let joined = |r: Result<Result<Unpacked, UnpackError>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| {
                Err(UnpackError::Aborted {
                    at: "a layer".into(),
                    why: format!("the unpack thread failed: {e}"),
                })
            })
        };
        let (results, downloaded, unpacked) = tokio::select! {
            d = &mut downloads => match d.map_err(deadline).and_then(|r| r) {
                Ok(results) => {
                    let downloaded = started.elapsed();
                    (results, downloaded, joined((&mut unpack).await))
                }
                Err(e) => {
                    gate.abort(format!("the pull failed: {e}"));
                    // The staging directory is gone once the thread returns.
                    let _ = unpack.await;
                    return Err(e);
                }
            },
            u = &mut unpack => match joined(u) {
                Ok(out) => {
                    let results = downloads.await.map_err(deadline).and_then(|r| r)?;
                    (results, started.elapsed(), Ok(out))
                }
                Err(e) => {
                    // The image is refused: what is still downloading is of
                    // no use, nor are its partial blobs.
                    drop(downloads);
                    remove_partials(store, &blobs);
                    return Err(e.into());
                }
            }
        };
        let unpacked = unpacked?;
        match self.finish(image, store, plan, &results, &counters, downloaded) {
            Ok(pulled) => Ok((pulled, unpacked)),
            Err(e) => {
                // Nothing references the blobs: the rootfs goes too.
                let _ = std::fs::remove_dir_all(dest);
                Err(e)
            }
        }
    }
}

/// [`Client::pull_unpack`] on a private async runtime, for callers that
/// are not async.
pub fn pull_unpack_blocking(
    cfg: ClientConfig,
    image: &ImageRef,
    store: &Store,
    dest: &Path,
    opts: &Options,
) -> Result<(PulledImage, Unpacked), RegistryError> {
    super::block_on(cfg, async |client| {
        client.pull_unpack(image, store, dest, opts).await
    })
}
