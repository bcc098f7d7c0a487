//! Offline bundles: one file that carries a signed release, the metadata that
//! proves it, and exactly the image blobs it needs, to a device without a
//! network (a USB stick, a maintenance laptop).
//!
//! # Format (version 1)
//!
//! A POSIX tar archive (ustar headers, pax records for long names), regular
//! files only, with these entries in this order:
//!
//! | entry | contents |
//! |---|---|
//! | `bundle.json` | the manifest ([`format::BundleManifest`]): format version, fleet, release target name, generation, architectures, and per image the manifest digest, blob count and bytes |
//! | `metadata/N.root.json` | every root version from 1 to the newest, so a device that trusts any older root walks the rotation chain |
//! | `metadata/timestamp.json`, `metadata/N.snapshot.json`, `metadata/N.targets.json`, `metadata/N.<role>.json` | the files the TUF client fetches to find the release target (delegated roles included), named as the repository serves them |
//! | `targets/<dir>/<sha256>.<name>` | the release document, as the repository serves it |
//! | `oci-layout`, `index.json` | an OCI image layout: one index entry per image manifest, with its platform |
//! | `blobs/sha256/<hex>` | image manifests first, then configs, then layers; each blob once |
//!
//! The root of the archive is an OCI image layout, so the archive is also an
//! `oci-archive` (index entries are named `<workload>-<arch>`:
//! `skopeo inspect oci-archive:FILE:sensor-arm64`), `tar -x` gives a layout
//! umoci reads, and `metadata/` and `targets/` are exactly what a TUF client
//! reading a directory expects. The same inputs give the same bytes (fixed
//! owners, modes and times; a fixed order). Metadata comes before the blobs so
//! the release is verified before any blob is read, and manifests before
//! their configs and layers so each blob's digest and size are known from
//! verified data when it arrives.
//!
//! The archive is not compressed. Layers are compressed already (gzip or
//! zstd), so compressing again gains little and costs the device CPU time;
//! and an uncompressed archive is read in one pass in constant memory: every
//! blob goes from the file straight into the blob store's ingest with its
//! digest computed on the way, without a second copy on the device's flash.
//! An importer also accepts a bundle compressed as a whole with zstd or gzip
//! (`zstd FILE`), recognised by its magic number.
//!
//! # Trust
//!
//! Nothing is trusted for being in a bundle. `bundle.json` only names the
//! release target and is shown to operators. [`import()`] runs the same checks
//! as an online update:
//!
//! 1. the archive is read with hard limits (entry count, name length, sizes of
//!    every kind of file, total bytes); only the names above are accepted, no
//!    links, devices, absolute names or `..`; metadata and target files are
//!    written into a private temporary directory;
//! 2. the TUF [`berth_trust::Updater`] runs over that directory
//!    ([`berth_trust::DirTransport`]) from the device's trusted state: root
//!    rotation, rollback, freeze (expiry against the persisted time floor),
//!    thresholds, mix-and-match and length/hash checks all apply; its writes
//!    are staged and reach the trusted state only when the whole import
//!    succeeded;
//! 3. the release target is verified against its signed length and hashes,
//!    then parsed and validated as a release document for the expected fleet;
//! 4. for the device's architecture, each image manifest the release pins,
//!    then each config and layer the verified manifest lists, is streamed
//!    into the blob store's ingest through the digest + size
//!    [`berth_image::registry::limits::Verifier`]; a blob is renamed into the
//!    store only with that proof, and only after every blob verified. Blobs
//!    of other architectures are skipped unread.
//!
//! On any error the partial blobs are removed and nothing is committed: the
//! trusted metadata, the time floor and the blob store are as before. On
//! success the blobs are committed first, then the trusted metadata, then the
//! release document is written to the targets directory. No store references
//! are set: the agent references an image's blobs when it stages a release.
//! (A process killed mid-import leaves only partial files under the store's
//! `ingest/`, which never count as blobs.)
//!
//! Code: [`mod@format`] (names, limits, manifest, tar writer), `read` (the
//! one-pass reader and the TUF step), `blobs` (which blobs the verified
//! release needs, each verified as it is read), [`mod@import`] (the device and
//! operator entry points), [`mod@create`], and `stage` (staged trust writes, a
//! recording transport, a private temporary directory).
//!
//! [`verify`] does the same against a `root.json` with a throw-away state
//! store and without writing blobs anywhere, for every architecture the
//! bundle carries. [`create()`] builds a bundle from a repository directory
//! (as `berth repo publish` writes it) and the OCI image layouts or blob
//! stores that hold the images; it verifies the repository's metadata the way
//! a device will before packing, so an expired or inconsistent repository is
//! refused at the operator's desk rather than at the device.

mod blobs;
pub mod create;
pub mod format;
pub mod import;
mod read;
mod stage;

use std::path::PathBuf;

use berth_trust::trusted::{TrustError, TrustedSet};
use berth_trust::updater::{Time, UpdateError};

pub use create::{create, CreateOptions};
pub use format::{BundleManifest, ImageEntry};
pub use import::{import, verify, ImportTarget, Imported};

/// The TUF target a fleet's release is published as.
pub use crate::source::release_target;

use crate::release::{Arch, ReleaseError};

/// Parses an architecture name as the release document spells it.
pub fn parse_arch(s: &str) -> Result<Arch, String> {
    match s {
        "amd64" => Ok(Arch::Amd64),
        "arm64" => Ok(Arch::Arm64),
        "arm" => Ok(Arch::Arm),
        _ => Err(format!(
            "unknown architecture {s:?}: use amd64, arm64 or arm"
        )),
    }
}

/// The versions of the top-level metadata a bundle was verified with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
}

impl Versions {
    fn of(t: &TrustedSet) -> Self {
        Self {
            root: t.root().meta.common.version,
            timestamp: t.timestamp().map_or(0, |v| v.meta.common.version),
            snapshot: t.snapshot().map_or(0, |v| v.meta.common.version),
            targets: t.targets("targets").map_or(0, |v| v.meta.common.version),
        }
    }
}

/// What a bundle holds, as verified (by [`create()`] or [`verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub file: PathBuf,
    /// The bundle's manifest, recomputed from verified content.
    pub manifest: BundleManifest,
    pub versions: Versions,
    /// Size of the bundle file.
    pub file_bytes: u64,
}

/// Why creating, importing or verifying a bundle failed. Every message names
/// the input and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {what} {}: {source}; check the path, its permissions and free space, then retry", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {}: not a readable bundle ({reason}); copy it again (it may be truncated or damaged) or create it again with `berth bundle create`", file.display())]
    Tar { file: PathBuf, reason: String },
    #[error("bundle {}: entry {entry:?} refused: {why}; the file was not written by `berth bundle create` or was altered: create it again", file.display())]
    Entry {
        file: PathBuf,
        entry: String,
        why: String,
    },
    #[error("bundle {}: {why}; create it again with `berth bundle create`", file.display())]
    Format { file: PathBuf, why: String },
    #[error("bundle {}: it carries release target {found} but this device follows {expected}; use a bundle created for this device's fleet (`berth bundle create --fleet …`)", file.display())]
    WrongTarget {
        file: PathBuf,
        found: String,
        expected: String,
    },
    #[error("bundle {}: its signed metadata was refused: {hint}", file.display())]
    Trust {
        file: PathBuf,
        hint: String,
        #[source]
        source: Box<UpdateError>,
    },
    #[error("bundle {}: the signed release document is not usable", file.display())]
    Release {
        file: PathBuf,
        #[source]
        source: ReleaseError,
    },
    #[error("bundle {}: image {image}: {why}; publish a release that pins a usable image", file.display())]
    Image {
        file: PathBuf,
        image: String,
        why: String,
    },
    #[error("bundle {}: blob {digest} ({what}) fails verification: {reason}; it was not stored — the bundle is damaged or was tampered with: copy it again or create it again with `berth bundle create`", file.display())]
    Corrupt {
        file: PathBuf,
        digest: String,
        what: String,
        reason: String,
    },
    #[error("bundle {}: blob {digest} ({what}) is missing; create the bundle again with `berth bundle create`{hint}", file.display())]
    Missing {
        file: PathBuf,
        digest: String,
        what: String,
        hint: String,
    },
    #[error("bundle {}: storing its blobs failed (nothing was committed); free space or repair the blob store, then import again", file.display())]
    Store {
        file: PathBuf,
        #[source]
        source: berth_image::store::StoreError,
    },
    #[error("bundle {}: saving the verified metadata failed; check the state database is writable and not in use, then import again", file.display())]
    TrustStore {
        file: PathBuf,
        #[source]
        source: berth_trust::store::StoreError,
    },
    #[error("repository {}: {why}", repo.display())]
    Repo { repo: PathBuf, why: String },
    #[error("repository {}: its metadata for {target} does not verify: {hint}", repo.display())]
    RepoTrust {
        repo: PathBuf,
        target: String,
        hint: String,
        #[source]
        source: Box<UpdateError>,
    },
    #[error("repository {}: the signed release document is not usable", repo.display())]
    RepoRelease {
        repo: PathBuf,
        #[source]
        source: ReleaseError,
    },
    #[error("--from {}: not an OCI image layout or blob store (no blobs/sha256/ inside); pass the output of `berth image build` or a blob store directory", dir.display())]
    NotSource { dir: PathBuf },
    #[error("image {image}: {what} {digest} is in none of {searched}; build or pull the image into one of them (`berth image build DIR -o LAYOUT`, `berth image pull REF@DIGEST --store DIR`) or pass the directory that has it with --from")]
    MissingSource {
        image: String,
        what: String,
        digest: String,
        searched: String,
    },
    #[error("image {image}: {what} {digest} in {}: {why}; rebuild or pull the image again", path.display())]
    BadSource {
        image: String,
        what: &'static str,
        digest: String,
        path: PathBuf,
        why: String,
    },
}

fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { what, path, source }
}

/// What to do about a refused update, for a device importing a bundle.
fn import_hint(e: &UpdateError) -> String {
    let next = "create the bundle again with `berth bundle create` from the published repository";
    match e {
        UpdateError::Trust { source, .. } => match source {
            TrustError::Rollback { .. } => "it is older than the metadata this device already trusts (rollback refused); use a bundle created after the device's last update".into(),
            TrustError::Expired { .. } => "its metadata has expired; refresh the timestamp (`berth repo refresh-timestamp`) or publish again, then create a new bundle".into(),
            TrustError::Verify(_) => "a signature does not verify with the keys this device trusts; create the bundle from the repository whose root this device trusts".into(),
            TrustError::Hash(_) | TrustError::VersionMismatch { .. } => {
                format!("its metadata files do not match each other (damaged or tampered with); {next}")
            }
            _ => next.to_string(),
        },
        UpdateError::TargetHash { .. } => format!("the release document does not match its signed length and hashes (damaged or tampered with); {next}"),
        UpdateError::NoTrustedRoot => "this device has no trusted root; initialise it with the fleet's root.json first".into(),
        UpdateError::TargetNotFound { .. } => "no trusted role lists the release target; publish the release (`berth repo add-target`, `berth repo publish`) and create the bundle again".into(),
        UpdateError::Transport(t) | UpdateError::TargetFetch { source: t, .. } if t.is_not_found() => {
            format!("it lacks a file the chain of trust needs; {next}")
        }
        _ => next.into(),
    }
}

/// What to do about a repository that does not verify, for an operator.
fn repo_hint(e: &UpdateError) -> String {
    match e {
        UpdateError::Trust {
            source: TrustError::Expired { .. },
            ..
        } => "refresh the timestamp (`berth repo refresh-timestamp`) or publish again (`berth repo publish`), then create the bundle".into(),
        UpdateError::TargetNotFound { .. } => "add the release (`berth repo add-target --path …`) and publish (`berth repo publish`)".into(),
        _ => "publish the repository again (`berth repo publish`) and check it is the directory `berth repo publish` writes (metadata/ and targets/)".into(),
    }
}

/// The reference time of bundle operations: the system clock.
pub fn now() -> Time {
    berth_trust::updater::now()
}
