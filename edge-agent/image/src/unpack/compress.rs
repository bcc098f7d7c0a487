//! Layer compression: detection by magic number, streaming decoders, and a
//! reader that hashes and caps what passes through it.

use std::io::{self, BufRead, Read};

use ruzstd::frame_decoder::FrameDecoder;
use ruzstd::streaming_decoder::StreamingDecoder;
use sha2::{Digest as _, Sha256};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, `None` for a media type
    /// that is not a layer Berth can apply.
    pub fn from_media_type(mt: &str) -> Option<Self> {
        Some(match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// Detects the compression from the first bytes of a stream.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A decoder for `c` over a buffered stream.
pub fn decoder<'a, R: BufRead + 'a>(r: R, c: Compression) -> Box<dyn Read + 'a> {
    match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(Zstd {
            dec: None,
            inner: Some(r),
        }),
    }
}

/// A zstd stream of one or more frames.
struct Zstd<R: BufRead> {
    dec: Option<StreamingDecoder<R, FrameDecoder>>,
    inner: Option<R>,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(d) = &mut self.dec {
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.inner = self.dec.take().map(StreamingDecoder::into_inner);
            }
            let Some(r) = self.inner.as_mut() else {
                return Ok(0);
            };
            if r.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let r = self.inner.take().expect("inner reader is present");
            self.dec = Some(
                StreamingDecoder::new(r)
                    .map_err(|e| io::Error::other(format!("zstd frame: {e}")))?,
            );
        }
    }
}

/// Passes bytes through, hashing them and refusing more than `cap`.
#[derive(Debug)]
pub struct Hashing<R> {
    inner: R,
    hash: Sha256,
    count: u64,
    cap: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, cap: u64) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            count: 0,
            cap,
        }
    }

    /// Bytes seen and their SHA-256.
    pub fn finish(self) -> (u64, [u8; 32]) {
        (self.count, self.hash.finalize().into())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.cap {
            return Err(io::Error::other(format!(
                "the blob is larger than the {} bytes its descriptor declares",
                self.cap
            )));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_multi_member_and_sniff() {
        let mut out = Vec::new();
        for part in [&b"hello "[..], b"world"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            out.extend(e.finish().unwrap());
        }
        assert_eq!(Compression::sniff(&out), Compression::Gzip);
        let mut s = String::new();
        decoder(&out[..], Compression::Gzip)
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello world");
        assert!(decoder(&out[..10], Compression::Gzip)
            .read_to_string(&mut s)
            .is_err());
    }

    #[test]
    fn hashing_caps() {
        let mut h = Hashing::new(&[1u8; 10][..], 5);
        assert!(io::copy(&mut h, &mut io::sink()).is_err());
        let mut h = Hashing::new(&b"abc"[..], 3);
        io::copy(&mut h, &mut io::sink()).unwrap();
        assert_eq!(h.finish().0, 3);
    }
}
