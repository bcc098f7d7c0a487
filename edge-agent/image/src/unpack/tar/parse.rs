//! Parsing the fields of tar headers: numbers (octal or base-256), the
//! header checksum, NUL-padded names and pax extended records.

use super::{Pax, TarError, BLOCK};

/// The zero bytes that follow `size` bytes of data up to the next block.
pub(super) fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A NUL-padded header field without its padding.
pub(super) fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// Checks a header block's checksum (unsigned, or signed as some old
/// writers computed it).
pub(super) fn check_sum(block: &[u8; BLOCK]) -> Result<(), TarError> {
    let stored = number(&block[148..156], "checksum").map_err(|_| not_tar())?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        Err(not_tar())
    }
}

fn not_tar() -> TarError {
    TarError::Malformed(
        "a header checksum does not match: the data is not a tar archive or is corrupt; \
         check the media type or fetch the layer again"
            .into(),
    )
}

/// Parses an octal (space/NUL padded) or base-256 numeric field.
pub(super) fn number(field: &[u8], what: &str) -> Result<u64, TarError> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return Err(TarError::Malformed(format!("negative {what}")));
        }
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(b)))
                .ok_or_else(|| TarError::Malformed(format!("{what} overflows 64 bits")))?;
        }
        return Ok(n);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&s).ok();
    text.and_then(|t| u64::from_str_radix(t, 8).ok())
        .ok_or_else(|| {
            TarError::Malformed(format!(
                "{what} field {:?} is not octal",
                String::from_utf8_lossy(&s)
            ))
        })
}

/// Applies the records of a pax extended header to `pax`; refuses sparse
/// files by name.
pub(super) fn parse_pax(mut data: &[u8], pax: &mut Pax) -> Result<(), TarError> {
    let bad = |why: &str| TarError::Malformed(format!("pax extended header: {why}"));
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("record without length"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("record length is not a number"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("record length does not match its content"));
        }
        let rec = &data[sp + 1..len - 1];
        data = &data[len..];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("record without '='"))?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let num = |what: &str| -> Result<u64, TarError> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(&format!("{what} is not a decimal number")))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.link = Some(value.to_vec()),
            b"size" => pax.size = Some(num("size")?),
            b"uid" => pax.uid = Some(num("uid")?),
            b"gid" => pax.gid = Some(num("gid")?),
            k if k.starts_with(b"SCHILY.xattr.") => pax
                .xattrs
                .push((k[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec())),
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(TarError::Unsupported {
                    path: String::from_utf8_lossy(pax.path.as_deref().unwrap_or(b"?")).into(),
                    kind: "pax sparse file: repack the layer without sparse files".into(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}
