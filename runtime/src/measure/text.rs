//! The manifest's text form, written next to a measurement when an image is
//! unpacked, and the escaping of paths for one-line display.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::{Algorithm, Entry, Kind, Manifest, MeasureError};

impl Manifest {
    /// A header line `# algorithm <name>`, then one line per entry:
    /// `<entry hex> <kind> <mode octal> <uid> <gid> <size> <path>`, the path
    /// with `\`, control and non-UTF-8 bytes escaped as `\xNN`.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.entries.len() * 100 + 20);
        out.push_str(&format!("{HEADER}{}\n", self.algorithm));
        for e in &self.entries {
            out.push_str(&format!(
                "{} {} {:o} {} {} {} {}\n",
                hex::encode(e.digest),
                e.kind.code() as char,
                e.mode,
                e.uid,
                e.gid,
                e.size,
                escape(&e.path)
            ));
        }
        out
    }

    /// The manifest written to `path` by [`Manifest::to_text`], if it can be
    /// read and parsed.
    pub fn read(path: &Path) -> Option<Self> {
        Self::from_text(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Parses [`Manifest::to_text`] output. A manifest without the header
    /// (written before measurements named their algorithm) is SHA-256.
    pub fn from_text(text: &str) -> Result<Self, MeasureError> {
        let mut entries = Vec::new();
        let mut algorithm = Algorithm::Sha256;
        for (i, line) in text.lines().enumerate() {
            let bad = |reason: &str| MeasureError::BadManifest {
                line: i + 1,
                reason: reason.to_string(),
            };
            if let (0, Some(name)) = (i, line.strip_prefix(HEADER)) {
                algorithm = name.parse().map_err(|_| bad("unknown algorithm"))?;
                continue;
            }
            let mut it = line.splitn(7, ' ');
            let mut field = |name: &str| it.next().ok_or_else(|| bad(&format!("missing {name}")));
            let mut digest = [0u8; 32];
            hex::decode_to_slice(field("digest")?, &mut digest).map_err(|_| bad("bad digest"))?;
            let kind_s = field("kind")?;
            let kind = (kind_s.len() == 1)
                .then(|| Kind::from_code(kind_s.as_bytes()[0]))
                .flatten()
                .ok_or_else(|| bad("bad kind"))?;
            let mode = u32::from_str_radix(field("mode")?, 8).map_err(|_| bad("bad mode"))?;
            let uid = field("uid")?.parse().map_err(|_| bad("bad uid"))?;
            let gid = field("gid")?.parse().map_err(|_| bad("bad gid"))?;
            let size = field("size")?.parse().map_err(|_| bad("bad size"))?;
            let path = unescape(field("path")?).ok_or_else(|| bad("bad path escape"))?;
            entries.push(Entry {
                path,
                kind,
                mode,
                uid,
                gid,
                size,
                digest,
            });
        }
        Ok(Self { algorithm, entries })
    }
}

const HEADER: &str = "# algorithm ";

/// Escapes a path for one-line display: `\` as `\\`, bytes outside printable
/// ASCII as `\xNN`.
pub fn escape(p: &OsStr) -> String {
    let mut s = String::with_capacity(p.len());
    for &b in p.as_bytes() {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x21..=0x7e | b' ' => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn unescape(s: &str) -> Option<OsString> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            match b.get(i + 1)? {
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                }
                b'x' => {
                    let h = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 4;
                }
                _ => return None,
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(OsString::from_vec(out))
}
