//! Giving memory back to the system when a long-running process goes idle
//! (the device agent between updates).
//!
//! Two kinds of memory stay with an idle process without doing anything for
//! it:
//!
//! - free memory inside glibc's heap that lies below its top (fragments
//!   between live allocations), which glibc returns only on request
//!   ([`trim_heap`]);
//! - the pages of its own executable that it ran or read once — at start,
//!   during an update — and that stay mapped afterwards. The kernel maps a
//!   whole window of cached neighbours on every page fault (fault-around,
//!   64 KiB), so a program that touched a few scattered pages of each part
//!   of its code has most of its binary mapped, and each mapped page counts
//!   in its resident set and PSS until memory pressure reclaims it
//!   ([`unmap_executable_pages`]).

use std::io;
use std::os::unix::fs::MetadataExt;

/// Returns free memory of glibc's heap to the kernel (`malloc_trim(0)`:
/// whole free pages anywhere in the heap, not only at its top). Returns
/// whether glibc released anything; `false` where the C library is not
/// glibc (musl's allocator gives memory back on its own).
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases glibc's own free
        // lists under the allocator's lock; it takes no pointer from the
        // caller and is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// One mapping of `/proc/self/smaps` that [`unmap_executable_pages`] may drop.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    start: usize,
    len: usize,
    rss_kib: u64,
}

/// The read-only, private mappings of the file `(major, minor, inode)` in
/// an smaps listing that hold no anonymous (copy-on-write) page and are
/// not locked: dropping their page-table entries loses nothing.
/// (`Private_Dirty` may count page-cache pages of the file not yet written
/// back, e.g. of a binary just built: they stay in the page cache.)
fn candidates(smaps: &str, dev: (u64, u64), inode: u64) -> Vec<Candidate> {
    struct Cur {
        c: Candidate,
        ours: bool,
        clean: bool,
    }
    let mut out = Vec::new();
    let mut cur: Option<Cur> = None;
    let finish = |cur: Option<Cur>, out: &mut Vec<Candidate>| {
        if let Some(m) = cur {
            if m.ours && m.clean && m.c.rss_kib > 0 {
                out.push(m.c);
            }
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            finish(cur.take(), &mut out);
            let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            else {
                continue;
            };
            let perms = f.next().unwrap_or("");
            let _offset = f.next();
            let dev_ok = f
                .next()
                .and_then(|d| d.split_once(':'))
                .and_then(|(ma, mi)| {
                    Some((
                        u64::from_str_radix(ma, 16).ok()?,
                        u64::from_str_radix(mi, 16).ok()?,
                    ))
                })
                == Some(dev);
            let inode_ok = f.next().and_then(|i| i.parse::<u64>().ok()) == Some(inode);
            let b = perms.as_bytes();
            let read_only_private = b.len() == 4 && b[1] == b'-' && b[3] == b'p';
            cur = Some(Cur {
                c: Candidate {
                    start: lo,
                    len: hi.saturating_sub(lo),
                    rss_kib: 0,
                },
                ours: dev_ok && inode_ok && inode != 0 && read_only_private,
                clean: true,
            });
            continue;
        }
        let Some(m) = cur.as_mut() else { continue };
        let value = f.next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => m.c.rss_kib = value.unwrap_or(0),
            // Dirty file pages (written, not yet on disk) are still the
            // file's: only anonymous pages would be lost.
            "Anonymous:" | "Locked:" | "AnonHugePages:" | "Swap:" if value != Some(0) => {
                m.clean = false
            }
            "VmFlags:" if line.split_ascii_whitespace().any(|fl| fl == "lo") => m.clean = false,
            _ => {}
        }
    }
    finish(cur, &mut out);
    out
}

/// Drops this process's page-table entries for the pages of its own
/// executable that are mapped read-only and unmodified (code, read-only
/// data): they stay in the page cache, and the next access maps them again
/// with a minor fault (no I/O while the page cache holds them). What the
/// process runs while idle comes back; what it ran once at start or during
/// an update no longer counts in its resident set or PSS. Returns the KiB
/// that were mapped.
///
/// Mappings holding copy-on-write pages (relocated read-only data: the
/// loader wrote them) and anything writable are left alone. Linux only;
/// elsewhere it does nothing.
pub fn unmap_executable_pages() -> io::Result<u64> {
    if !cfg!(target_os = "linux") {
        return Ok(0);
    }
    let exe = std::fs::metadata("/proc/self/exe")?;
    let dev = exe.dev();
    let dev = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut kib = 0;
    for c in candidates(&smaps, dev, exe.ino()) {
        // SAFETY: [c.start, c.start + c.len) is one whole mapping of this
        // process, private and read-only (r--p or r-xp), of its own
        // executable file, with no anonymous (copy-on-write), locked or
        // swapped page at the time of the listing. Such a mapping cannot
        // gain an anonymous page afterwards: no code of this process writes
        // to or re-protects its executable's read-only segments (the loader
        // has finished; a write would fault). MADV_DONTNEED on it therefore
        // only removes page-table entries of clean file pages, which is what
        // reclaim does under memory pressure: the next access maps the same
        // file contents again. No Rust reference can be invalidated, since
        // the memory's contents never change.
        let r = unsafe { libc::madvise(c.start as *mut libc::c_void, c.len, libc::MADV_DONTNEED) };
        if r == 0 {
            kib += c.rss_kib;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The mapping changed since the listing (unmapped, split): skip.
            Some(libc::EINVAL | libc::ENOMEM) => {}
            _ => return Err(e),
        }
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 4242                       /usr/bin/berth-agent
Size:               1024 kB
Rss:                 800 kB
Private_Dirty:        12 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
VmFlags: rd mr mw me
55d0a0100000-55d0a0400000 r-xp 00100000 fe:00 4242                       /usr/bin/berth-agent
Size:               3072 kB
Rss:                2900 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me
55d0a0400000-55d0a0438000 r--p 00400000 fe:00 4242                       /usr/bin/berth-agent
Size:                224 kB
Rss:                 224 kB
Private_Dirty:       224 kB
Anonymous:           224 kB
VmFlags: rd mr mw me ac
55d0a0438000-55d0a043c000 rw-p 00438000 fe:00 4242                       /usr/bin/berth-agent
Size:                 16 kB
Rss:                  16 kB
Private_Dirty:        16 kB
Anonymous:            16 kB
VmFlags: rd wr mr mw me ac
7f0000000000-7f0000010000 r-xp 00000000 fe:00 999                        /usr/lib/libc.so.6
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
7f0000010000-7f0000020000 r-xp 00000000 fe:00 4242                       /usr/bin/berth-agent
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
Locked:               64 kB
VmFlags: rd ex mr mw me lo
7f0000020000-7f0000030000 r--p 00000000 fe:00 4242                       /usr/bin/berth-agent
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
7f0000030000-7f0000040000 rw-p 00000000 00:00 0
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
VmFlags: rd wr mr mw me ac
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_candidates() {
        let c = candidates(SMAPS, (0xfe, 0), 4242);
        assert_eq!(
            c,
            vec![
                Candidate {
                    start: 0x55d0a0000000,
                    len: 0x100000,
                    rss_kib: 800
                },
                Candidate {
                    start: 0x55d0a0100000,
                    len: 0x300000,
                    rss_kib: 2900
                },
            ]
        );
        // Another file (same inode number on another device) or inode 0.
        assert!(candidates(SMAPS, (0xfe, 1), 4242).is_empty());
        assert!(candidates(SMAPS, (0, 0), 0).is_empty());
    }

    /// The RSS (KiB) of this test binary's own droppable mappings.
    fn own_mapped_kib() -> u64 {
        let exe = std::fs::metadata("/proc/self/exe").unwrap();
        let dev = (
            nix::sys::stat::major(exe.dev()),
            nix::sys::stat::minor(exe.dev()),
        );
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        candidates(&smaps, dev, exe.ino())
            .iter()
            .map(|c| c.rss_kib)
            .sum()
    }

    #[test]
    fn unmapping_keeps_the_program_running_and_lowers_its_resident_set() {
        // The test harness's start touched much of this binary's code.
        let before = own_mapped_kib();
        assert!(before > 0, "the test binary's own code is mapped");
        let kib = unmap_executable_pages().unwrap();
        assert!(kib > 0, "released nothing");
        // Still runs: formatting, allocation, file I/O from the same binary
        // (mapped again as it runs).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            format!("{:?}", status.lines().count())
                .parse::<usize>()
                .unwrap()
                > 5
        );
        let after = own_mapped_kib();
        assert!(
            after < before,
            "{after} KiB mapped after, {before} KiB before"
        );
        trim_heap();
    }
}
