//! Explaining a mismatch: the first entry, in walk order, that differs
//! between the trusted manifest and a fresh one, and what changed in it.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::{escape, Entry, Kind, Manifest};

/// Describes the first entry (in walk order) that differs between two manifests.
pub fn first_difference(expected: &Manifest, actual: &Manifest) -> String {
    let old: HashMap<&OsStr, &Entry> = expected
        .entries
        .iter()
        .map(|e| (e.path.as_os_str(), e))
        .collect();
    let new: HashMap<&OsStr, &Entry> = actual
        .entries
        .iter()
        .map(|e| (e.path.as_os_str(), e))
        .collect();
    let changed = actual
        .entries
        .iter()
        .find_map(|e| match old.get(e.path.as_os_str()) {
            None => Some((e.path.clone(), format!("'{}' was added", escape(&e.path)))),
            Some(o) if o.digest != e.digest => Some((e.path.clone(), describe_change(o, e))),
            Some(_) => None,
        });
    let removed = expected
        .entries
        .iter()
        .find(|e| !new.contains_key(e.path.as_os_str()))
        .map(|e| (e.path.clone(), format!("'{}' was removed", escape(&e.path))));
    match (changed, removed) {
        (Some(c), Some(r)) => {
            if walk_order(&r.0, &c.0) == Ordering::Less {
                r.1
            } else {
                c.1
            }
        }
        (Some(c), None) => c.1,
        (None, Some(r)) => r.1,
        (None, None) => "the entries are the same but in a different order".to_string(),
    }
}

fn describe_change(old: &Entry, new: &Entry) -> String {
    let p = escape(&new.path);
    if old.kind != new.kind {
        return format!("'{p}' changed type from {:?} to {:?}", old.kind, new.kind);
    }
    if old.mode != new.mode {
        return format!("'{p}' changed mode from {:o} to {:o}", old.mode, new.mode);
    }
    if (old.uid, old.gid) != (new.uid, new.gid) {
        return format!(
            "'{p}' changed owner from {}:{} to {}:{}",
            old.uid, old.gid, new.uid, new.gid
        );
    }
    if old.size != new.size {
        return format!("'{p}' changed size from {} to {} bytes", old.size, new.size);
    }
    match new.kind {
        Kind::File => format!("'{p}' changed content"),
        Kind::Symlink => format!("'{p}' changed link target"),
        _ => format!("'{p}' changed (device number or extended attributes)"),
    }
}

/// Pre-order walk order: component-wise byte comparison.
fn walk_order(a: &OsStr, b: &OsStr) -> Ordering {
    let comps = |p: &OsStr| -> Vec<Vec<u8>> {
        if p == "." {
            return Vec::new();
        }
        p.as_bytes()
            .split(|&c| c == b'/')
            .map(<[u8]>::to_vec)
            .collect()
    };
    comps(a).cmp(&comps(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_matches_pre_order() {
        assert_eq!(
            walk_order(OsStr::new("a/b"), OsStr::new("a-c")),
            Ordering::Less
        );
        assert_eq!(walk_order(OsStr::new("."), OsStr::new("a")), Ordering::Less);
    }
}
