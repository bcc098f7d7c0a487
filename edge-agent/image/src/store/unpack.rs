//! Unpacking a pulled image straight from the store: `blobs/sha256/<hex>`
//! is laid out as in an OCI image layout, so the unpacker reads the blobs in
//! place and checks every one against the manifest again as it streams.

use std::path::Path;

use super::gate::{Gate, GatedBlob};
use super::Store;
use crate::layout::{self, Layout, LayoutError};
use crate::registry::Digest;
use crate::unpack::{self, Options, UnpackError, Unpacked};

impl Store {
    /// Unpacks the image whose manifest `digest` was pulled into this store
    /// into the new directory `dest` (rootfs, config, measurement).
    pub fn unpack(
        &self,
        digest: &Digest,
        dest: &Path,
        opts: &Options,
    ) -> Result<Unpacked, UnpackError> {
        let (lay, d, manifest) = self.layout_manifest(digest)?;
        unpack::unpack_manifest(&lay, &d, &manifest, dest, opts)
    }

    /// Like [`Store::unpack`] while a pull is still filling the store: the
    /// manifest is present, and each blob is read only once `gate` says it
    /// was verified and committed — the configuration first, then layer
    /// after layer in order. A pull that fails aborts the gate, and the
    /// unpack stops and removes what it staged.
    pub fn unpack_when_verified(
        &self,
        digest: &Digest,
        dest: &Path,
        opts: &Options,
        gate: &Gate,
    ) -> Result<Unpacked, UnpackError> {
        let (lay, d, manifest) = self.layout_manifest(digest)?;
        gate.wait(&same(&manifest.config.digest)?)
            .map_err(|why| UnpackError::Aborted {
                at: "the image configuration".into(),
                why,
            })?;
        unpack::unpack_manifest_from(&lay, &d, &manifest, dest, opts, |l| {
            Ok(GatedBlob::new(gate, same(l)?, lay.blob_path(l)))
        })
    }

    /// The store as an image layout, and the manifest `digest` read from it.
    fn layout_manifest(
        &self,
        digest: &Digest,
    ) -> Result<(Layout, layout::Digest, layout::Manifest), UnpackError> {
        let d = layout::Digest::parse(&digest.to_string())?;
        let lay = Layout {
            dir: self.root.clone(),
        };
        let path = lay.blob_path(&d);
        let size = std::fs::metadata(&path)
            .map_err(|source| LayoutError::Io { path, source })?
            .len();
        let desc = layout::Descriptor {
            media_type: layout::MT_MANIFEST.to_string(),
            digest: d.clone(),
            size,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        };
        let bytes = lay.read_blob(&desc, "manifest")?;
        let manifest: layout::Manifest = layout::parse(&bytes, "manifest", d.as_str())?;
        Ok((lay, d, manifest))
    }
}

/// A layout digest as the store's (both are validated `sha256:` + hex).
fn same(d: &layout::Digest) -> Result<Digest, LayoutError> {
    d.as_str()
        .parse()
        .map_err(|_| LayoutError::BadDigest(d.to_string()))
}
