//! Unpacking a pulled image straight from the store: `blobs/sha256/<hex>`
//! is laid out as in an OCI image layout, so the unpacker reads the blobs in
//! place and checks every one against the manifest again as it streams.

use std::path::Path;

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
        unpack::unpack_manifest(&lay, &d, &manifest, dest, opts)
    }
}
