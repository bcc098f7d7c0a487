//! Subordinate id ranges: every workload gets a user namespace whose root maps
//! to a range of host ids of its own, never host root and never the caller.
//!
//! The pool comes from an `/etc/subuid`-style file (`name:start:count`); the
//! runtime cuts it into slots of [`SLOT`] ids and hands one slot to each
//! container, recorded under the runtime root so that two containers never
//! share a range.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Ids per workload (a full 16-bit range, like every common image expects).
pub const SLOT: u32 = 65_536;

/// Default pool used when no subordinate-id file names the caller: 1000 slots
/// starting at 2^20, well above regular users and system accounts.
pub const DEFAULT_POOL: IdRange = IdRange {
    start: 1 << 20,
    size: SLOT * 1000,
};

/// A contiguous range of host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub start: u32,
    pub size: u32,
}

impl IdRange {
    /// The host id of the container's root.
    pub fn host_root(&self) -> u32 {
        self.start
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("cannot read subordinate id file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: expected 'name:start:count' with numbers")]
    Parse { path: PathBuf, line: usize },
    #[error("no subordinate id range for '{name}' in {path}: add a line '{name}:START:COUNT' with COUNT >= {SLOT}")]
    NoEntry { name: String, path: PathBuf },
    #[error("the subordinate id range {start}+{size} contains host root or the caller's uid {caller}: choose a range above both")]
    Unsafe { start: u32, size: u32, caller: u32 },
    #[error(
        "all {slots} subordinate id slots are in use: delete stopped containers or grow the range"
    )]
    Exhausted { slots: u32 },
    #[error("cannot update the id allocation table {path}: {source}")]
    Table {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads the ranges of `name` from an `/etc/subuid`-style file.
pub fn pool_from_file(path: &Path, name: &str) -> Result<Vec<IdRange>, IdMapError> {
    let text = fs::read_to_string(path).map_err(|source| IdMapError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        let parsed = (f.len() == 3)
            .then(|| Some((f[1].parse::<u32>().ok()?, f[2].parse::<u32>().ok()?)))
            .flatten();
        let Some((start, size)) = parsed else {
            return Err(IdMapError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
            });
        };
        if f[0] == name {
            out.push(IdRange { start, size });
        }
    }
    if out.iter().all(|r| r.size < SLOT) {
        return Err(IdMapError::NoEntry {
            name: name.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Splits a pool into slots, refusing ranges that cover host root or `caller`.
pub fn slots(pool: &[IdRange], caller: u32) -> Result<Vec<IdRange>, IdMapError> {
    let mut out = Vec::new();
    for r in pool {
        let end = u64::from(r.start) + u64::from(r.size);
        if r.start == 0 || (u64::from(r.start)..end).contains(&u64::from(caller)) {
            return Err(IdMapError::Unsafe {
                start: r.start,
                size: r.size,
                caller,
            });
        }
        let mut s = u64::from(r.start);
        while s + u64::from(SLOT) <= end {
            out.push(IdRange {
                start: s as u32,
                size: SLOT,
            });
            s += u64::from(SLOT);
        }
    }
    Ok(out)
}

/// The allocation table: container → range, kept in one machine-wide
/// table ([`table_file`]) under an exclusive lock, so every runtime root on
/// the machine (several agents, tests, rigs) draws distinct ranges from the
/// same subordinate pool. Entries are keyed `<root>/<id>`.
#[derive(Debug)]
pub struct Allocator {
    table: PathBuf,
    /// Whether each new table is synced before it replaces the old one
    /// (only when the boot cannot be identified, see [`table_file`]).
    sync: bool,
    lock: PathBuf,
    prefix: String,
    slots: Vec<IdRange>,
}

/// The largest table rewritten in place: one page.
const IN_PLACE_MAX: usize = 4096;

/// The identity of the running boot (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| id.to_string())
}

/// The table's file in `dir`: `idmap-<boot id>.json`, one per boot.
/// Containers do not outlive a reboot and neither do their ranges, so the
/// table is rewritten in place (one page) or replaced atomically (rename),
/// and never synced: a table of an
/// earlier boot, perhaps torn by the power cut that ended it, is never read
/// again (and is removed when the boot's first table is written). Without a
/// boot id the file is `idmap.json`, synced before every rename; with one,
/// a readable `idmap.json` (the table-per-machine format) seeds the boot's
/// first table and is then removed.
pub fn table_file(dir: &Path) -> PathBuf {
    match boot_id() {
        Some(b) => dir.join(format!("idmap-{b}.json")),
        None => dir.join("idmap.json"),
    }
}

/// Removes the tables of earlier boots from `dir` (all but `current`).
fn remove_stale_tables(dir: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("idmap-") && name.ends_with(".json") && e.path() != current {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Where the machine-wide table lives: `/run/berth-ids` for root,
/// `$XDG_RUNTIME_DIR/berth-ids` otherwise.
pub fn table_dir() -> PathBuf {
    // The host uid: the same table from inside a workload's user namespace
    // (an unprivileged launch, `crate::rootless`) as from outside.
    let uid = crate::rootless::host_euid();
    if uid == 0 {
        return PathBuf::from("/run/berth-ids");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("berth-ids"))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("berth-ids-{uid}")))
}

impl Allocator {
    /// The allocator of runtime root `root`, on the machine-wide table.
    pub fn new(root: &Path, slots: Vec<IdRange>) -> Self {
        Self::with_table(&table_dir(), root, slots)
    }

    /// The allocator of `root` on the table in `dir`.
    pub fn with_table(dir: &Path, root: &Path, slots: Vec<IdRange>) -> Self {
        let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let table = table_file(dir);
        Self {
            sync: table.file_name().is_some_and(|n| n == "idmap.json"),
            table,
            lock: dir.join("idmap.lock"),
            prefix: format!("{}/", root.display()),
            slots,
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The range `id` holds, if any (under a shared lock: the table may be
    /// rewritten in place).
    pub fn lookup(&self, id: &str) -> Option<IdRange> {
        let lock = File::open(&self.lock).ok()?;
        let _guard = Flock::lock(lock, FlockArg::LockShared).ok()?;
        let map: BTreeMap<String, IdRange> =
            serde_json::from_slice(&fs::read(&self.table).ok()?).ok()?;
        map.get(&self.key(id)).copied()
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, IdRange>) -> Result<T, IdMapError>,
    ) -> Result<T, IdMapError> {
        let terr = |source| IdMapError::Table {
            path: self.table.clone(),
            source,
        };
        if let Some(dir) = self.lock.parent() {
            fs::create_dir_all(dir).map_err(terr)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(terr)?;
        let _guard = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| terr(e.into()))?;
        let parse = |b: &[u8]| -> Result<BTreeMap<String, IdRange>, IdMapError> {
            serde_json::from_slice(b).map_err(|e| terr(io::Error::other(e)))
        };
        let dir = self.table.parent().unwrap_or(Path::new("."));
        let legacy = dir.join("idmap.json");
        // The table of this boot, open for an in-place rewrite, and its length.
        let current = match OpenOptions::new().read(true).write(true).open(&self.table) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(terr(e)),
        };
        let mut old_len = 0;
        let (mut map, before, first) = match &current {
            Some(f) => {
                let mut b = Vec::new();
                io::Read::read_to_end(&mut &*f, &mut b).map_err(terr)?;
                old_len = b.len();
                let map = parse(&b)?;
                (map.clone(), map, false)
            }
            None => {
                // The boot's first table starts from the ranges a runtime
                // of the table-per-machine format handed out, if its table
                // is readable: their containers may still run.
                let seed = if self.table == legacy {
                    None
                } else {
                    fs::read(&legacy).ok().and_then(|b| parse(&b).ok())
                };
                (seed.unwrap_or_default(), BTreeMap::new(), true)
            }
        };
        let out = f(&mut map)?;
        if map != before {
            let mut bytes = serde_json::to_vec(&map).map_err(|e| terr(io::Error::other(e)))?;
            // A table of this boot that fits one page is rewritten in place,
            // padded with blanks to its old length: one write of one page,
            // which a crash of this process cannot tear (readers hold the
            // lock shared). Larger tables, and the synced table of an
            // unknown boot, are replaced whole.
            let padded = old_len.max(bytes.len());
            if let (Some(f), false, true) = (&current, self.sync, padded <= IN_PLACE_MAX) {
                bytes.resize(padded, b' ');
                std::os::unix::fs::FileExt::write_all_at(f, &bytes, 0).map_err(terr)?;
                return Ok(out);
            }
            let tmp = self.table.with_extension("json.tmp");
            // Replaced atomically; synced only without a boot id (see
            // `table_file`): the rename alone protects it from a crash of
            // this process.
            let mut t = File::create(&tmp).map_err(terr)?;
            io::Write::write_all(&mut t, &bytes).map_err(terr)?;
            if self.sync {
                t.sync_all().map_err(terr)?;
            }
            drop(t);
            fs::rename(&tmp, &self.table).map_err(terr)?;
            if first && self.table != legacy {
                let _ = fs::remove_file(&legacy);
                remove_stale_tables(dir, &self.table);
            }
        }
        Ok(out)
    }

    /// The range of `id`, allocating the lowest free slot if it has none.
    pub fn acquire(&self, id: &str) -> Result<IdRange, IdMapError> {
        let key = self.key(id);
        self.locked(|map| {
            if let Some(r) = map.get(&key) {
                return Ok(*r);
            }
            let free = self
                .slots
                .iter()
                .find(|s| !map.values().any(|u| u.start == s.start))
                .copied()
                .ok_or(IdMapError::Exhausted {
                    slots: self.slots.len() as u32,
                })?;
            map.insert(key, free);
            Ok(free)
        })
    }

    /// Returns the slot of `id` to the pool.
    pub fn release(&self, id: &str) -> Result<(), IdMapError> {
        let key = self.key(id);
        self.locked(|map| {
            map.remove(&key);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_slot() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("subuid");
        fs::write(&f, "# c\nalice:100000:65536\nberth:200000:131072\n").unwrap();
        let pool = pool_from_file(&f, "berth").unwrap();
        assert_eq!(
            pool,
            [IdRange {
                start: 200_000,
                size: 131_072
            }]
        );
        assert_eq!(slots(&pool, 0).unwrap().len(), 2);
        assert!(matches!(
            pool_from_file(&f, "bob"),
            Err(IdMapError::NoEntry { .. })
        ));
        fs::write(&f, "berth:x:1\n").unwrap();
        assert!(matches!(
            pool_from_file(&f, "berth"),
            Err(IdMapError::Parse { line: 1, .. })
        ));
        assert!(slots(
            &[IdRange {
                start: 0,
                size: SLOT
            }],
            1000
        )
        .is_err());
        assert!(slots(
            &[IdRange {
                start: 990,
                size: SLOT
            }],
            1000
        )
        .is_err());
    }

    /// An allocator of root `dir` with its table in `dir`, on `n` slots from 100000.
    fn allocator(dir: &Path, n: u32) -> Allocator {
        let pool = [IdRange {
            start: 100_000,
            size: SLOT * n,
        }];
        Allocator::with_table(dir, dir, slots(&pool, 0).unwrap())
    }

    #[test]
    fn distinct_ranges_until_released() {
        let d = tempfile::tempdir().unwrap();
        let a = allocator(d.path(), 2);
        let r1 = a.acquire("one").unwrap();
        let r2 = a.acquire("two").unwrap();
        assert_ne!(r1, r2);
        assert_eq!(a.acquire("one").unwrap(), r1);
        assert!(matches!(
            a.acquire("three"),
            Err(IdMapError::Exhausted { slots: 2 })
        ));
        a.release("one").unwrap();
        assert_eq!(a.acquire("three").unwrap(), r1);
    }

    #[test]
    fn tables_of_earlier_boots_are_never_read_and_are_removed() {
        let d = tempfile::tempdir().unwrap();
        // Torn by a power cut: not JSON.
        let stale = d
            .path()
            .join("idmap-00000000-0000-0000-0000-000000000000.json");
        fs::write(&stale, b"{\"/r/a\": {\"sta").unwrap();
        let a = allocator(d.path(), 1);
        let name = a.table.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("idmap-") && name.ends_with(".json"),
            "{name}"
        );
        assert_ne!(a.table, stale);
        assert!(!a.sync, "a table of a known boot is not synced");
        assert_eq!(a.acquire("one").unwrap().start, 100_000);
        assert!(!stale.exists(), "the earlier boot's table is left");
        assert_eq!(a.lookup("one").map(|r| r.start), Some(100_000));
    }

    #[test]
    fn a_table_per_machine_seeds_the_first_table_of_the_boot() {
        let d = tempfile::tempdir().unwrap();
        let legacy = d.path().join("idmap.json");
        let held = format!("{}/old", d.path().display());
        fs::write(
            &legacy,
            format!("{{\"{held}\":{{\"start\":100000,\"size\":{SLOT}}}}}"),
        )
        .unwrap();
        let a = allocator(d.path(), 2);
        assert_eq!(a.acquire("new").unwrap().start, 100_000 + SLOT);
        assert_eq!(a.lookup("old").map(|r| r.start), Some(100_000));
        assert!(!legacy.exists(), "the table-per-machine file is left");
        a.release("old").unwrap();
        assert_eq!(a.acquire("again").unwrap().start, 100_000);
    }

    #[test]
    fn small_tables_are_rewritten_in_place_and_large_ones_replaced() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let a = allocator(d.path(), 80);
        a.acquire("one").unwrap();
        let ino = fs::metadata(&a.table).unwrap().ino();
        a.acquire("two").unwrap();
        let grown = fs::metadata(&a.table).unwrap();
        assert_eq!(grown.ino(), ino, "a one-page table is replaced");
        a.release("two").unwrap();
        let shrunk = fs::metadata(&a.table).unwrap();
        assert_eq!(shrunk.len(), grown.len(), "padded to its old length");
        assert_eq!(a.lookup("two"), None);
        assert_eq!(a.lookup("one").map(|r| r.start), Some(100_000));
        let mut i = 0;
        while fs::metadata(&a.table).unwrap().len() as usize <= IN_PLACE_MAX {
            a.acquire(&format!("c{i}")).unwrap();
            i += 1;
        }
        // Over one page, a change writes a new file and renames it over the
        // table, which exists meanwhile: the new file's inode differs from
        // the one it replaces (not necessarily from every earlier one, which
        // the filesystem may have reused).
        let before = fs::metadata(&a.table).unwrap().ino();
        a.acquire(&format!("c{i}")).unwrap();
        assert_ne!(
            fs::metadata(&a.table).unwrap().ino(),
            before,
            "a table over one page is rewritten in place"
        );
        let last = u32::try_from(i).unwrap();
        assert_eq!(
            a.lookup(&format!("c{i}")).map(|r| r.start),
            Some(100_000 + (last + 1) * SLOT)
        );
        for j in i + 1..79 {
            a.acquire(&format!("c{j}")).unwrap();
        }
        assert!(matches!(
            a.acquire("more"),
            Err(IdMapError::Exhausted { .. })
        ));
    }

    #[test]
    fn a_torn_table_of_this_boot_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        fs::write(table_file(d.path()), b"{\"to").unwrap();
        let a = allocator(d.path(), 1);
        let e = a.acquire("one").unwrap_err().to_string();
        assert!(e.contains("cannot update the id allocation table"), "{e}");
        assert!(e.contains(&*table_file(d.path()).to_string_lossy()), "{e}");
    }

    #[test]
    fn two_roots_on_one_table_never_share_a_range() {
        let d = tempfile::tempdir().unwrap();
        let pool = slots(
            &[IdRange {
                start: 100_000,
                size: SLOT * 2,
            }],
            0,
        )
        .unwrap();
        let (r1, r2) = (d.path().join("r1"), d.path().join("r2"));
        let a = Allocator::with_table(d.path(), &r1, pool.clone());
        let b = Allocator::with_table(d.path(), &r2, pool);
        let ra = a.acquire("web").unwrap();
        let rb = b.acquire("web").unwrap();
        assert_ne!(ra, rb);
        assert_eq!(a.lookup("web"), Some(ra));
        assert_eq!(b.lookup("web"), Some(rb));
        b.release("web").unwrap();
        assert_eq!(a.lookup("web"), Some(ra));
        assert_eq!(b.lookup("web"), None);
    }
}
