//! Writing one reproducible layer from a directory tree.
//!
//! Entries are sorted by the raw bytes of their paths (parents before
//! children); every mtime is the recipe's epoch; owners are 0:0 and modes are
//! normalized (directories 0755, files 0755 if any execute bit is set on disk
//! and 0644 otherwise, symlinks 0777) unless the recipe overrides them; no
//! user or group names, no access times, no device numbers. Paths and link
//! targets longer than the ustar fields go into pax records. The tar stream
//! is gzip-compressed with a fixed level and an empty gzip header (no name,
//! mtime 0), so the same tree always yields the same bytes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::recipe::Meta;
use super::BuildError;
use crate::layout::Digest;

/// A layer written to the blob directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

/// Writes the tree under `src` as a gzip layer blob into `blobs` (the
/// `blobs/sha256` directory of a layout).
pub fn write_layer(
    src: &Path,
    overrides: &BTreeMap<String, Meta>,
    epoch: u64,
    blobs: &Path,
) -> Result<Written, BuildError> {
    let mut paths = Vec::new();
    collect(src, Vec::new(), &mut paths)?;
    paths.sort();
    let tmp = blobs.join(format!(".layer-{}.tmp", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let out = HashWriter::new(file);
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, flate2::Compression::new(6));
    let mut tar = HashWriter::new(gz);
    for rel in &paths {
        let path = src.join(std::ffi::OsStr::from_bytes(rel));
        let md = fs::symlink_metadata(&path).map_err(io(&path))?;
        let key = String::from_utf8_lossy(rel).into_owned();
        let meta = overrides.get(&key).copied().unwrap_or_default();
        let (uid, gid) = meta.owner.unwrap_or((0, 0));
        let ft = md.file_type();
        let mut h = Entry {
            path: rel.clone(),
            link: Vec::new(),
            flag: b'0',
            mode: 0,
            uid,
            gid,
            size: 0,
            mtime: epoch,
        };
        if ft.is_dir() {
            h.path.push(b'/');
            h.flag = b'5';
            h.mode = meta.mode.unwrap_or(0o755);
            tar.write_all(&h.encode()).map_err(io(&tmp))?;
        } else if ft.is_symlink() {
            h.flag = b'2';
            h.mode = 0o777;
            h.link = fs::read_link(&path)
                .map_err(io(&path))?
                .into_os_string()
                .into_encoded_bytes();
            tar.write_all(&h.encode()).map_err(io(&tmp))?;
        } else if ft.is_file() {
            let exec = md.permissions().mode() & 0o111 != 0;
            h.mode = meta.mode.unwrap_or(if exec { 0o755 } else { 0o644 });
            h.size = md.size();
            tar.write_all(&h.encode()).map_err(io(&tmp))?;
            let mut f = File::open(&path).map_err(io(&path))?;
            let copied = io::copy(&mut (&mut f).take(h.size), &mut tar).map_err(io(&path))?;
            if copied != h.size {
                return Err(BuildError::Changed { path });
            }
            let pad = (512 - h.size % 512) % 512;
            tar.write_all(&vec![0u8; pad as usize]).map_err(io(&tmp))?;
        } else {
            return Err(BuildError::Unsupported { path });
        }
    }
    tar.write_all(&[0u8; 1024]).map_err(io(&tmp))?;
    let (gz, diff) = tar.finish();
    let out = gz.finish().map_err(io(&tmp))?;
    let (mut file, digest) = out.finish();
    let size = out_size(&mut file, &tmp)?;
    file.sync_all().map_err(io(&tmp))?;
    let digest = Digest::from_sha256(digest);
    let dest = blobs.join(digest.hex());
    fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok(Written {
        digest,
        size,
        diff_id: Digest::from_sha256(diff),
    })
}

fn out_size(file: &mut File, path: &Path) -> Result<u64, BuildError> {
    file.flush().map_err(|source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file
        .metadata()
        .map_err(|source| BuildError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len())
}

/// Relative paths (raw bytes, `/`-joined) of everything below `dir`.
fn collect(root: &Path, rel: Vec<u8>, out: &mut Vec<Vec<u8>>) -> Result<(), BuildError> {
    let dir: PathBuf = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(&rel))
    };
    let io = |source| BuildError::Io {
        path: dir.clone(),
        source,
    };
    let names: Vec<OsString> = fs::read_dir(&dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    for n in names {
        let mut child = rel.clone();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(n.as_bytes());
        let is_dir = fs::symlink_metadata(root.join(std::ffi::OsStr::from_bytes(&child)))
            .map_err(|source| BuildError::Io {
                path: dir.join(&n),
                source,
            })?
            .is_dir();
        out.push(child.clone());
        if is_dir {
            collect(root, child, out)?;
        }
    }
    Ok(())
}

/// One tar entry's header fields.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub flag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u64,
}

impl Entry {
    /// The header block(s): a pax header first when a name does not fit.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let mut pax = Vec::new();
        if self.path.len() > 100 {
            pax.extend(pax_record(b"path", &self.path));
        }
        if self.link.len() > 100 {
            pax.extend(pax_record(b"linkpath", &self.link));
        }
        if !pax.is_empty() {
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(&self.path[..self.path.len().min(80)]);
            out.extend(block(
                &name,
                b"",
                b'x',
                0o644,
                0,
                0,
                pax.len() as u64,
                self.mtime,
            ));
            out.extend_from_slice(&pax);
            out.resize(out.len() + (512 - pax.len() % 512) % 512, 0);
        }
        out.extend(block(
            &self.path[..self.path.len().min(100)],
            &self.link[..self.link.len().min(100)],
            self.flag,
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.mtime,
        ));
        out
    }
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = len.to_string().into_bytes();
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

#[allow(clippy::too_many_arguments)]
fn block(
    name: &[u8],
    link: &[u8],
    flag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], u64::from(uid));
    octal(&mut b[116..124], u64::from(gid));
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = flag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], 0);
    octal(&mut b[337..345], 0);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b
}

/// Writes `n` as zero-padded octal filling the field but its last byte (NUL),
/// or base-256 when it does not fit.
fn octal(field: &mut [u8], n: u64) {
    let w = field.len() - 1;
    let s = format!("{n:0w$o}");
    if s.len() <= w {
        field[..w].copy_from_slice(s.as_bytes());
        field[w] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = n.to_be_bytes();
        let l = field.len();
        field[l - 8..].copy_from_slice(&bytes);
    }
}

/// Passes bytes through to `inner`, hashing them.
#[derive(Debug)]
pub struct HashWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
        }
    }

    pub fn finish(self) -> (W, [u8; 32]) {
        (self.inner, self.hash.finalize().into())
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record(b"path", &[b'a'; 95]);
        let len: usize = std::str::from_utf8(&r[..r.iter().position(|&b| b == b' ').unwrap()])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, r.len());
    }

    #[test]
    fn headers_round_trip_through_the_reader() {
        let long = vec![b'x'; 150];
        let e = Entry {
            path: long.clone(),
            link: Vec::new(),
            flag: b'0',
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size: 0,
            mtime: 0,
        };
        let mut data = e.encode();
        data.extend_from_slice(&[0u8; 1024]);
        let limits = crate::unpack::Limits::default();
        let mut r = crate::unpack::tar::Reader::new(&data[..], &limits, 0, 0);
        let h = r.next_entry().unwrap().unwrap();
        assert_eq!(h.path, long);
        assert_eq!((h.uid, h.gid, h.mode), (1000, 1000, 0o644));
        assert!(r.next_entry().unwrap().is_none());
    }
}
