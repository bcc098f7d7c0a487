//! Push: an OCI image layout to a registry, blob by blob with resumable
//! chunked uploads (the upload session's `Range` tells where to continue),
//! then manifests (children of an index first), with progress bars.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::client::{check, Client};
use super::manifest::{Descriptor, MAX_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::{ClientConfig, Digest, ImageRef, RegistryError};

/// What a push moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Digest of the top manifest or index, as the registry stores it.
    pub digest: Option<Digest>,
    pub uploaded_blobs: u64,
    pub existing_blobs: u64,
    pub uploaded_bytes: u64,
    /// Chunks re-sent from the registry's recorded offset after a failure.
    pub resumed_uploads: u64,
}

#[derive(Debug, Default)]
struct Counts {
    uploaded: AtomicU64,
    existing: AtomicU64,
    bytes: AtomicU64,
    resumed: AtomicU64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutIndex {
    manifests: Vec<LayoutEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutEntry {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

struct Push<'a> {
    client: &'a Client,
    layout: &'a Path,
    target: &'a ImageRef,
    host: String,
    scope: String,
    bars: MultiProgress,
    counts: Counts,
}

impl Client {
    /// Pushes the image in the OCI layout at `layout` to `target` (tagged with
    /// its tag, or addressed by digest). The layout entry is the only one, or
    /// the one whose `org.opencontainers.image.ref.name` is the target's tag.
    pub async fn push_layout(
        &self,
        layout: &Path,
        target: &ImageRef,
    ) -> Result<PushReport, RegistryError> {
        let secs = self.cfg.deadline.as_secs();
        let p = Push {
            client: self,
            layout,
            target,
            host: target.registry.clone(),
            scope: format!("repository:{}:pull,push", target.repository),
            bars: MultiProgress::with_draw_target(if self.cfg.progress {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            counts: Counts::default(),
        };
        tokio::time::timeout(self.cfg.deadline, p.run())
            .await
            .map_err(|_| RegistryError::Deadline {
                what: format!("push of {} to {target}", layout.display()),
                secs,
            })?
    }
}

impl Push<'_> {
    fn err(&self, why: String) -> RegistryError {
        RegistryError::Layout {
            path: self.layout.to_path_buf(),
            why,
        }
    }

    async fn run(self) -> Result<PushReport, RegistryError> {
        let index_path = self.layout.join("index.json");
        let raw = std::fs::read(&index_path).map_err(|e| {
            self.err(format!(
                "cannot read index.json ({e}); is this an OCI image layout?"
            ))
        })?;
        let index: LayoutIndex = serde_json::from_slice(&raw)
            .map_err(|e| self.err(format!("index.json is invalid: {e}")))?;
        let tag = self.target.tag.as_deref();
        let entry = match index.manifests.as_slice() {
            [one] => one,
            many => many
                .iter()
                .find(|e| {
                    e.annotations
                        .get("org.opencontainers.image.ref.name")
                        .map(String::as_str)
                        == tag
                })
                .ok_or_else(|| {
                    let names: Vec<String> = many
                        .iter()
                        .map(|e| {
                            e.annotations
                                .get("org.opencontainers.image.ref.name")
                                .cloned()
                                .unwrap_or_else(|| e.digest.to_string())
                        })
                        .collect();
                    self.err(format!(
                        "it holds {} images {names:?}; tag the target with one of these names",
                        many.len()
                    ))
                })?,
        };
        let reference = self.target.manifest_reference();
        let digest = self
            .manifest_tree(&entry.digest, &entry.media_type, &reference)
            .await?;
        let c = &self.counts;
        Ok(PushReport {
            digest: Some(digest),
            uploaded_blobs: c.uploaded.load(Ordering::Relaxed),
            existing_blobs: c.existing.load(Ordering::Relaxed),
            uploaded_bytes: c.bytes.load(Ordering::Relaxed),
            resumed_uploads: c.resumed.load(Ordering::Relaxed),
        })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.layout.join("blobs/sha256").join(d.hex())
    }

    /// Pushes a manifest (its blobs first) or an index (its manifests first).
    async fn manifest_tree(
        &self,
        d: &Digest,
        media_type: &str,
        reference: &str,
    ) -> Result<Digest, RegistryError> {
        let p = self.blob_path(d);
        let bytes =
            read_limited(&p, MAX_MANIFEST).map_err(|e| self.err(format!("manifest {d}: {e}")))?;
        if &Digest::of(&bytes) != d {
            return Err(self.err(format!(
                "blob {} does not hash to its name; the layout is corrupt",
                p.display()
            )));
        }
        let doc: RawDoc = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(format!("manifest {d} is invalid: {e}")))?;
        let media_type =
            doc.media_type
                .clone()
                .unwrap_or_else(|| match (media_type, &doc.manifests) {
                    ("", Some(_)) => OCI_INDEX.to_string(),
                    ("", None) => OCI_MANIFEST.to_string(),
                    (m, _) => m.to_string(),
                });
        if let Some(children) = &doc.manifests {
            for c in children {
                Box::pin(self.manifest_tree(&c.digest, &c.media_type, &c.digest.to_string()))
                    .await?;
            }
        } else {
            let blobs: Vec<&Descriptor> = doc.config.iter().chain(doc.layers.iter()).collect();
            stream::iter(blobs.into_iter().map(|b| self.blob(b)))
                .buffer_unordered(self.client.cfg.parallel.max(1))
                .try_collect::<Vec<()>>()
                .await?;
        }
        let url = Client::url(&self.host, self.target, "manifests", reference);
        let body = Bytes::from(bytes);
        let resp = self
            .client
            .send(&self.host, &self.scope, &url, || {
                self.client
                    .http
                    .put(&url)
                    .header(CONTENT_TYPE, media_type.as_str())
                    .body(body.clone())
            })
            .await?;
        check(resp, &url, "manifest upload").await?;
        tracing::info!(url = %url, digest = %d, "manifest pushed");
        Ok(d.clone())
    }

    /// Uploads one blob unless the registry has it.
    async fn blob(&self, desc: &Descriptor) -> Result<(), RegistryError> {
        let d = &desc.digest;
        let c = self.client;
        let head_url = Client::url(&self.host, self.target, "blobs", &d.to_string());
        let resp = c
            .send(&self.host, &self.scope, &head_url, || {
                c.http.head(&head_url)
            })
            .await?;
        if resp.status() == StatusCode::OK {
            self.counts.existing.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let path = self.blob_path(d);
        let size = std::fs::metadata(&path)
            .map_err(|e| self.err(format!("blob {d} is missing ({e})")))?
            .len();
        if size != desc.size {
            return Err(self.err(format!(
                "blob {d} is {size} bytes but its descriptor says {}",
                desc.size
            )));
        }
        let bar = self.bars.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(d.hex()[..12].to_string());
        let mut location = self.start_upload().await?;
        let mut offset = 0u64;
        let mut file =
            std::fs::File::open(&path).map_err(|e| self.err(format!("blob {d}: {e}")))?;
        let mut attempt = 0u32;
        while offset < size {
            let len = (size - offset).min(c.cfg.chunk_size as u64);
            let chunk =
                read_at(&mut file, offset, len).map_err(|e| self.err(format!("blob {d}: {e}")))?;
            match self.patch(&location, offset, chunk).await {
                Ok(next) => {
                    location = next;
                    offset += len;
                    bar.set_position(offset);
                    self.counts.bytes.fetch_add(len, Ordering::Relaxed);
                    attempt = 0;
                }
                Err(e) if e.transient() && attempt + 1 < c.cfg.attempts => {
                    tracing::warn!(digest = %d, offset, error = %e, "chunk upload failed; resuming");
                    tokio::time::sleep(c.cfg.backoff.delay(attempt, offset)).await;
                    attempt += 1;
                    self.counts.resumed.fetch_add(1, Ordering::Relaxed);
                    match self.upload_offset(&location).await {
                        Ok(o) => offset = o,
                        Err(_) => {
                            location = self.start_upload().await?;
                            offset = 0;
                        }
                    }
                    bar.set_position(offset);
                }
                Err(e) => return Err(e),
            }
        }
        let mut url = location;
        url.query_pairs_mut().append_pair("digest", &d.to_string());
        let url_s = url.to_string();
        let resp = c
            .send(&self.host, &self.scope, &url_s, || {
                c.http.put(url.clone()).header(CONTENT_LENGTH, 0)
            })
            .await?;
        check(resp, &url_s, &format!("upload of blob {d}")).await?;
        bar.finish();
        self.counts.uploaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn start_upload(&self) -> Result<Url, RegistryError> {
        let c = self.client;
        let url = format!(
            "https://{}/v2/{}/blobs/uploads/",
            self.host, self.target.repository
        );
        let resp = c
            .send(&self.host, &self.scope, &url, || {
                c.http.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        let resp = check(resp, &url, "upload session").await?;
        location_of(&url, &resp)
    }

    async fn patch(&self, location: &Url, offset: u64, chunk: Bytes) -> Result<Url, RegistryError> {
        let c = self.client;
        let end = offset + chunk.len() as u64 - 1;
        let url = location.to_string();
        let resp = c
            .send(&self.host, &self.scope, &url, || {
                c.http
                    .patch(location.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", format!("{offset}-{end}"))
                    .header(CONTENT_LENGTH, chunk.len())
                    .body(chunk.clone())
            })
            .await?;
        let resp = check(resp, &url, "upload chunk").await?;
        location_of(&url, &resp)
    }

    /// How many bytes the registry holds for the upload session (`Range: 0-N`).
    async fn upload_offset(&self, location: &Url) -> Result<u64, RegistryError> {
        let c = self.client;
        let url = location.to_string();
        let resp = c
            .send(&self.host, &self.scope, &url, || {
                c.http.get(location.clone())
            })
            .await?;
        let resp = check(resp, &url, "upload session").await?;
        let range = resp
            .headers()
            .get(RANGE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        match range.split_once('-') {
            Some((_, end)) => {
                end.trim()
                    .parse::<u64>()
                    .map(|e| e + 1)
                    .map_err(|_| RegistryError::BadRange {
                        url,
                        asked: 0,
                        got: Some(range.to_string()),
                    })
            }
            None => Ok(0),
        }
    }
}

fn location_of(base: &str, resp: &reqwest::Response) -> Result<Url, RegistryError> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    Url::parse(base)
        .and_then(|b| b.join(loc))
        .ok()
        .filter(|_| !loc.is_empty())
        .ok_or_else(|| RegistryError::Status {
            url: base.to_string(),
            status: resp.status().as_u16(),
            body: format!("the upload session has no usable Location ({loc:?})"),
        })
}

fn read_limited(p: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(p)?
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(out)
}

fn read_at(f: &mut std::fs::File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Pushes on a private async runtime, for callers that are not async.
pub fn push_blocking(
    cfg: ClientConfig,
    layout: &Path,
    target: &ImageRef,
) -> Result<PushReport, RegistryError> {
    super::block_on(cfg, async |client| client.push_layout(layout, target).await)
}
