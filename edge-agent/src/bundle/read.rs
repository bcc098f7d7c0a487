//! The one-pass reader: entries checked by name, kind and size, metadata
//! and targets extracted into a private directory, the TUF update run over it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use berth_image::registry::limits::Verified;
use berth_image::registry::manifest::{Manifest, MAX_MANIFEST};
use berth_image::registry::Digest;
use berth_image::unpack::compress::{decoder, Compression};
use berth_image::unpack::tar::{Kind, Reader, TarError};
use berth_image::unpack::Limits;
use berth_trust::updater::{Config, Time};
use berth_trust::{DirTransport, Updater};

use super::blobs::{Role, Want};
use super::format::{self, BundleManifest, EntryPath};
use super::stage::{Staged, TempDir};
use super::{import_hint, io_err, BundleError, Versions};
use crate::release::{from_json, Arch, Release};

/// Where verified blob bytes go.
pub(super) trait Sink {
    /// Whether a verified copy is already there (the bundle's copy is skipped).
    fn present(&self, d: &Digest) -> bool;
    fn read_present(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, BundleError>;
    fn begin(&mut self, d: &Digest, size: u64) -> Result<(), BundleError>;
    fn write(&mut self, b: &[u8]) -> Result<(), BundleError>;
    fn end(&mut self, proof: Verified) -> Result<(), BundleError>;
}

/// Verification only.
pub(super) struct HashSink;

impl Sink for HashSink {
    fn present(&self, _: &Digest) -> bool {
        false
    }
    fn read_present(&self, d: &Digest, _: u64) -> Result<Vec<u8>, BundleError> {
        Err(BundleError::Io {
            what: "read",
            path: PathBuf::from(d.to_string()),
            source: std::io::Error::other("a verification keeps no blobs"),
        })
    }
    fn begin(&mut self, _: &Digest, _: u64) -> Result<(), BundleError> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> Result<(), BundleError> {
        Ok(())
    }
    fn end(&mut self, _: Verified) -> Result<(), BundleError> {
        Ok(())
    }
}

/// What one pass over a bundle found.
pub(super) struct Outcome {
    pub(super) document: Vec<u8>,
    pub(super) release: Release,
    pub(super) versions: Versions,
    /// Recomputed from verified content.
    pub(super) manifest: BundleManifest,
    /// As the bundle states it.
    pub(super) claimed: BundleManifest,
}

/// One pass over a bundle.
pub(super) struct Pass<'a> {
    pub(super) file: &'a Path,
    pub(super) expected_target: Option<&'a str>,
    /// `None`: the architectures `bundle.json` names.
    pub(super) arches: Option<Vec<Arch>>,
    pub(super) trust: &'a Staged<'a>,
    pub(super) now: Time,
}

/// Per-pass bookkeeping.
#[derive(Default)]
pub(super) struct State {
    pub(super) claimed: Option<BundleManifest>,
    pub(super) tmp: Option<TempDir>,
    pub(super) metadata_bytes: u64,
    pub(super) target_bytes: u64,
    pub(super) trusted: Option<(Vec<u8>, Release, Versions)>,
    pub(super) arches: Vec<Arch>,
    pub(super) images: Vec<(String, String, String, Arch, Digest)>,
    pub(super) needed: BTreeMap<Digest, Want>,
    pub(super) done: BTreeMap<Digest, u64>,
    pub(super) manifests: BTreeMap<Digest, Manifest>,
    /// Verified configs read from the bundle.
    pub(super) configs: BTreeMap<Digest, Vec<u8>>,
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).chars().take(200).collect()
}

impl Pass<'_> {
    pub(super) fn entry_err(&self, entry: &str, why: impl Into<String>) -> BundleError {
        BundleError::Entry {
            file: self.file.to_path_buf(),
            entry: entry.to_string(),
            why: why.into(),
        }
    }

    pub(super) fn format_err(&self, why: impl Into<String>) -> BundleError {
        BundleError::Format {
            file: self.file.to_path_buf(),
            why: why.into(),
        }
    }

    pub(super) fn tar_err(&self) -> impl Fn(TarError) -> BundleError + '_ {
        move |e| BundleError::Tar {
            file: self.file.to_path_buf(),
            reason: e.to_string(),
        }
    }

    pub(super) fn run(&self, sink: &mut dyn Sink) -> Result<Outcome, BundleError> {
        let f = File::open(self.file).map_err(io_err("open the bundle", self.file))?;
        let mut br = BufReader::with_capacity(256 << 10, f);
        let head = br.fill_buf().map_err(io_err("read", self.file))?;
        let compression = Compression::sniff(head);
        let limits = Limits {
            max_bytes: format::MAX_BYTES,
            max_entries: format::MAX_ENTRIES,
            max_path: format::MAX_PATH,
            max_header: 64 << 10,
        };
        let mut tar = Reader::new(decoder(br, compression), &limits, 0, 0);
        let mut st = State::default();
        while let Some(h) = tar.next_entry().map_err(self.tar_err())? {
            let name = lossy(&h.path);
            let is_dir = match h.kind {
                Kind::File => false,
                Kind::Dir => true,
                other => {
                    return Err(self.entry_err(
                        &name,
                        format!("a {other:?} entry; a bundle holds regular files only"),
                    ))
                }
            };
            let path = format::classify(&h.path, is_dir).map_err(|w| self.entry_err(&name, w))?;
            if st.claimed.is_none() && path != EntryPath::Manifest {
                return Err(self.entry_err(&name, "the first entry must be bundle.json"));
            }
            match path {
                EntryPath::Dir => {}
                EntryPath::Manifest => self.manifest(&mut tar, &mut st, &name, h.size)?,
                EntryPath::Metadata(n) => {
                    st.metadata_bytes += h.size;
                    let cap = (format::MAX_METADATA_FILE, format::MAX_METADATA_TOTAL);
                    self.extract(
                        &mut tar,
                        &st,
                        &name,
                        h.size,
                        st.metadata_bytes,
                        cap,
                        &format!("metadata/{n}"),
                    )?;
                }
                EntryPath::Target(n) => {
                    berth_trust::names::check_target_path(&n)
                        .map_err(|e| self.entry_err(&name, e.to_string()))?;
                    st.target_bytes += h.size;
                    let cap = (format::MAX_TARGET_FILE, format::MAX_TARGETS_TOTAL);
                    self.extract(
                        &mut tar,
                        &st,
                        &name,
                        h.size,
                        st.target_bytes,
                        cap,
                        &format!("targets/{n}"),
                    )?;
                }
                EntryPath::OciLayout | EntryPath::Index => {
                    self.trust_phase(&mut st, sink)?;
                    if h.size > format::MAX_LAYOUT_FILE {
                        return Err(self.entry_err(&name, "larger than an OCI layout file can be"));
                    }
                }
                EntryPath::Blob(d) => {
                    self.trust_phase(&mut st, sink)?;
                    self.blob(&mut tar, &mut st, sink, d, h.size)?;
                }
            }
        }
        tar.finish().map_err(self.tar_err())?;
        if st.claimed.is_none() {
            return Err(self.format_err("it is empty (no bundle.json)"));
        }
        self.trust_phase(&mut st, sink)?;
        self.finish(st)
    }

    fn read_small<R: Read>(
        &self,
        tar: &mut Reader<'_, R>,
        name: &str,
        size: u64,
        cap: u64,
    ) -> Result<Vec<u8>, BundleError> {
        if size > cap {
            return Err(self.entry_err(name, format!("{size} bytes, over the {cap}-byte limit")));
        }
        let mut out = Vec::with_capacity(size as usize);
        copy(tar, &mut out).map_err(self.tar_err())?;
        Ok(out)
    }

    fn manifest<R: Read>(
        &self,
        tar: &mut Reader<'_, R>,
        st: &mut State,
        name: &str,
        size: u64,
    ) -> Result<(), BundleError> {
        if st.claimed.is_some() {
            return Err(self.entry_err(name, "bundle.json appears twice"));
        }
        let bytes = self.read_small(tar, name, size, format::MAX_MANIFEST)?;
        let m = BundleManifest::parse(&bytes)
            .map_err(|w| self.format_err(format!("bundle.json: {w}")))?;
        berth_trust::names::check_target_path(&m.target)
            .map_err(|e| self.format_err(format!("bundle.json: {e}")))?;
        if let Some(expected) = self.expected_target {
            if m.target != expected {
                return Err(BundleError::WrongTarget {
                    file: self.file.to_path_buf(),
                    found: m.target,
                    expected: expected.to_string(),
                });
            }
        }
        let parent = std::env::temp_dir();
        let tmp = TempDir::new(&parent, "berth-bundle")
            .map_err(io_err("create a directory in", &parent))?;
        for d in ["metadata", "targets", "download"] {
            let p = tmp.path().join(d);
            fs::create_dir(&p).map_err(io_err("create", &p))?;
        }
        st.tmp = Some(tmp);
        st.claimed = Some(m);
        Ok(())
    }

    /// Writes a metadata or target entry into the temporary directory.
    #[allow(clippy::too_many_arguments)]
    fn extract<R: Read>(
        &self,
        tar: &mut Reader<'_, R>,
        st: &State,
        name: &str,
        size: u64,
        total: u64,
        (cap, total_cap): (u64, u64),
        rel: &str,
    ) -> Result<(), BundleError> {
        if st.trusted.is_some() {
            return Err(self.entry_err(
                name,
                "metadata and targets must come before the image layout",
            ));
        }
        if size > cap || total > total_cap {
            return Err(self.entry_err(
                name,
                format!("over the {cap}-byte limit per file or {total_cap} bytes in all"),
            ));
        }
        let tmp = st.tmp.as_ref().expect("created with bundle.json");
        let dest = tmp.path().join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => self.entry_err(name, "it appears twice"),
                _ => BundleError::Io {
                    what: "create",
                    path: dest.clone(),
                    source: e,
                },
            })?;
        copy(tar, &mut f).map_err(self.tar_err())?;
        Ok(())
    }

    /// Runs the TUF update over the extracted metadata once all of it was
    /// read, and decides which blobs the verified release needs.
    fn trust_phase(&self, st: &mut State, sink: &mut dyn Sink) -> Result<(), BundleError> {
        if st.trusted.is_some() {
            return Ok(());
        }
        let claimed = st.claimed.clone().expect("bundle.json comes first");
        let tmp = st
            .tmp
            .as_ref()
            .expect("created with bundle.json")
            .path()
            .to_path_buf();
        let meta = DirTransport::new(&tmp.join("metadata"));
        let targets = DirTransport::new(&tmp.join("targets"));
        let trust_err = |source| BundleError::Trust {
            file: self.file.to_path_buf(),
            hint: import_hint(&source),
            source: Box::new(source),
        };
        let mut up = Updater::new(
            self.trust,
            &meta,
            Some(&targets),
            Config::default(),
            self.now,
        )
        .map_err(trust_err)?;
        up.refresh().map_err(trust_err)?;
        let path = up
            .download(&claimed.target, &tmp.join("download"))
            .map_err(trust_err)?;
        let document = fs::read(&path).map_err(io_err("read", &path))?;
        let versions = Versions::of(up.trusted());
        let source_name = format!("{} in {}", claimed.target, self.file.display());
        let release =
            from_json(&source_name, &document).map_err(|source| BundleError::Release {
                file: self.file.to_path_buf(),
                source,
            })?;
        if release.fleet != claimed.fleet {
            return Err(self.format_err(format!(
                "bundle.json names fleet {} but the signed release is for fleet {}",
                claimed.fleet, release.fleet
            )));
        }
        st.arches = self
            .arches
            .clone()
            .unwrap_or_else(|| claimed.architectures.clone());
        for w in &release.workloads {
            for arch in &st.arches {
                let Some(d) = w.image.digests.get(arch) else {
                    continue;
                };
                let d: Digest = d
                    .as_str()
                    .parse()
                    .map_err(|e: berth_image::registry::RefError| self.format_err(e.to_string()))?;
                let image = format!(
                    "{}/{} of workload {} for {arch}",
                    w.image.registry, w.image.repository, w.name
                );
                st.images.push((
                    w.name.to_string(),
                    w.image.registry.clone(),
                    w.image.repository.clone(),
                    *arch,
                    d.clone(),
                ));
                st.needed.entry(d).or_insert(Want {
                    size: None,
                    role: Role::Manifest,
                    image,
                });
            }
        }
        st.trusted = Some((document, release, versions));
        let present: Vec<Digest> = st
            .needed
            .keys()
            .filter(|d| sink.present(d))
            .cloned()
            .collect();
        for d in present {
            let bytes = sink.read_present(&d, MAX_MANIFEST)?;
            st.done.insert(d.clone(), bytes.len() as u64);
            self.parsed(st, sink, &d, Role::Manifest, &bytes)?;
        }
        Ok(())
    }
}

/// Copies the current entry's content to `out`.
pub(super) fn copy<R: Read>(tar: &mut Reader<'_, R>, out: &mut impl Write) -> Result<(), TarError> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tar.read_content(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::TarWriter;
    use berth_image::build::layer::Entry;

    fn manifest() -> Vec<u8> {
        serde_json::to_vec(&BundleManifest {
            format: format::FORMAT,
            fleet: "pumps".into(),
            target: "releases/pumps.json".into(),
            generation: 1,
            architectures: vec![Arch::Arm64],
            images: vec![],
            blobs: 0,
            bytes: 0,
        })
        .unwrap()
    }

    /// Reads `bytes` as a bundle with an empty trusted state.
    fn read(bytes: &[u8]) -> BundleError {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("b.bundle");
        fs::write(&file, bytes).unwrap();
        let staged = Staged::new(None);
        let r = Pass {
            file: &file,
            expected_target: Some("releases/pumps.json"),
            arches: Some(vec![Arch::Arm64]),
            trust: &staged,
            now: berth_trust::updater::now(),
        }
        .run(&mut HashSink);
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    fn raw(path: &str, flag: u8, link: &str, content: &[u8]) -> Vec<u8> {
        let mut out = Entry {
            path: path.as_bytes().to_vec(),
            link: link.as_bytes().to_vec(),
            flag,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: content.len() as u64,
            mtime: 0,
        }
        .encode();
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn with(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        w.file(format::MANIFEST, &manifest()).unwrap();
        let mut out = w.finish().unwrap();
        out.truncate(out.len() - 1024);
        for e in entries {
            out.extend_from_slice(e);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn links_devices_and_escapes_are_refused_by_name() {
        let cases: [(Vec<u8>, &str); 5] = [
            (
                raw("metadata/1.root.json", b'2', "/etc/passwd", b""),
                "Symlink",
            ),
            (
                raw("metadata/2.root.json", b'1', "bundle.json", b""),
                "Hardlink",
            ),
            (raw("targets/x", b'3', "", b""), "CharDevice"),
            (raw("metadata/../../x.json", b'0', "", b"{}"), "`..`"),
            (raw("/etc/cron.d/x", b'0', "", b"x"), "absolute"),
        ];
        for (entry, word) in cases {
            let e = read(&with(&[entry])).to_string();
            assert!(e.contains("refused") && e.contains(word), "{word}: {e}");
            assert!(
                e.contains("b.bundle") && e.contains("create it again"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_manifest_comes_first_once_and_small() {
        let mut w = TarWriter::new(Vec::new());
        w.file("metadata/1.root.json", b"{}").unwrap();
        let e = read(&w.finish().unwrap()).to_string();
        assert!(e.contains("first entry must be bundle.json"), "{e}");

        let twice = with(&[raw(format::MANIFEST, b'0', "", &manifest())]);
        assert!(read(&twice).to_string().contains("twice"));

        let mut w = TarWriter::new(Vec::new());
        w.file(
            format::MANIFEST,
            &vec![b' '; format::MAX_MANIFEST as usize + 1],
        )
        .unwrap();
        let e = read(&w.finish().unwrap()).to_string();
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn another_fleets_bundle_is_refused_before_any_metadata() {
        let m = String::from_utf8(manifest())
            .unwrap()
            .replace("releases/pumps.json", "releases/mills.json");
        let mut w = TarWriter::new(Vec::new());
        w.file(format::MANIFEST, m.as_bytes()).unwrap();
        let e = read(&w.finish().unwrap());
        assert!(matches!(e, BundleError::WrongTarget { .. }), "{e}");
    }

    #[test]
    fn garbage_empty_and_truncated_files_are_errors() {
        for bytes in [&b""[..], &[7u8; 2000][..]] {
            let e = read(bytes).to_string();
            assert!(e.contains("b.bundle"), "{e}");
        }
        let full = with(&[]);
        let e = read(&full[..600]);
        assert!(matches!(e, BundleError::Tar { .. }), "{e}");
        // Metadata is read, but without a trusted root nothing verifies.
        let e = read(&with(&[raw("metadata/timestamp.json", b'0', "", b"{}")]));
        let msg = crate::error_chain(&e);
        assert!(msg.contains("no trusted root"), "{msg}");
    }
}
