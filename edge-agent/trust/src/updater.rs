//! The TUF client workflow (specification §5): root chain, timestamp, snapshot,
//! targets, delegation search and target download, over a [`Transport`], persisting
//! every newly trusted file in a [`StateStore`] only after it passed every check.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::metadata::{check_hashes, HashError, StreamHashes, TargetFile};
use crate::names::{self, NameError};
use crate::store::{write_atomic, StateStore, StoreError};
use crate::transport::{FetchLimits, Transport, TransportError};
use crate::trusted::{TrustError, TrustedSet};

/// A point in time (UTC).
pub type Time = DateTime<Utc>;

/// The system clock, shifted by `BERTH_CLOCK_OFFSET_SECS` (signed seconds,
/// read once per process) when set: a test-only hook with which a
/// hardware-in-loop rig sets a simulated device's clock back or forward
/// without touching the host's. Unset (as on every real device): the
/// system clock itself.
pub fn now() -> Time {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let off = *OFFSET.get_or_init(|| {
        std::env::var("BERTH_CLOCK_OFFSET_SECS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    Utc::now() + chrono::Duration::seconds(off)
}

/// Client limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// Root versions fetched at most per refresh.
    pub max_root_rotations: u64,
    /// Targets roles visited at most in one delegation search.
    pub max_delegations: usize,
    pub root_max_len: u64,
    pub timestamp_max_len: u64,
    pub snapshot_max_len: u64,
    pub targets_max_len: u64,
    pub target_max_len: u64,
    /// Deadline and minimum rate of every fetch (the size cap is set per file).
    pub limits: FetchLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_root_rotations: 32,
            max_delegations: 32,
            root_max_len: 512 * 1024,
            timestamp_max_len: 16 * 1024,
            snapshot_max_len: 2 << 20,
            targets_max_len: 5 << 20,
            target_max_len: 1 << 30,
            limits: FetchLimits::default(),
        }
    }
}

/// Why an update or download failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{file} refused")]
    Trust {
        file: String,
        #[source]
        source: TrustError,
    },
    #[error("fetching metadata failed")]
    Transport(#[from] TransportError),
    #[error("trusted state")]
    Store(#[from] StoreError),
    #[error(
        "no trusted root in the state store: initialise it with a root.json obtained out of band"
    )]
    NoTrustedRoot,
    #[error("target {target}: no trusted targets role lists it (searched {searched} role(s))")]
    TargetNotFound { target: String, searched: usize },
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("target {target}: {source}")]
    TargetHash {
        target: String,
        #[source]
        source: HashError,
    },
    #[error("target {target}: declared length {length} exceeds the {cap}-byte cap")]
    TargetTooLarge {
        target: String,
        length: u64,
        cap: u64,
    },
    #[error("target {target}: fetching the target file failed")]
    TargetFetch {
        target: String,
        #[source]
        source: TransportError,
    },
    #[error("target {target}: cannot write {path}: {source}")]
    TargetFile {
        target: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("target {target}: no target transport configured (a target base URL is needed)")]
    NoTargetTransport { target: String },
    #[error("target {target}: writing {path}: {source}")]
    TargetWrite {
        target: String,
        path: String,
        #[source]
        source: StoreError,
    },
}

fn trust(file: impl Into<String>) -> impl FnOnce(TrustError) -> UpdateError {
    let file = file.into();
    move |source| UpdateError::Trust { file, source }
}

/// A TUF client bound to a state store and a metadata transport.
pub struct Updater<'a> {
    store: &'a dyn StateStore,
    metadata: &'a dyn Transport,
    targets: Option<&'a dyn Transport>,
    config: Config,
    trusted: TrustedSet,
    clock: DateTime<Utc>,
}

impl std::fmt::Debug for Updater<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("trusted", &self.trusted)
            .field("config", &self.config)
            .finish()
    }
}

/// Stores `root` as the trusted root after checking that it is signed by a threshold
/// of its own root keys (the out-of-band bootstrap).
pub fn init(store: &dyn StateStore, root: &[u8]) -> Result<(), UpdateError> {
    TrustedSet::new(root, Utc::now()).map_err(trust("trusted root"))?;
    store.save("root", root)?;
    Ok(())
}

impl<'a> Updater<'a> {
    /// Loads the trusted root from `store`. `now` is the clock; the reference time for
    /// expiry is the later of it and the store's time floor.
    pub fn new(
        store: &'a dyn StateStore,
        metadata: &'a dyn Transport,
        targets: Option<&'a dyn Transport>,
        config: Config,
        now: DateTime<Utc>,
    ) -> Result<Updater<'a>, UpdateError> {
        let reference = store.time_floor()?.map_or(now, |f| f.max(now));
        let root = store.load("root")?.ok_or(UpdateError::NoTrustedRoot)?;
        let trusted = TrustedSet::new(&root, reference).map_err(trust("trusted root.json"))?;
        Ok(Updater {
            store,
            metadata,
            targets,
            config,
            trusted,
            clock: now,
        })
    }

    /// The trusted set (after a refresh: the newest verified metadata).
    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    fn consistent(&self) -> bool {
        self.trusted
            .root()
            .meta
            .consistent_snapshot
            .unwrap_or(false)
    }

    fn fetch(&self, name: &str, cap: u64) -> Result<Vec<u8>, TransportError> {
        self.metadata.fetch(name, &self.config.limits.with_max(cap))
    }

    /// A full top-level update: root chain, timestamp, snapshot, targets. On success
    /// the time floor is raised to the clock; every file just verified was unexpired at
    /// that time, so a clock far in the future cannot be recorded (its refresh fails).
    pub fn refresh(&mut self) -> Result<(), UpdateError> {
        self.update_root()?;
        self.update_timestamp()?;
        self.update_snapshot()?;
        self.load_targets("targets", "root")?;
        self.store.raise_time_floor(self.clock)?;
        Ok(())
    }

    fn update_root(&mut self) -> Result<(), UpdateError> {
        let before = self.trusted.root().meta.clone();
        for _ in 0..self.config.max_root_rotations {
            let next = self.trusted.root().meta.common.version + 1;
            let name = format!("{next}.root.json");
            let bytes = match self.fetch(&name, self.config.root_max_len) {
                Ok(b) => b,
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e.into()),
            };
            self.trusted.update_root(&bytes).map_err(trust(&name))?;
            self.store.save("root", &bytes)?;
            tracing::info!(version = next, "trusted a new root");
        }
        self.trusted
            .check_root_expiry()
            .map_err(trust("root.json"))?;
        let after = &self.trusted.root().meta;
        let rotated = |role: &str| {
            let (b, a) = (before.role(role), after.role(role));
            b != a
                || b.is_some_and(|b| {
                    b.keyids
                        .iter()
                        .any(|k| before.keys.get(k) != after.keys.get(k))
                })
        };
        if rotated("timestamp") || rotated("snapshot") {
            tracing::info!("timestamp or snapshot keys rotated: forgetting their trusted metadata");
            self.store.remove("timestamp")?;
            self.store.remove("snapshot")?;
        }
        Ok(())
    }

    fn update_timestamp(&mut self) -> Result<(), UpdateError> {
        if let Some(local) = self.store.load("timestamp")? {
            if let Err(e) = self.trusted.load_local_timestamp(&local) {
                tracing::warn!(error = %e, "stored timestamp unusable; fetching a new one");
            }
        }
        let bytes = self.fetch("timestamp.json", self.config.timestamp_max_len)?;
        match self.trusted.update_timestamp(&bytes) {
            Ok(()) => self.store.save("timestamp", &bytes)?,
            Err(TrustError::EqualVersion { .. }) => {}
            Err(e) => return Err(trust("timestamp.json")(e)),
        }
        Ok(())
    }

    fn update_snapshot(&mut self) -> Result<(), UpdateError> {
        if let Some(local) = self.store.load("snapshot")? {
            match self.trusted.update_snapshot(&local, true) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "stored snapshot is not the current one"),
            }
        }
        let meta = self
            .trusted
            .timestamp()
            .map(|t| t.meta.snapshot_meta().clone())
            .ok_or_else(|| {
                trust("snapshot.json")(TrustError::Order {
                    role: "snapshot".into(),
                    needed: "timestamp".into(),
                })
            })?;
        let name = if self.consistent() {
            format!("{}.snapshot.json", meta.version)
        } else {
            "snapshot.json".into()
        };
        let cap = meta.length.unwrap_or(self.config.snapshot_max_len);
        let bytes = self.fetch(&name, cap)?;
        self.trusted
            .update_snapshot(&bytes, false)
            .map_err(trust(&name))?;
        self.store.save("snapshot", &bytes)?;
        Ok(())
    }

    fn load_targets(&mut self, role: &str, delegator: &str) -> Result<(), UpdateError> {
        if self.trusted.targets(role).is_some() {
            return Ok(());
        }
        if let Some(local) = self.store.load(role)? {
            match self.trusted.update_targets(&local, role, delegator) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(role, error = %e, "stored targets role is not current"),
            }
        }
        let file = format!("{role}.json");
        let meta = self
            .trusted
            .snapshot()
            .and_then(|s| s.meta.meta.get(&file).cloned())
            .ok_or_else(|| trust(&file)(TrustError::NotListed { role: role.into() }))?;
        let stem = names::quote(role);
        let name = if self.consistent() {
            format!("{}.{stem}.json", meta.version)
        } else {
            format!("{stem}.json")
        };
        let cap = meta.length.unwrap_or(self.config.targets_max_len);
        let bytes = self.fetch(&name, cap)?;
        self.trusted
            .update_targets(&bytes, role, delegator)
            .map_err(trust(&name))?;
        self.store.save(role, &bytes)?;
        Ok(())
    }

    /// Finds `target` by a pre-order depth-first search of the delegation graph
    /// (terminating delegations stop the search; at most `max_delegations` roles).
    pub fn target_info(&mut self, target: &str) -> Result<TargetFile, UpdateError> {
        names::check_target_path(target)?;
        if self.trusted.targets("targets").is_none() {
            self.refresh()?;
        }
        let mut stack = vec![("targets".to_string(), "root".to_string())];
        let mut visited = BTreeSet::new();
        while let Some((role, delegator)) = stack.pop() {
            if visited.len() >= self.config.max_delegations {
                tracing::warn!(
                    target,
                    cap = self.config.max_delegations,
                    "delegation search cap reached"
                );
                break;
            }
            if !visited.insert(role.clone()) {
                continue;
            }
            self.load_targets(&role, &delegator)?;
            let Some(t) = self.trusted.targets(&role) else {
                continue;
            };
            if let Some(info) = t.meta.targets.get(target) {
                return Ok(info.clone());
            }
            let mut children = Vec::new();
            if let Some(d) = &t.meta.delegations {
                for (child, terminating) in d.roles_for(target) {
                    children.push((child, role.clone()));
                    if terminating {
                        stack.clear();
                        break;
                    }
                }
            }
            stack.extend(children.into_iter().rev());
        }
        Err(UpdateError::TargetNotFound {
            target: target.into(),
            searched: visited.len(),
        })
    }

    /// The local file a target is stored in: `dir/<percent-encoded target path>`.
    pub fn target_file(dir: &Path, target: &str) -> PathBuf {
        dir.join(names::quote(target))
    }

    /// Verifies and stores `target` in `dir`; a present file with matching hashes is
    /// not fetched again. Returns the file's path.
    pub fn download(&mut self, target: &str, dir: &Path) -> Result<PathBuf, UpdateError> {
        let info = self.target_info(target)?;
        let path = Self::target_file(dir, target);
        if let Ok(existing) = std::fs::read(&path) {
            if check_hashes(target, &existing, Some(info.length), Some(&info.hashes)).is_ok() {
                return Ok(path);
            }
        }
        let (transport, name) = self.source_of(target, &info)?;
        let bytes = transport
            .fetch(&name, &self.config.limits.with_max(info.length))
            .map_err(|source| UpdateError::TargetFetch {
                target: target.into(),
                source,
            })?;
        check_hashes(target, &bytes, Some(info.length), Some(&info.hashes)).map_err(|source| {
            UpdateError::TargetHash {
                target: target.into(),
                source,
            }
        })?;
        write_atomic(&path, &bytes).map_err(|source| UpdateError::TargetWrite {
            target: target.into(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(path)
    }

    /// The transport a target comes from and the name it is fetched by
    /// (`DIR/HASH.BASE` with consistent snapshots), once its signed length
    /// is within the cap.
    fn source_of(
        &self,
        target: &str,
        info: &TargetFile,
    ) -> Result<(&'a dyn Transport, String), UpdateError> {
        if info.length > self.config.target_max_len {
            return Err(UpdateError::TargetTooLarge {
                target: target.into(),
                length: info.length,
                cap: self.config.target_max_len,
            });
        }
        let transport = self.targets.ok_or_else(|| UpdateError::NoTargetTransport {
            target: target.into(),
        })?;
        if !self.consistent() {
            return Ok((transport, target.to_string()));
        }
        let hash = info
            .hashes
            .get("sha256")
            .or_else(|| info.hashes.values().next())
            .cloned()
            .unwrap_or_default();
        let name = match target.rsplit_once('/') {
            Some((d, base)) => format!("{d}/{hash}.{base}"),
            None => format!("{hash}.{target}"),
        };
        Ok((transport, name))
    }

    /// Streams `target` into the file `dest` (created with `mode`) without
    /// holding it in memory: it is written to a temporary file beside
    /// `dest` while its length is capped at the signed length and its
    /// hashes are computed; only when both match is the file fsynced and
    /// renamed to `dest` (and the directory fsynced). On any failure
    /// `dest` is untouched and the temporary file is gone. Returns the
    /// verified target's metadata.
    pub fn download_to(
        &mut self,
        target: &str,
        dest: &Path,
        mode: u32,
    ) -> Result<TargetFile, UpdateError> {
        let info = self.target_info(target)?;
        let (transport, name) = self.source_of(target, &info)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let base = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("target");
        let tmp = dir.join(format!(".{base}.partial"));
        let write_err = |path: &Path, source: std::io::Error| UpdateError::TargetFile {
            target: target.into(),
            path: path.to_path_buf(),
            source,
        };
        let limits = self.config.limits.with_max(info.length);
        let streamed = (|| {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                .map_err(|e| write_err(&tmp, e))?;
            let mut sink = Hashing {
                out: std::io::BufWriter::with_capacity(64 * 1024, file),
                hashes: StreamHashes::for_hashes(Some(&info.hashes)),
            };
            transport
                .fetch_into(&name, &limits, &mut sink)
                .map_err(|source| UpdateError::TargetFetch {
                    target: target.into(),
                    source,
                })?;
            sink.hashes
                .check(target, Some(info.length), Some(&info.hashes))
                .map_err(|source| UpdateError::TargetHash {
                    target: target.into(),
                    source,
                })?;
            sink.out.flush().map_err(|e| write_err(&tmp, e))?;
            let file = sink
                .out
                .into_inner()
                .map_err(|e| write_err(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| write_err(&tmp, e))?;
            std::fs::rename(&tmp, dest).map_err(|e| write_err(dest, e))?;
            if let Ok(d) = std::fs::File::open(dir) {
                d.sync_all().map_err(|e| write_err(dir, e))?;
            }
            Ok(info)
        })();
        if streamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        streamed
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    out: W,
    hashes: StreamHashes,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hashes.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
