//! Fetching by digest: a manifest into memory (small, capped), a blob into the
//! store as a verified stream that resumes with HTTP Range after a drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;

use super::client::{check, Client};
use super::limits::{verified, RateGuard, StreamError, Verifier, VerifyError};
use super::manifest::{
    Descriptor, DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use super::{Digest, ImageRef, RegistryError};
use crate::store::{Ingest, Store};

/// Transfer counters of one pull, shared by its parallel downloads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Body bytes received from the network.
    pub network: AtomicU64,
    /// Bytes received again although they had already been verified once.
    pub refetched: AtomicU64,
    /// Requests that continued a blob from a verified offset.
    pub resumes: AtomicU64,
    /// Blobs downloaded and committed.
    pub fetched: AtomicU64,
}

impl Client {
    /// Fetches the manifest pinned by `digest` and checks it hashes to it.
    /// Returns the bytes and the server's Content-Type.
    pub(super) async fn fetch_manifest(
        &self,
        image: &ImageRef,
        digest: &Digest,
        counters: &Counters,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let scope = format!("repository:{}:pull", image.repository);
        let mut last = None;
        for host in self.endpoints(image) {
            let url = Client::url(&host, image, "manifests", &digest.to_string());
            for attempt in 0..self.cfg.attempts.max(1) {
                let r = async {
                    let resp = self
                        .send(&host, &scope, &url, || {
                            self.http.get(&url).header(
                                ACCEPT,
                                [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", "),
                            )
                        })
                        .await?;
                    let resp = check(resp, &url, &format!("manifest {digest}")).await?;
                    let ct = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let mut v = Verifier::new(digest.clone(), MAX_MANIFEST);
                    let mut body = Vec::new();
                    let mut s = std::pin::pin!(verified(resp.bytes_stream(), &mut v));
                    while let Some(c) = s.next().await {
                        let c = c.map_err(|e| stream_err(e, &url))?;
                        counters
                            .network
                            .fetch_add(c.len() as u64, Ordering::Relaxed);
                        body.extend_from_slice(&c);
                    }
                    let actual = Digest::of(&body);
                    if &actual != digest {
                        return Err(RegistryError::Verify {
                            url: url.clone(),
                            source: VerifyError::Digest {
                                expected: digest.clone(),
                                actual,
                            },
                        });
                    }
                    Ok((body, ct))
                }
                .await;
                match r {
                    Ok(ok) => return Ok(ok),
                    Err(e) if e.transient() && attempt + 1 < self.cfg.attempts => {
                        tracing::warn!(url = %url, error = %e, "manifest fetch failed; retrying");
                        tokio::time::sleep(self.cfg.backoff.delay(attempt, salt(digest))).await;
                        last = Some(e);
                    }
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e, "manifest fetch failed; next source");
                        last = Some(e);
                        break;
                    }
                }
            }
        }
        Err(exhausted(format!("manifest {digest} of {image}"), last))
    }

    /// Fetches a blob into the store unless present; resumes a partial one.
    /// Returns whether it was downloaded (false: already present).
    pub(super) async fn fetch_blob(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        store: &Store,
        counters: &Counters,
    ) -> Result<bool, RegistryError> {
        let d = &desc.digest;
        if store.has(d) {
            return Ok(false);
        }
        let mut ingest = store.ingest(d)?;
        let mut v = Verifier::new(d.clone(), desc.size);
        ingest.resume_into(&mut v)?;
        let mut last = None;
        for host in self.endpoints(image) {
            let url = Client::url(&host, image, "blobs", &d.to_string());
            for attempt in 0..self.cfg.attempts.max(1) {
                if v.received() > 0 {
                    counters.resumes.fetch_add(1, Ordering::Relaxed);
                }
                let r = self
                    .stream_blob(&host, image, &url, &mut ingest, &mut v, counters)
                    .await
                    .and_then(|()| {
                        v.finish().map_err(|source| RegistryError::Verify {
                            url: url.clone(),
                            source,
                        })
                    });
                let e = match r {
                    Ok(proof) => {
                        ingest.commit(proof)?;
                        counters.fetched.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(digest = %d, size = desc.size, "blob verified");
                        return Ok(true);
                    }
                    Err(RegistryError::Store(e)) => {
                        let _ = ingest.discard();
                        return Err(e.into());
                    }
                    Err(e) => e,
                };
                if let RegistryError::Verify { source, .. } = &e {
                    if !matches!(source, VerifyError::Truncated { .. }) {
                        ingest.truncate()?;
                        v.reset();
                    }
                }
                ingest.flush()?;
                let retry = e.transient() && attempt + 1 < self.cfg.attempts;
                tracing::warn!(url = %url, error = %e, verified = v.received(), retry, "blob fetch failed");
                last = Some(e);
                if !retry {
                    break;
                }
                tokio::time::sleep(self.cfg.backoff.delay(attempt, salt(d))).await;
            }
        }
        if ingest.is_empty() {
            ingest.discard()?;
        }
        Err(exhausted(format!("blob {d} of {image}"), last))
    }

    /// One request: from `v.received()` to the end, appended to `ingest`.
    async fn stream_blob(
        &self,
        host: &str,
        image: &ImageRef,
        url: &str,
        ingest: &mut Ingest,
        v: &mut Verifier,
        counters: &Counters,
    ) -> Result<(), RegistryError> {
        let offset = v.received();
        if offset == v.declared() {
            return Ok(());
        }
        let scope = format!("repository:{}:pull", image.repository);
        let resp = self
            .send(host, &scope, url, || {
                let r = self.http.get(url);
                if offset > 0 {
                    r.header(RANGE, format!("bytes={offset}-"))
                } else {
                    r
                }
            })
            .await?;
        let resp = check(resp, url, &format!("blob {}", image.repository)).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                let ok = cr
                    .as_deref()
                    .and_then(|c| c.strip_prefix("bytes "))
                    .and_then(|c| c.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok())
                    == Some(offset);
                if !ok || offset == 0 {
                    return Err(RegistryError::BadRange {
                        url: url.to_string(),
                        asked: offset,
                        got: cr,
                    });
                }
            }
            _ if offset > 0 => {
                tracing::warn!(url = %url, offset, "server ignored the Range request; starting over");
                counters.refetched.fetch_add(offset, Ordering::Relaxed);
                ingest.truncate()?;
                v.reset();
            }
            _ => {}
        }
        let mut guard = RateGuard::new(self.cfg.min_rate, self.cfg.rate_window, Instant::now());
        let start = v.received();
        let mut got = 0u64;
        let mut s = std::pin::pin!(verified(resp.bytes_stream(), v));
        loop {
            let next = tokio::time::timeout(guard.stall_timeout(Instant::now()), s.next()).await;
            let chunk = match next {
                Err(_) => {
                    return Err(RegistryError::Slow {
                        url: url.to_string(),
                        got: 0,
                        min: self.cfg.min_rate,
                    })
                }
                Ok(None) => break,
                Ok(Some(c)) => c.map_err(|e| stream_err(e, url))?,
            };
            ingest.append(&chunk)?;
            got += chunk.len() as u64;
            counters
                .network
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            guard
                .observe(Instant::now(), got)
                .map_err(|rate| RegistryError::Slow {
                    url: url.to_string(),
                    got: rate,
                    min: self.cfg.min_rate,
                })?;
        }
        tracing::debug!(url = %url, from = start, bytes = got, "blob stream ended");
        Ok(())
    }
}

fn stream_err(e: StreamError<reqwest::Error>, url: &str) -> RegistryError {
    match e {
        StreamError::Transport(source) => RegistryError::Http {
            url: url.to_string(),
            source,
        },
        StreamError::Verify(source) => RegistryError::Verify {
            url: url.to_string(),
            source,
        },
    }
}

fn salt(d: &Digest) -> u64 {
    u64::from_str_radix(&d.hex()[..16], 16).unwrap_or(0)
}

pub(super) fn exhausted(what: String, last: Option<RegistryError>) -> RegistryError {
    match last {
        Some(e) => RegistryError::Exhausted {
            what,
            last: Box::new(e),
        },
        None => RegistryError::Exhausted {
            what,
            last: Box::new(RegistryError::NotFound {
                url: String::new(),
                what: "source configured".into(),
            }),
        },
    }
}
