//! What the agent gives back once it has gone idle (after its start, an
//! update or a refresh, when nothing else is due): memory that only the
//! work just finished needed.
//!
//! - glibc's free heap pages ([`berth_runtime::memory::trim_heap`]): what
//!   an update allocated and freed, below live allocations.
//! - The mappings of the agent's own code and read-only data that start
//!   and update paths touched ([`berth_runtime::memory::unmap_executable_pages`]):
//!   the pages stay in the page cache; those the idle agent runs (its
//!   event loop, timers, the API) are mapped again when it runs them.

use std::time::Duration;

/// How long after its last work the agent settles: longer than the
/// blocking pool's keep-alive (2 s, `berth-agent`'s runtime), so the
/// threads that worked have left and freed what they held.
pub const SETTLE: Duration = Duration::from_secs(3);

/// What [`settle`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Whether glibc returned free heap pages.
    pub heap_trimmed: bool,
    /// KiB of the executable's pages that were mapped and no longer are.
    pub code_kib: u64,
}

/// Gives back what the idle agent does not need (see the module). Cheap
/// (a few milliseconds: one read of `/proc/self/smaps`); never fails —
/// what cannot be given back stays.
pub fn settle() -> Settled {
    let heap_trimmed = berth_runtime::memory::trim_heap();
    let code_kib = berth_runtime::memory::unmap_executable_pages().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot release the executable's pages");
        0
    });
    let s = Settled {
        heap_trimmed,
        code_kib,
    };
    tracing::debug!(heap_trimmed, code_kib, "settled");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_gives_code_pages_back_and_the_agent_works_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::reconcile::store::db_config(dir.path())
            .open()
            .unwrap();
        let t = db.open_tree("t").unwrap();
        t.insert(b"before", b"1".to_vec()).unwrap();
        db.flush().unwrap();
        let s = settle();
        assert!(s.code_kib > 0, "{s:?}");
        // The code given back runs again: the database, formatting, I/O.
        t.insert(b"after", b"settled".to_vec()).unwrap();
        db.flush().unwrap();
        assert_eq!(t.get(b"after").unwrap().as_deref(), Some(&b"settled"[..]));
        assert!(settle().code_kib > 0);
    }
}
