//! The bundle's layout as data: the manifest (`bundle.json`), the entry names
//! an importer accepts, the hard limits, and the tar writer. No policy about
//! trust lives here: everything a bundle says is checked by the importer.

use std::io::{self, Write};

use berth_image::build::layer::Entry;
use berth_image::registry::Digest;
use serde::{Deserialize, Serialize};

use crate::release::Arch;

/// The bundle format this agent writes and reads.
pub const FORMAT: u32 = 1;
/// The manifest: always the first entry.
pub const MANIFEST: &str = "bundle.json";

/// Largest `bundle.json`.
pub const MAX_MANIFEST: u64 = 256 << 10;
/// Largest single metadata file.
pub const MAX_METADATA_FILE: u64 = 5 << 20;
/// All metadata files together.
pub const MAX_METADATA_TOTAL: u64 = 64 << 20;
/// Largest target file (a release document).
pub const MAX_TARGET_FILE: u64 = 16 << 20;
/// All target files together.
pub const MAX_TARGETS_TOTAL: u64 = 64 << 20;
/// Largest `oci-layout` or `index.json`.
pub const MAX_LAYOUT_FILE: u64 = 4 << 20;
/// Tar headers (entries and extended headers) in one bundle.
pub const MAX_ENTRIES: u64 = 100_000;
/// Bytes in one entry name.
pub const MAX_PATH: usize = 1024;
/// Uncompressed bytes of the whole archive.
pub const MAX_BYTES: u64 = 1 << 40;

/// `bundle.json`: what the bundle says it holds. Untrusted: it names the
/// release target to verify and is shown to operators; every digest the
/// importer acts on comes from the signed release instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    pub fleet: String,
    /// The release's TUF target name, e.g. `releases/pumps.json`.
    pub target: String,
    pub generation: u64,
    /// Architectures whose images the bundle carries.
    pub architectures: Vec<Arch>,
    pub images: Vec<ImageEntry>,
    /// Distinct blobs in `blobs/sha256/` and the sum of their sizes.
    pub blobs: u64,
    pub bytes: u64,
}

/// One image of the release for one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    pub workload: String,
    pub registry: String,
    pub repository: String,
    pub arch: Arch,
    /// The image manifest digest the signed release pins.
    pub manifest: String,
    /// Manifest, config and layers of this image, and the sum of their sizes.
    pub blobs: u64,
    pub bytes: u64,
}

impl BundleManifest {
    /// Parses `bundle.json`, refusing other format versions.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let probe: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        match probe.get("format").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(FORMAT) => {}
            Some(v) => {
                return Err(format!(
                    "format {v}, this berth reads format {FORMAT}: use a matching berth version"
                ))
            }
            None => return Err("no `format` field".into()),
        }
        serde_json::from_value(probe).map_err(|e| e.to_string())
    }
}

/// What an entry of the archive is, from its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPath {
    Manifest,
    /// `metadata/<file>`: one file name as a TUF repository serves it.
    Metadata(String),
    /// `targets/<path>`: a target file as the repository serves it.
    Target(String),
    OciLayout,
    Index,
    Blob(Digest),
    /// A directory that may hold the above (ignored: only files matter).
    Dir,
}

/// Classifies an entry name, refusing anything else: absolute paths, `.`,
/// `..` and empty components, NUL, backslashes, non-UTF-8, unknown places.
pub fn classify(raw: &[u8], is_dir: bool) -> Result<EntryPath, String> {
    let path = std::str::from_utf8(raw).map_err(|_| "the name is not UTF-8".to_string())?;
    let trimmed = if is_dir {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    if trimmed.is_empty()
        || trimmed.starts_with('/')
        || trimmed.contains('\0')
        || trimmed.contains('\\')
        || trimmed.chars().any(char::is_control)
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(
            "the name is absolute, has an empty, `.` or `..` component, or a control character"
                .into(),
        );
    }
    if is_dir {
        return match trimmed {
            "metadata" | "targets" | "blobs" | "blobs/sha256" => Ok(EntryPath::Dir),
            t if t.starts_with("targets/") => Ok(EntryPath::Dir),
            _ => Err("a directory where the format has none".into()),
        };
    }
    match trimmed {
        MANIFEST => return Ok(EntryPath::Manifest),
        "oci-layout" => return Ok(EntryPath::OciLayout),
        "index.json" => return Ok(EntryPath::Index),
        _ => {}
    }
    if let Some(name) = trimmed.strip_prefix("metadata/") {
        let ok = !name.contains('/')
            && name.ends_with(".json")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-~%".contains(&b));
        return if ok {
            Ok(EntryPath::Metadata(name.to_string()))
        } else {
            Err("not a metadata file name (`N.role.json` or `role.json`)".into())
        };
    }
    if let Some(name) = trimmed.strip_prefix("targets/") {
        return Ok(EntryPath::Target(name.to_string()));
    }
    if let Some(hex) = trimmed.strip_prefix("blobs/sha256/") {
        return format!("sha256:{hex}")
            .parse::<Digest>()
            .map(EntryPath::Blob)
            .map_err(|_| "not a blob name (64 lower-case hex digits)".into());
    }
    Err("not a place the bundle format has".into())
}

/// Writes a reproducible tar: regular files only, owner 0, mode 0644, mtime 0.
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// A file's header; exactly `size` content bytes must follow through
    /// [`TarWriter::content`], then [`TarWriter::end_file`].
    pub fn begin_file(&mut self, path: &str, size: u64) -> io::Result<()> {
        let e = Entry {
            path: path.as_bytes().to_vec(),
            link: Vec::new(),
            flag: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
        };
        self.put(&e.encode())
    }

    pub fn content(&mut self, b: &[u8]) -> io::Result<()> {
        self.put(b)
    }

    /// Pads the file of `size` bytes to the block size.
    pub fn end_file(&mut self, size: u64) -> io::Result<()> {
        let pad = ((512 - size % 512) % 512) as usize;
        self.put(&[0u8; 512][..pad])
    }

    /// A whole small file.
    pub fn file(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.begin_file(path, bytes.len() as u64)?;
        self.content(bytes)?;
        self.end_file(bytes.len() as u64)
    }

    /// The end-of-archive marker; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn known_places_are_classified() {
        let c = |p: &str| classify(p.as_bytes(), false);
        assert_eq!(c("bundle.json"), Ok(EntryPath::Manifest));
        assert_eq!(c("oci-layout"), Ok(EntryPath::OciLayout));
        assert_eq!(c("index.json"), Ok(EntryPath::Index));
        assert_eq!(
            c("metadata/3.root.json"),
            Ok(EntryPath::Metadata("3.root.json".into()))
        );
        assert_eq!(
            c("metadata/2.team%2Fa.json"),
            Ok(EntryPath::Metadata("2.team%2Fa.json".into()))
        );
        assert_eq!(
            c("targets/releases/ff.pumps.json"),
            Ok(EntryPath::Target("releases/ff.pumps.json".into()))
        );
        let blob = c(&format!("blobs/sha256/{}", hex())).unwrap();
        assert_eq!(
            blob,
            EntryPath::Blob(format!("sha256:{}", hex()).parse().unwrap())
        );
        for d in ["metadata/", "blobs/", "blobs/sha256/", "targets/releases/"] {
            assert_eq!(classify(d.as_bytes(), true), Ok(EntryPath::Dir), "{d}");
        }
    }

    #[test]
    fn unsafe_or_unknown_names_are_refused() {
        let bad_files = [
            "/bundle.json".to_string(),
            "./bundle.json".into(),
            "metadata/../../etc/passwd".into(),
            "metadata/a/b.json".into(),
            "metadata/root.txt".into(),
            "metadata/x y.json".into(),
            "targets/../x".into(),
            "targets//x".into(),
            "targets/a/./b".into(),
            "targets/a\\b".into(),
            "targets/a\nb".into(),
            format!("blobs/sha256/{}", hex().to_uppercase()),
            format!("blobs/sha256/{}/x", hex()),
            "blobs/sha256/abc".into(),
            "blobs/sha512/00".into(),
            "etc/passwd".into(),
            "".into(),
            "a\0b".into(),
        ];
        for p in &bad_files {
            assert!(classify(p.as_bytes(), false).is_err(), "{p:?}");
        }
        assert!(classify(b"\xff\xfe", false).is_err());
        for d in ["etc/", "blobs/sha256/x/", "../", "/"] {
            assert!(classify(d.as_bytes(), true).is_err(), "{d}");
        }
    }

    #[test]
    fn manifest_round_trip_and_version_check() {
        let m = BundleManifest {
            format: FORMAT,
            fleet: "pumps".into(),
            target: "releases/pumps.json".into(),
            generation: 3,
            architectures: vec![Arch::Arm64],
            images: vec![ImageEntry {
                workload: "sensor".into(),
                registry: "r:5000".into(),
                repository: "berth/sensor".into(),
                arch: Arch::Arm64,
                manifest: format!("sha256:{}", hex()),
                blobs: 3,
                bytes: 1000,
            }],
            blobs: 3,
            bytes: 1000,
        };
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(BundleManifest::parse(&bytes).unwrap(), m);
        let newer = String::from_utf8(bytes).unwrap().replace(
            &format!("\"format\":{FORMAT}"),
            &format!("\"format\":{}", FORMAT + 1),
        );
        let e = BundleManifest::parse(newer.as_bytes()).unwrap_err();
        assert!(e.contains("matching berth version"), "{e}");
        assert!(BundleManifest::parse(b"{}").unwrap_err().contains("format"));
        assert!(BundleManifest::parse(b"\x00").is_err());
    }

    #[test]
    fn tar_writer_output_reads_back() {
        use berth_image::unpack::tar::{Kind, Reader};
        use berth_image::unpack::Limits;
        let mut w = TarWriter::new(Vec::new());
        w.file("bundle.json", b"{}").unwrap();
        let long = format!("targets/releases/{}.{}.json", hex(), "f".repeat(80));
        w.file(&long, b"x").unwrap();
        let buf = w.finish().unwrap();
        assert_eq!(buf.len() % 512, 0);
        let limits = Limits::default();
        let mut r = Reader::new(&buf[..], &limits, 0, 0);
        let h = r.next_entry().unwrap().unwrap();
        assert_eq!(
            (h.path.as_slice(), h.kind, h.size),
            (&b"bundle.json"[..], Kind::File, 2)
        );
        let h = r.next_entry().unwrap().unwrap();
        assert_eq!(h.path, long.as_bytes());
        assert!(r.next_entry().unwrap().is_none());
    }
}
