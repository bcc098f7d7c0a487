//! An unpacked image on disk: `rootfs/`, `config.json` (the OCI image
//! configuration), and the `measurement` and `manifest` recorded when it was
//! unpacked.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::RuntimeError;
use crate::measure::{self, Algorithm, Manifest, Measurement};
use crate::spec::ImageConfig;

/// An image ready to launch.
#[derive(Debug, Clone)]
pub struct Image {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// The trusted measurement: the launch is refused unless the rootfs matches it.
    pub measurement: Measurement,
    /// The manifest recorded at unpack time (`manifest` next to `rootfs`),
    /// read only to explain a mismatch.
    pub manifest: PathBuf,
}

impl Image {
    /// Opens the unpacked image in `dir`, to be checked against `measurement`
    /// (which must come from a trusted record, not from `dir` itself).
    pub fn open(dir: &Path, measurement: Measurement) -> Result<Self, RuntimeError> {
        let config_path = dir.join("config.json");
        let bytes = fs::read(&config_path).map_err(|source| RuntimeError::Image {
            path: config_path.clone(),
            source,
        })?;
        let config = ImageConfig::from_slice(&bytes).map_err(|e| RuntimeError::ImageConfig {
            path: config_path,
            reason: e.to_string(),
        })?;
        Ok(Self {
            rootfs: dir.join("rootfs"),
            config,
            measurement,
            manifest: dir.join("manifest"),
        })
    }

    /// The manifest recorded at unpack time, if it can be read.
    pub fn recorded_manifest(&self) -> Option<Manifest> {
        Manifest::read(&self.manifest)
    }

    /// Measures `dir/rootfs` with the default algorithm and records
    /// `measurement` and `manifest` next to it.
    pub fn record(dir: &Path, threads: Option<usize>) -> Result<Measurement, RuntimeError> {
        Self::record_with(dir, Algorithm::default(), threads)
    }

    /// [`Image::record`] with the hash function `algorithm`.
    pub fn record_with(
        dir: &Path,
        algorithm: Algorithm,
        threads: Option<usize>,
    ) -> Result<Measurement, RuntimeError> {
        let manifest = measure::measure_tree(&dir.join("rootfs"), algorithm, threads)?;
        let m = manifest.measurement();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            fs::write(&path, text).map_err(|source| RuntimeError::Image { path, source })
        };
        write("manifest", manifest.to_text())?;
        write("measurement", format!("{m}\n"))?;
        Ok(m)
    }
}
