//! Helpers for the image tests: hand-made (also malicious) layer tarballs,
//! listings of trees to compare unpacks, and snapshots of what lies outside
//! a rootfs.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_image::layout::Digest;

/// A tar stream written header by header, with full control of every field.
#[derive(Debug, Default, Clone)]
pub struct Tar {
    pub buf: Vec<u8>,
}

/// One raw header's fields.
#[derive(Debug, Clone)]
pub struct Raw<'a> {
    pub path: &'a [u8],
    pub flag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub link: &'a [u8],
    pub size: u64,
    pub major: u32,
    pub minor: u32,
}

impl Raw<'_> {
    pub fn new(path: &[u8], flag: u8) -> Raw<'_> {
        Raw {
            path,
            flag,
            mode: if flag == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            link: b"",
            size: 0,
            major: 0,
            minor: 0,
        }
    }
}

fn octal(field: &mut [u8], n: u64) {
    let w = field.len() - 1;
    field[..w].copy_from_slice(format!("{n:0w$o}").as_bytes());
}

impl Tar {
    pub fn new() -> Self {
        Self::default()
    }

    /// A header block exactly as given (paths over 100 bytes are cut: use [`Tar::pax`]).
    pub fn header(&mut self, r: &Raw<'_>) -> &mut Self {
        let mut b = [0u8; 512];
        let p = &r.path[..r.path.len().min(100)];
        b[..p.len()].copy_from_slice(p);
        octal(&mut b[100..108], u64::from(r.mode));
        octal(&mut b[108..116], u64::from(r.uid));
        octal(&mut b[116..124], u64::from(r.gid));
        octal(&mut b[124..136], r.size);
        octal(&mut b[136..148], 0);
        b[156] = r.flag;
        let l = &r.link[..r.link.len().min(100)];
        b[157..157 + l.len()].copy_from_slice(l);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        octal(&mut b[329..337], u64::from(r.major));
        octal(&mut b[337..345], u64::from(r.minor));
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        self.buf.extend_from_slice(&b);
        self
    }

    /// Content bytes plus padding to the block size.
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.resize(self.buf.len() + pad, 0);
        self
    }

    /// A pax extended header with the given records.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + 1;
            while len != base + len.to_string().len() {
                len = base + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut r = Raw::new(b"PaxHeader", b'x');
        r.size = body.len() as u64;
        self.header(&r).data(&body)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut r = Raw::new(path.as_bytes(), b'5');
        r.mode = mode;
        self.header(&r)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut r = Raw::new(path.as_bytes(), b'0');
        r.mode = mode;
        r.size = data.len() as u64;
        self.header(&r).data(data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut r = Raw::new(path.as_bytes(), b'2');
        r.mode = 0o777;
        r.link = target.as_bytes();
        self.header(&r)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut r = Raw::new(path.as_bytes(), b'1');
        r.link = target.as_bytes();
        self.header(&r)
    }

    /// The stream with its end-of-archive marker.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// `gzip -c` of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("gzip output");
    writer.join().expect("gzip writer").expect("gzip input");
    assert!(out.status.success(), "gzip failed");
    out.stdout
}

/// One line per entry below `root`, sorted: path, type, mode, owner, and the
/// content digest, link target or device number. Timestamps are left out.
pub fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, root, &[], &mut out);
    out.sort();
    out
}

/// Like [`listing`] but leaving out the subtrees in `skip`.
pub fn listing_except(root: &Path, skip: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, root, skip, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, p: &Path, skip: &[PathBuf], out: &mut Vec<String>) {
    if skip.iter().any(|s| s == p) {
        return;
    }
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let rel = p.strip_prefix(root).expect("inside root");
    let rel = String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned();
    let ft = md.file_type();
    let what = if ft.is_dir() {
        "d".to_string()
    } else if ft.is_symlink() {
        format!("l {}", fs::read_link(p).expect("readlink").display())
    } else if ft.is_file() {
        format!("f {}", Digest::of(&fs::read(p).expect("read")))
    } else if ft.is_char_device() || ft.is_block_device() {
        format!("dev {}", md.rdev())
    } else {
        "other".to_string()
    };
    out.push(format!(
        "/{rel} {:o} {}:{} {what}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid()
    ));
    if ft.is_dir() {
        for e in fs::read_dir(p).expect("read_dir").flatten() {
            walk(root, &e.path(), skip, out);
        }
    }
}
