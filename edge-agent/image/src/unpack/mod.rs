//! Safe layer unpacking: OCI layers applied in order into a rootfs, then measured.
//!
//! # A rootfs per image
//!
//! Every image is unpacked into a directory of its own (`DEST/rootfs`, with
//! `config.json`, `measurement` and `manifest` beside it: the layout
//! [`berth_runtime::Image`] opens). A shared layer cache composed with
//! overlayfs at launch was rejected: the runtime verifies a launch by walking
//! and measuring the *composed* tree, so composition would have to happen
//! before every measurement anyway; whiteouts stored for overlayfs need either
//! `mknod` of 0/0 character devices or `trusted.overlay.*` attributes (real
//! root), or `userxattr` overlay mounts inside a user namespace (Linux 5.11
//! and later, not what every gateway kernel offers); and a per-image directory
//! is staged beside the old generation, measured once, renamed into place
//! atomically and removed as a unit. The cost is disk space for layers two
//! images share; the blob store still keeps each compressed layer once.
//!
//! # Ownership
//!
//! [`Ownership::Keep`] (the default as root) writes the owners exactly as the
//! layers record them: container ids. The runtime gives each *container* a
//! subordinate id range when it launches (`berth_runtime::idmap`, the lowest
//! free slot at that moment), and several containers may launch from one
//! image, so no host range is known when an image is unpacked and the tree is
//! never rewritten for one. Instead the runtime mounts an *idmapped*,
//! read-only view of the unchanged rootfs as each container's root
//! (`berth_runtime::rootfs`: `mount_setattr(MOUNT_ATTR_IDMAP)` with the
//! container's mapping): a file of image uid N is container uid N (host
//! `range start + N`), so a 0600 file of the image's user is readable by that
//! user and nobody else, in every container of the image at once. The
//! measurement (`berth_runtime::measure`) records the owner on disk, which
//! with `Keep` is the container id, so it is the same on every device
//! whatever slot a workload later gets; the launch measures the very mount it
//! then idmaps. Images must therefore live on a filesystem that supports
//! idmapped mounts (ext4, xfs, btrfs, f2fs, tmpfs, overlayfs); elsewhere the
//! launch is refused naming the path and filesystem type.
//! [`Ownership::Shift`] (owner = range start + container id, ids outside the
//! range refused; the measurement then records those host ids) is for trees
//! handed to a runtime that does not idmap; `berth-runtime` would shift them
//! a second time. [`Ownership::Caller`] is for unprivileged use.
//!
//! # Against malicious layers
//!
//! - paths: `..` is refused and a leading `/` names the image root; every
//!   entry is created with
//!   `*at` calls on descriptors resolved one component at a time inside the
//!   root ([`resolve`]): symlinks are expanded with chroot semantics, a climb
//!   above the root through a symlink is refused, so a directory replaced by
//!   a symlink in the same or a later layer cannot lead outside;
//! - hardlinks must name something already inside the root, resolved the same way;
//! - an entry named `.` (a symlink or file replacing its directory) is refused;
//! - device nodes and fifos are refused unless [`Policy::allow_devices`];
//!   setuid/setgid bits and `security.capability` are stripped unless allowed;
//! - whiteouts are resolved refusing every symlink, and name a child only;
//! - [`Limits`] cap uncompressed bytes, headers, path length and extended
//!   header size before anything is allocated; truncated or non-tar input is
//!   an error ([`tar`]);
//! - the whole unpack happens in a staging directory beside `DEST` that is
//!   renamed into place only after every layer's blob digest and diff id
//!   matched and the tree was measured; on any error it is removed.

pub mod apply;
pub mod compress;
pub mod policy;
pub mod resolve;
pub mod tar;
pub mod whiteout;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use berth_runtime::Measurement;
use rustix::fs::{Mode, OFlags};

pub use apply::{EntryError, Stats};
pub use compress::Compression;
pub use policy::{Limits, Ownership, Policy};

use crate::layout::{self, Digest, Layout, LayoutError};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: {source}")]
    Layer {
        layer: String,
        #[source]
        source: EntryError,
    },
    #[error(
        "layer {layer}: its {what} is {actual} but the image says {expected}: the blob is \
         corrupt or was replaced; fetch it again"
    )]
    Verify {
        layer: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("layer {layer}: {reason}")]
    LayerRefused { layer: String, reason: String },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("cannot unpack into {path}: {reason}")]
    Dest { path: PathBuf, reason: String },
    #[error("cannot prepare {path}: {source}")]
    DestIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the unpack stopped at {at}: {why}")]
    Aborted { at: String, why: String },
    #[error("cannot measure the unpacked rootfs: {0}")]
    Measure(#[from] berth_runtime::RuntimeError),
}

/// How to unpack.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub policy: Policy,
    pub limits: Limits,
    pub ownership: Ownership,
    /// Threads used to measure the rootfs (`None`: as many as this process
    /// may use, counted only for content enough to share; see
    /// [`berth_runtime::measure::measure_tree`]).
    pub measure_threads: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            limits: Limits::default(),
            ownership: Ownership::for_current_user(),
            measure_threads: None,
        }
    }
}

/// The result of an unpack.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The image directory (`rootfs/`, `measurement`, `manifest`, `config.json`).
    pub dir: PathBuf,
    pub measurement: Measurement,
    /// The manifest unpacked, when the source was an image layout.
    pub manifest: Option<Digest>,
    pub layers: usize,
    /// Uncompressed bytes read.
    pub bytes: u64,
    pub stats: Stats,
}

/// One layer to apply: a name for messages, the blob stream, how it is
/// compressed (`None`: detect), and the digests to check it against.
#[derive(Debug)]
pub struct LayerSource<R> {
    pub name: String,
    pub reader: R,
    pub compression: Option<Compression>,
    /// Blob size and digest (of the compressed bytes).
    pub blob: Option<(u64, Digest)>,
    /// The uncompressed digest from the image configuration.
    pub diff_id: Option<Digest>,
}

/// Unpacks the manifest `digest` (or the only manifest) of the OCI image
/// layout at `src` into the new directory `dest`.
pub fn unpack_layout(
    src: &Path,
    digest: Option<&Digest>,
    dest: &Path,
    opts: &Options,
) -> Result<Unpacked, UnpackError> {
    let lay = Layout::open(src)?;
    let (desc, manifest) = lay.manifest(digest)?;
    unpack_manifest(&lay, &desc.digest, &manifest, dest, opts)
}

/// Unpacks a manifest already read and verified (its digest is `digest`)
/// whose blobs are under `lay.dir/blobs/sha256/`, the layout a blob store
/// shares: configuration and layers are checked against the manifest.
pub fn unpack_manifest(
    lay: &Layout,
    digest: &Digest,
    manifest: &layout::Manifest,
    dest: &Path,
    opts: &Options,
) -> Result<Unpacked, UnpackError> {
    unpack_manifest_from(lay, digest, manifest, dest, opts, |d| lay.open_blob(d))
}

/// [`unpack_manifest`] reading each layer through `open`, called in order
/// just before the layer is applied (its reader may block until the blob is
/// there: a pull that overlaps the unpack).
pub fn unpack_manifest_from<R: Read>(
    lay: &Layout,
    digest: &Digest,
    manifest: &layout::Manifest,
    dest: &Path,
    opts: &Options,
    mut open: impl FnMut(&Digest) -> Result<R, LayoutError>,
) -> Result<Unpacked, UnpackError> {
    let config_bytes = lay.read_blob(&manifest.config, "image configuration")?;
    let config: layout::ConfigRootfs = layout::parse(
        &config_bytes,
        "image configuration",
        manifest.config.digest.as_str(),
    )?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(UnpackError::Dest {
            path: dest.to_path_buf(),
            reason: format!(
                "manifest {} lists {} layers but its configuration lists {} diff ids: the image \
                 is malformed; rebuild it",
                digest,
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let mut sources = Vec::new();
    for (l, diff) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let name = l.digest.to_string();
        if !l.urls.is_empty() {
            return Err(UnpackError::LayerRefused {
                layer: name,
                reason: "a foreign layer (with urls) is never fetched or applied: rebuild the \
                         image with distributable layers"
                    .into(),
            });
        }
        let c = Compression::from_media_type(&l.media_type).ok_or_else(|| {
            UnpackError::LayerRefused {
                layer: name.clone(),
                reason: format!(
                    "media type {:?} is not a layer Berth applies (tar, tar+gzip or tar+zstd)",
                    l.media_type
                ),
            }
        })?;
        sources.push(LayerSource {
            name,
            reader: open(&l.digest)?,
            compression: Some(c),
            blob: Some((l.size, l.digest.clone())),
            diff_id: Some(diff.clone()),
        });
    }
    let mut out = unpack_layers(sources, dest, Some(&config_bytes), opts)?;
    out.manifest = Some(digest.clone());
    Ok(out)
}

/// Unpacks one layer tarball (`.tar`, `.tar.gz`, `.tar.zst`, detected by
/// content) into the new directory `dest`.
pub fn unpack_tarball(src: &Path, dest: &Path, opts: &Options) -> Result<Unpacked, UnpackError> {
    let f = File::open(src).map_err(|source| UnpackError::DestIo {
        path: src.to_path_buf(),
        source,
    })?;
    let name = src.file_name().map_or_else(
        || src.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let layer = LayerSource {
        name,
        reader: f,
        compression: None,
        blob: None,
        diff_id: None,
    };
    unpack_layers(vec![layer], dest, None, opts)
}

/// Applies `layers` in order into `dest/rootfs` (built in a staging directory
/// and renamed into place), writes `config` as `dest/config.json` when given,
/// and records the measurement.
pub fn unpack_layers<R: Read>(
    layers: Vec<LayerSource<R>>,
    dest: &Path,
    config: Option<&[u8]>,
    opts: &Options,
) -> Result<Unpacked, UnpackError> {
    let staging = Staging::new(dest)?;
    let n = layers.len();
    let res = (|| -> Result<(Measurement, u64, Stats), UnpackError> {
        let rootfs = staging.dir.join("rootfs");
        let root = rustix::fs::open(
            &rootfs,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UnpackError::DestIo {
            path: rootfs.clone(),
            source: e.into(),
        })?;
        let mut applier =
            apply::Applier::new(root, opts.policy, opts.ownership).map_err(|reason| {
                UnpackError::Dest {
                    path: dest.to_path_buf(),
                    reason,
                }
            })?;
        if let Some(owner) = opts.ownership.map(0, 0).ok().flatten() {
            std::os::unix::fs::chown(&rootfs, Some(owner.0), Some(owner.1)).map_err(|source| {
                UnpackError::DestIo {
                    path: rootfs.clone(),
                    source,
                }
            })?;
        }
        let mut counts = (0u64, 0u64);
        for layer in layers {
            counts = apply_one(&mut applier, layer, &opts.limits, counts)?;
        }
        if let Some(c) = config {
            let p = staging.dir.join("config.json");
            fs::write(&p, c).map_err(|source| UnpackError::DestIo { path: p, source })?;
        }
        let measurement = berth_runtime::Image::record(&staging.dir, opts.measure_threads)?;
        Ok((measurement, counts.0, applier.stats))
    })();
    let (measurement, bytes, stats) = res?;
    staging.commit()?;
    Ok(Unpacked {
        dir: dest.to_path_buf(),
        measurement,
        manifest: None,
        layers: n,
        bytes,
        stats,
    })
}

fn apply_one<R: Read>(
    applier: &mut apply::Applier,
    layer: LayerSource<R>,
    limits: &Limits,
    counts: (u64, u64),
) -> Result<(u64, u64), UnpackError> {
    let name = layer.name;
    let cap = layer.blob.as_ref().map_or(u64::MAX, |b| b.0);
    let mut blob = compress::Hashing::new(layer.reader, cap);
    let layer_err = |source: EntryError| UnpackError::Layer {
        layer: name.clone(),
        source,
    };
    let (counts, diff) = {
        let mut buffered = BufReader::with_capacity(128 * 1024, &mut blob);
        let head = buffered
            .fill_buf()
            .map_err(|e| layer_err(tar::TarError::Io(e).into()))?;
        let sniffed = Compression::sniff(head);
        let c = match layer.compression {
            None => sniffed,
            Some(declared) => {
                if declared != sniffed && !(declared == Compression::None && head.is_empty()) {
                    return Err(UnpackError::LayerRefused {
                        layer: name.clone(),
                        reason: format!(
                            "its media type declares {} but the content is {}: the image is \
                             malformed; rebuild it with the right media type",
                            declared.name(),
                            sniffed.name()
                        ),
                    });
                }
                declared
            }
        };
        let mut diff = compress::Hashing::new(compress::decoder(buffered, c), u64::MAX);
        let mut tar = tar::Reader::new(&mut diff, limits, counts.0, counts.1);
        if layer.blob.is_some() {
            tar = tar.lenient_end();
        }
        applier.apply_layer(&mut tar).map_err(layer_err)?;
        let counts = tar.consumed();
        tar.finish().map_err(|e| layer_err(e.into()))?;
        (counts, diff.finish().1)
    };
    let (size, blob_digest) = blob.finish();
    if let Some((want_size, want)) = &layer.blob {
        let got = Digest::from_sha256(blob_digest);
        if size != *want_size || &got != want {
            return Err(UnpackError::Verify {
                layer: name,
                what: "blob digest",
                expected: format!("{want} ({want_size} bytes)"),
                actual: format!("{got} ({size} bytes)"),
            });
        }
    }
    if let Some(want) = &layer.diff_id {
        let got = Digest::from_sha256(diff);
        if &got != want {
            return Err(UnpackError::Verify {
                layer: name,
                what: "uncompressed digest (diff id)",
                expected: want.to_string(),
                actual: got.to_string(),
            });
        }
    }
    Ok(counts)
}

/// A directory beside the destination, renamed into place on success and
/// removed otherwise.
#[derive(Debug)]
struct Staging {
    dir: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(dest: &Path) -> Result<Self, UnpackError> {
        let bad = |reason: &str| UnpackError::Dest {
            path: dest.to_path_buf(),
            reason: reason.to_string(),
        };
        if fs::symlink_metadata(dest).is_ok() {
            return Err(bad(
                "it already exists: choose a new directory or remove it",
            ));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| bad("it has no final path component"))?;
        let mut staged = std::ffi::OsString::from(".");
        staged.push(name);
        staged.push(".unpacking");
        let dir = dest.with_file_name(staged);
        let io = |source| UnpackError::DestIo {
            path: dir.clone(),
            source,
        };
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut b = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o755);
        b.create(&dir).map_err(io)?;
        b.create(dir.join("rootfs")).map_err(io)?;
        Ok(Self {
            dir,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    fn commit(mut self) -> Result<(), UnpackError> {
        fs::rename(&self.dir, &self.dest).map_err(|source| UnpackError::DestIo {
            path: self.dest.clone(),
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
