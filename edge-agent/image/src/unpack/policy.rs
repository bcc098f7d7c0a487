//! What an unpack accepts: device policy, hard limits, and how owners are written.

/// What a layer may contain beyond plain files, directories and links.
///
/// The defaults are the device defaults: device nodes and fifos are refused
/// (the runtime provides `/dev` itself), setuid/setgid bits and file
/// capabilities are stripped (a workload runs with `no_new_privs` and no
/// capabilities, so they could only matter to someone outside the container).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Create character and block devices and fifos instead of refusing the layer.
    pub allow_devices: bool,
    /// Keep setuid and setgid bits instead of clearing them.
    pub allow_setid: bool,
    /// Keep `security.capability` extended attributes instead of dropping them.
    pub allow_file_caps: bool,
}

/// Hard caps that bound the work and memory of one unpack, whatever the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes read from all layers together (tar headers included).
    pub max_bytes: u64,
    /// Tar headers (entries and extended headers) over all layers.
    pub max_entries: u64,
    /// Bytes in one entry path or link target.
    pub max_path: usize,
    /// Bytes in one extended header (PAX record set, GNU long name or link).
    pub max_header: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
            max_path: 4096,
            max_header: 1 << 20,
        }
    }
}

/// How the owners recorded in a layer become owners on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Write the ids exactly as the layer records them (container ids). Needs
    /// `CAP_CHOWN`; this is what `umoci unpack` does as root.
    Keep,
    /// Write `base + id` for every owner, refusing ids at or above `size`:
    /// the tree is then owned by one subordinate id range, as a workload
    /// whose user namespace maps container id 0 to `base` sees it.
    Shift { base: u32, size: u32 },
    /// Leave every entry owned by the user running the unpack (rootless use);
    /// the layer's owners are not kept.
    Caller,
}

impl Ownership {
    /// The default for the current process: [`Ownership::Keep`] when it can
    /// change owners (effective uid 0), [`Ownership::Caller`] otherwise.
    pub fn for_current_user() -> Self {
        if rustix::process::geteuid().is_root() {
            Ownership::Keep
        } else {
            Ownership::Caller
        }
    }

    /// The host owner for a layer owner, `None` when owners are not changed,
    /// or the reason the id cannot be written.
    pub fn map(&self, uid: u32, gid: u32) -> Result<Option<(u32, u32)>, String> {
        match *self {
            Ownership::Keep => Ok(Some((uid, gid))),
            Ownership::Caller => Ok(None),
            Ownership::Shift { base, size } => {
                for (what, id) in [("uid", uid), ("gid", gid)] {
                    if id >= size {
                        return Err(format!(
                            "owner {what} {id} is outside the workload's id range of {size} ids: \
                             rebuild the image with owners below {size}"
                        ));
                    }
                }
                let host = |id: u32| {
                    base.checked_add(id)
                        .ok_or_else(|| format!("owner id {id} shifted by {base} overflows 32 bits"))
                };
                Ok(Some((host(uid)?, host(gid)?)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_maps_and_refuses_out_of_range() {
        let o = Ownership::Shift {
            base: 100_000,
            size: 65_536,
        };
        assert_eq!(o.map(0, 0).unwrap(), Some((100_000, 100_000)));
        assert_eq!(o.map(1000, 65_535).unwrap(), Some((101_000, 165_535)));
        assert!(o.map(65_536, 0).unwrap_err().contains("uid 65536"));
        assert_eq!(Ownership::Keep.map(5, 6).unwrap(), Some((5, 6)));
        assert_eq!(Ownership::Caller.map(5, 6).unwrap(), None);
    }
}
