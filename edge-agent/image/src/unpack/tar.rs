//! A streaming tar reader with hard limits.
//!
//! Reads POSIX ustar, pax (`x` records; `g` records are checked and ignored),
//! GNU long names and links (`L`, `K`) and old v7 headers. Every header
//! checksum is verified, every extended header is size-checked *before* it is
//! read, every byte counts against the uncompressed-size cap, and the stream
//! must end with the end-of-archive marker: truncated or non-tar input is an
//! error, never a hang or an unbounded allocation. Sparse files and other
//! GNU extensions are refused by name.

use std::io::{self, Read};

use super::policy::Limits;

mod parse;
use parse::{check_sum, number, pad, parse_pax, trim_nul};

const BLOCK: usize = 512;

/// What went wrong reading the stream.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{0}")]
    Malformed(String),
    #[error(
        "the {what} exceeds the limit of {limit} (an oversized layer or a decompression \
         bomb): raise the limit in the unpack policy only for a trusted image"
    )]
    Limit { what: &'static str, limit: u64 },
    #[error("entry '{path}' has unsupported type {kind}")]
    Unsupported { path: String, kind: String },
    #[error("cannot read the layer stream (corrupt compression or an I/O error): {0}")]
    Io(#[from] io::Error),
}

/// The type of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// One entry's header with every extension applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub major: u32,
    pub minor: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads entries one by one from an uncompressed tar stream.
#[derive(Debug)]
pub struct Reader<'l, R> {
    inner: R,
    limits: &'l Limits,
    /// Bytes read so far, shared across layers through [`Reader::consumed`].
    consumed: u64,
    headers: u64,
    /// Content bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's content.
    padding: u64,
    done: bool,
    lenient_end: bool,
}

impl<'l, R: Read> Reader<'l, R> {
    /// A reader that has already accounted for `consumed` bytes and
    /// `headers` headers (of earlier layers of the same image).
    pub fn new(inner: R, limits: &'l Limits, consumed: u64, headers: u64) -> Self {
        Self {
            inner,
            limits,
            consumed,
            headers,
            remaining: 0,
            padding: 0,
            done: false,
            lenient_end: false,
        }
    }

    /// Accepts a stream that stops right after an entry's content, without
    /// padding or end-of-archive marker (as some `umoci insert` versions
    /// write). Only for a blob whose digest is checked against a trusted
    /// descriptor, where a cut stream cannot pass as complete.
    pub fn lenient_end(mut self) -> Self {
        self.lenient_end = true;
        self
    }

    /// Uncompressed bytes and headers read so far (including earlier layers).
    pub fn consumed(&self) -> (u64, u64) {
        (self.consumed, self.headers)
    }

    fn count(&mut self, n: usize) -> Result<(), TarError> {
        self.consumed += n as u64;
        if self.consumed > self.limits.max_bytes {
            return Err(TarError::Limit {
                what: "total uncompressed size",
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    fn read_exact_counted(&mut self, buf: &mut [u8], what: &str) -> Result<(), TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(TarError::Malformed(format!(
                        "the stream ends inside {what}: it is truncated; fetch the layer again"
                    )))
                }
                Ok(n) => {
                    self.count(n)?;
                    filled += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.count(n)?;
                    filled += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(filled)
    }

    fn skip(&mut self, mut n: u64, what: &str) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_exact_counted(&mut buf[..k], what)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes of the current entry's content; 0 at its end.
    pub fn read_content(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let k = self.remaining.min(buf.len() as u64) as usize;
        let n = loop {
            match self.inner.read(&mut buf[..k]) {
                Ok(0) => {
                    return Err(TarError::Malformed(
                        "the stream ends inside a file's content: it is truncated; fetch the layer again"
                            .into(),
                    ))
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        self.count(n)?;
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The next entry, or `None` after the end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining;
        self.skip(rest, "a file's content")?;
        self.remaining = 0;
        let padding = std::mem::take(&mut self.padding);
        if self.lenient_end {
            let mut buf = [0u8; BLOCK];
            let n = self.fill(&mut buf[..padding as usize])?;
            if (n as u64) < padding {
                self.done = true;
                return Ok(None);
            }
        } else {
            self.skip(padding, "a file's padding")?;
        }
        let mut pax = Pax::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; BLOCK];
            let n = self.fill(&mut block[..1])?;
            if n == 0 && self.lenient_end {
                self.done = true;
                return Ok(None);
            }
            if n == 0 {
                return Err(TarError::Malformed(
                    "the stream ends without the end-of-archive marker: it is truncated; \
                     fetch the layer again"
                        .into(),
                ));
            }
            self.read_exact_counted(&mut block[1..], "a header")?;
            if block.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            self.headers += 1;
            if self.headers > self.limits.max_entries {
                return Err(TarError::Limit {
                    what: "number of entries",
                    limit: self.limits.max_entries,
                });
            }
            check_sum(&block)?;
            let size = number(&block[124..136], "size")?;
            let flag = block[156];
            if matches!(flag, b'x' | b'g' | b'L' | b'K') {
                if size > self.limits.max_header {
                    return Err(TarError::Limit {
                        what: "extended header size",
                        limit: self.limits.max_header,
                    });
                }
                let mut data = vec![0u8; size as usize];
                self.read_exact_counted(&mut data, "an extended header")?;
                self.skip(pad(size), "an extended header")?;
                match flag {
                    b'x' => parse_pax(&data, &mut pax)?,
                    b'g' => parse_pax(&data, &mut Pax::default())?,
                    b'L' => long_name = Some(trim_nul(&data).to_vec()),
                    _ => long_link = Some(trim_nul(&data).to_vec()),
                }
                continue;
            }
            let hdr = self.header(&block, size, flag, pax, long_name, long_link)?;
            if hdr.kind == Kind::File {
                self.remaining = hdr.size;
                self.padding = pad(hdr.size);
            } else {
                // Links, directories and nodes carry no content; skip whatever
                // the header declares so the stream stays aligned.
                self.remaining = 0;
                self.padding = size + pad(size);
            }
            return Ok(Some(hdr));
        }
    }

    fn header(
        &self,
        block: &[u8; BLOCK],
        size: u64,
        flag: u8,
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Header, TarError> {
        let ustar = &block[257..263] == b"ustar\0";
        let mut path = trim_nul(&block[0..100]).to_vec();
        if ustar {
            let prefix = trim_nul(&block[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&path);
                path = p;
            }
        }
        let path = pax.path.or(long_name).unwrap_or(path);
        let link = pax
            .link
            .or(long_link)
            .unwrap_or_else(|| trim_nul(&block[157..257]).to_vec());
        for (what, p) in [("path", &path), ("link target", &link)] {
            if p.len() > self.limits.max_path {
                return Err(TarError::Limit {
                    what: if what == "path" {
                        "entry path length"
                    } else {
                        "link target length"
                    },
                    limit: self.limits.max_path as u64,
                });
            }
        }
        let shown = || String::from_utf8_lossy(&path).into_owned();
        let kind = match flag {
            b'0' | b'7' => Kind::File,
            0 if path.ends_with(b"/") => Kind::Dir,
            0 => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => {
                return Err(TarError::Unsupported {
                    path: shown(),
                    kind: "'S' (GNU sparse file): repack the layer without --sparse".into(),
                })
            }
            other => {
                return Err(TarError::Unsupported {
                    path: shown(),
                    kind: format!("{:?}", other as char),
                })
            }
        };
        let id = |v: Option<u64>, field: &[u8], what: &str| -> Result<u32, TarError> {
            let n = match v {
                Some(n) => n,
                None => number(field, what)?,
            };
            u32::try_from(n)
                .map_err(|_| TarError::Malformed(format!("{what} {n} does not fit 32 bits")))
        };
        let dev = |field: &[u8], what: &str| -> Result<u32, TarError> {
            if ustar || block[257..263] == *b"ustar " {
                id(None, field, what)
            } else {
                Ok(0)
            }
        };
        Ok(Header {
            kind,
            mode: (number(&block[100..108], "mode")? & 0o7777) as u32,
            uid: id(pax.uid, &block[108..116], "uid")?,
            gid: id(pax.gid, &block[116..124], "gid")?,
            size: pax.size.unwrap_or(size),
            major: dev(&block[329..337], "device major")?,
            minor: dev(&block[337..345], "device minor")?,
            xattrs: pax.xattrs,
            path,
            link,
        })
    }

    /// Reads what follows the end-of-archive marker (zero padding) so that a
    /// digest over the whole stream can be checked; the size cap still applies.
    pub fn finish(mut self) -> Result<R, TarError> {
        let mut buf = [0u8; 8192];
        loop {
            match self.inner.read(&mut buf) {
                Ok(0) => return Ok(self.inner),
                Ok(n) => self.count(n)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, flag: u8, size: u64) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000644");
        b[108..115].copy_from_slice(b"0000000");
        b[116..123].copy_from_slice(b"0000000");
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        b[156] = flag;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].copy_from_slice(b"        ");
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    }

    fn archive(parts: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, flag, data) in parts {
            out.extend_from_slice(&header(name, *flag, data.len() as u64));
            out.extend_from_slice(data);
            out.resize(out.len() + pad(data.len() as u64) as usize, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn all(data: &[u8], limits: &Limits) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
        let mut r = Reader::new(data, limits, 0, 0);
        let mut out = Vec::new();
        while let Some(h) = r.next_entry()? {
            let mut content = Vec::new();
            let mut buf = [0u8; 100];
            loop {
                let n = r.read_content(&mut buf)?;
                if n == 0 {
                    break;
                }
                content.extend_from_slice(&buf[..n]);
            }
            out.push((h, content));
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn reads_files_pax_and_long_names() {
        let long = "d/".repeat(80) + "f";
        let pax = format!("{} path={long}\n", long.len() + 7);
        let pax = format!("{} path={long}\n", pax.len());
        let data = archive(&[
            ("a/", b'5', b""),
            ("a/f", b'0', b"hello"),
            ("x", b'x', pax.as_bytes()),
            ("short", b'0', b"1"),
            ("././@LongLink", b'L', format!("{long}2\0").as_bytes()),
            ("cut", b'2', b""),
        ]);
        let got = all(&data, &Limits::default()).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0.kind, Kind::Dir);
        assert_eq!(got[1].1, b"hello");
        assert_eq!(got[2].0.path, long.as_bytes());
        assert_eq!(got[3].0.path, format!("{long}2").as_bytes());
        assert_eq!(got[3].0.kind, Kind::Symlink);
    }

    #[test]
    fn refuses_truncation_garbage_and_oversize() {
        let data = archive(&[("a", b'0', &[1u8; 2000])]);
        let err = all(&data[..1200], &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = all(&data[..512 + 2048], &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = all(&[7u8; 4096], &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("not a tar archive"), "{err}");
        let small = Limits {
            max_bytes: 2048,
            ..Limits::default()
        };
        assert!(matches!(all(&data, &small), Err(TarError::Limit { .. })));
        let mut huge = header("x", b'x', 0);
        huge[124..135].copy_from_slice(format!("{:011o}", 1u64 << 32).as_bytes());
        huge[148..156].copy_from_slice(b"        ");
        let sum: u64 = huge.iter().map(|&x| u64::from(x)).sum();
        huge[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let err = all(&huge, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("extended header size"), "{err}");
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(number(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(number(b"  755 \0", "m").unwrap(), 0o755);
        assert_eq!(number(&[0x80, 0, 0, 1, 0], "s").unwrap(), 256);
        assert!(number(&[0xff, 0xff], "s").is_err());
        assert!(number(b"9", "s").is_err());
    }
}
