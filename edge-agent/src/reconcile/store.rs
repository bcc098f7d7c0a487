//! The update state in sled: every transition one transaction, flushed
//! before the side effect it guards.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::machine::{Event, Outcome, Refusal, State};

const STATE_KEY: &[u8] = b"update";

/// A problem with the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store {path}: {source}; check the state directory's permissions and free space")]
    Open { path: PathBuf, source: sled::Error },
    #[error("state store {path}: {what}: {source}; the state directory may be full or damaged")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: sled::Error,
    },
    #[error("state store {path}: the stored update state is unreadable ({source}); restore the state directory from a backup or re-provision the device")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// A finished update, as `berth history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time_ms: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The persisted update state machine.
#[derive(Debug, Clone)]
pub struct UpdateStore {
    path: PathBuf,
    db: sled::Db,
    state: sled::Tree,
    history: sled::Tree,
}

/// How the agent's state database is opened: space over speed (flash
/// wear); a page cache sized for a device (the whole state — TUF metadata,
/// two release documents, history, launch log, image and blob references —
/// is a few hundred KiB at most); no periodic flusher thread, because
/// every write is flushed before the side effect it guards (sled still
/// cleans its log segments as pages are rewritten).
pub fn db_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .mode(sled::Mode::LowSpace)
        .cache_capacity(256 << 10)
        .flush_every_ms(None)
}

/// Moves every tree of the separate database at `old` (left by an earlier
/// version) into `db`, flushes, then removes `old`. A crash before the
/// removal repeats the copy on the next start, which writes the same values.
pub fn absorb(old: &Path, db: &sled::Db) -> Result<bool, StoreError> {
    if !old.join("conf").exists() {
        return Ok(false);
    }
    let io = |what| {
        let path = old.to_path_buf();
        move |source| StoreError::Io { path, what, source }
    };
    let from = sled::Config::new()
        .path(old)
        .open()
        .map_err(io("open the old database"))?;
    for name in from.tree_names() {
        if name.as_ref() == b"__sled__default" {
            continue;
        }
        let src = from.open_tree(&name).map_err(io("open an old tree"))?;
        let dst = db.open_tree(&name).map_err(io("open a tree"))?;
        for kv in src.iter() {
            let (k, v) = kv.map_err(io("read an old tree"))?;
            dst.insert(k, v).map_err(io("copy an old tree"))?;
        }
    }
    db.flush().map_err(io("flush the copied trees"))?;
    drop(from);
    std::fs::remove_dir_all(old).map_err(|e| StoreError::Io {
        path: old.to_path_buf(),
        what: "remove the old database",
        source: sled::Error::Io(e),
    })?;
    Ok(true)
}

impl UpdateStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = db_config(dir).open().map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::with_db(dir, db)
    }

    /// Uses trees of an already open database.
    pub fn with_db(dir: &Path, db: sled::Db) -> Result<Self, StoreError> {
        let io = |what| {
            let path = dir.to_path_buf();
            move |source| StoreError::Io { path, what, source }
        };
        let state = db.open_tree("update").map_err(io("open tree update"))?;
        let history = db.open_tree("history").map_err(io("open tree history"))?;
        Ok(Self {
            path: dir.to_path_buf(),
            db,
            state,
            history,
        })
    }

    /// The current state (idle with nothing committed on a new device).
    pub fn load(&self) -> Result<State, StoreError> {
        match self.state.get(STATE_KEY).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            what: "read the update state",
            source,
        })? {
            None => Ok(State::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Applies `event`: the new state and, when an update finished, its
    /// history entry are written in one transaction and flushed before this
    /// returns. On a refusal or an error nothing changes.
    pub fn apply(&self, event: Event, now_ms: u64) -> Result<State, StoreError> {
        let (next, outcome) = self.load()?.next(event)?;
        self.write(
            &next,
            outcome.map(|outcome| HistoryEntry {
                time_ms: now_ms,
                outcome,
            }),
        )?;
        Ok(next)
    }

    /// Replaces the state (used for recovery after a restart).
    pub fn replace(&self, next: &State) -> Result<(), StoreError> {
        self.write(next, None)
    }

    fn write(&self, next: &State, entry: Option<HistoryEntry>) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(next).expect("state serializes");
        let entry = entry.map(|e| serde_json::to_vec(&e).expect("history serializes"));
        (&self.state, &self.history)
            .transaction(|(st, hist)| {
                st.insert(STATE_KEY, bytes.as_slice())?;
                if let Some(e) = &entry {
                    let id = hist.generate_id()?;
                    hist.insert(&id.to_be_bytes(), e.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                what: "write the update state",
                source: match e {
                    TransactionError::Storage(source) => source,
                    TransactionError::Abort(()) => {
                        sled::Error::Unsupported("transaction aborted".into())
                    }
                },
            })?;
        self.db.flush().map_err(|source| StoreError::Io {
            path: self.path.clone(),
            what: "flush the update state",
            source,
        })?;
        crash_point(next.phase.0.name());
        Ok(())
    }

    /// The reason generation `generation` was rolled back, from the newest
    /// history entry that says so.
    pub fn failure(&self, generation: u64) -> Result<Option<String>, StoreError> {
        for v in self.history.iter().values().rev() {
            let v = v.map_err(|source| StoreError::Io {
                path: self.path.clone(),
                what: "read the history",
                source,
            })?;
            let Ok(e) = serde_json::from_slice::<HistoryEntry>(&v) else {
                continue;
            };
            if e.outcome.generation == generation && e.outcome.result == "rolled-back" {
                return Ok(Some(e.outcome.reason));
            }
        }
        Ok(None)
    }

    /// Finished updates, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        self.history
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(|source| StoreError::Io {
                    path: self.path.clone(),
                    what: "read the history",
                    source,
                })?;
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    path: self.path.clone(),
                    source,
                })
            })
            .collect()
    }
}

/// Fault injection for crash tests and hardware-in-loop rigs:
/// `BERTH_FAULT_CRASH_AFTER=PHASE[,PHASE…]` makes the agent die at once
/// (abort: no destructor, no flush beyond what is already durable) right
/// after a transition into one of the phases is on disk;
/// `BERTH_FAULT_STALL_AFTER=PHASE[,PHASE…]` makes the update hang there
/// instead (a stuck reconciler). Every transition is also a heartbeat of the
/// main loop (see [`crate::hw`]).
fn crash_point(phase: &str) {
    static CRASH: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    static STALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let named = |cell: &'static std::sync::OnceLock<Vec<String>>, var: &str| {
        cell.get_or_init(|| {
            std::env::var(var)
                .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|p| p == phase)
    };
    if named(&CRASH, "BERTH_FAULT_CRASH_AFTER") {
        eprintln!("berth-agent: BERTH_FAULT_CRASH_AFTER={phase}: crashing on purpose");
        std::process::abort();
    }
    crate::hw::beat();
    if named(&STALL, "BERTH_FAULT_STALL_AFTER") {
        // A stuck reconciler: the watchdog tests and rigs use it.
        eprintln!("berth-agent: BERTH_FAULT_STALL_AFTER={phase}: stalling on purpose");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
