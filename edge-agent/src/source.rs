//! Where the agent's releases come from: the TUF client of `berth-trust`
//! over HTTPS (or a mirror directory), its trusted state in the agent's
//! state database. The release of a fleet is the target
//! `releases/<fleet>.json`; it is returned only after the whole chain —
//! root, timestamp, snapshot, targets and delegations — verified it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_trust::transport::Transport;
use berth_trust::updater::{self, UpdateError};
use berth_trust::{DirTransport, HttpTransport, SledStore, StateStore, Updater};

use crate::daemon::ReleaseSource;

/// A metadata or targets location: `https://…`, `http://` on loopback
/// only, or `file:///dir`.
pub fn transport(url: &str, ca: Option<&[u8]>) -> Result<Box<dyn Send + Sync + Transport>, String> {
    let Some(loopback) = http_base(url) else {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        return Ok(Box::new(DirTransport::new(Path::new(dir))));
    };
    HttpTransport::new(url, ca, loopback)
        .map(|t| Box::new(t) as Box<dyn Send + Sync + Transport>)
        .map_err(|e| format!("{url}: {e}"))
}

/// A transport the TUF client owns.
pub type BoxedTransport = Box<dyn Send + Sync + Transport>;

/// The metadata and targets transports; over HTTP(S) they share their
/// connections and TLS sessions (one handshake for a refresh and its
/// target when both are on one server).
pub fn transports(
    metadata_url: &str,
    targets_url: &str,
    ca: Option<&[u8]>,
) -> Result<(BoxedTransport, BoxedTransport), String> {
    let (Some(m), Some(t)) = (http_base(metadata_url), http_base(targets_url)) else {
        return Ok((transport(metadata_url, ca)?, transport(targets_url, ca)?));
    };
    let metadata =
        HttpTransport::new(metadata_url, ca, m).map_err(|e| format!("{metadata_url}: {e}"))?;
    let targets = metadata
        .beside(targets_url, t)
        .map_err(|e| format!("{targets_url}: {e}"))?;
    Ok((Box::new(metadata), Box::new(targets)))
}

/// For an http(s) URL, whether plain http is allowed (loopback only).
fn http_base(url: &str) -> Option<bool> {
    if url.starts_with("file://") {
        return None;
    }
    let host = url
        .strip_prefix("http://")
        .map(|r| r.split(['/', ':']).next().unwrap_or(""));
    Some(matches!(host, Some("127.0.0.1" | "localhost" | "[::1]")))
}

/// The targets location beside a metadata location: `…/metadata` →
/// `…/targets`.
pub fn default_targets_url(metadata_url: &str) -> Option<String> {
    let base = metadata_url.trim_end_matches('/');
    base.strip_suffix("/metadata")
        .map(|b| format!("{b}/targets"))
}

/// The TUF target name of a fleet's release.
pub fn release_target(fleet: &str) -> String {
    format!("releases/{fleet}.json")
}

/// Run after every refresh on the refreshed client (e.g. to look for a
/// new agent, see `selfupdate`); it handles its own errors.
pub type AfterRefresh = Arc<dyn Fn(&mut Updater<'_>) + Send + Sync>;

/// The device's TUF client.
pub struct TufSource {
    pub store: SledStore,
    pub metadata: Box<dyn Send + Sync + Transport>,
    pub targets: Box<dyn Send + Sync + Transport>,
    pub target: String,
    /// Where verified targets are kept (a present one is not fetched again).
    pub cache: PathBuf,
    pub config: berth_trust::Config,
    /// Online refreshes and bundle imports of the trusted state, one at a
    /// time.
    pub lock: Arc<Mutex<()>>,
    pub after_refresh: Option<AfterRefresh>,
}

impl std::fmt::Debug for TufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TufSource")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl TufSource {
    /// Pins `root` as the trusted root if the store holds none yet (first
    /// start); a store that has one keeps it (rotations advanced it).
    pub fn provision(&self, root: &Path) -> Result<bool, String> {
        if self
            .store
            .load("root")
            .map_err(|e| crate::error_chain(&e))?
            .is_some()
        {
            return Ok(false);
        }
        let bytes = std::fs::read(root).map_err(|e| {
            format!(
                "cannot read the pinned root {}: {e}; provision the device with the fleet's \
                 root.json (trust.root in agent.toml)",
                root.display()
            )
        })?;
        updater::init(&self.store, &bytes).map_err(|e| {
            format!(
                "the pinned root {} is not a valid self-signed TUF root: {}",
                root.display(),
                crate::error_chain(&e)
            )
        })?;
        Ok(true)
    }
}

impl TufSource {
    /// Imports an offline bundle: the same verification as an online
    /// refresh (see [`crate::bundle::import`]); its images' blobs land in
    /// `store`. Returns the verified release document and a summary.
    pub fn import(
        &self,
        file: &Path,
        store: &berth_image::store::Store,
        arch: crate::release::document::Arch,
    ) -> Result<crate::bundle::Imported, String> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        crate::bundle::import(
            file,
            &crate::bundle::ImportTarget {
                trust: &self.store,
                store,
                targets_dir: &self.cache,
                target: &self.target,
                arch,
                now: updater::now(),
            },
        )
        .map_err(|e| crate::error_chain(&e))
    }
}

impl ReleaseSource for TufSource {
    fn refresh(&self) -> Result<Option<Vec<u8>>, String> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut u = Updater::new(
            &self.store,
            &*self.metadata,
            Some(&*self.targets),
            self.config.clone(),
            updater::now(),
        )
        .map_err(|e| crate::error_chain(&e))?;
        u.refresh().map_err(|e| crate::error_chain(&e))?;
        std::fs::create_dir_all(&self.cache)
            .map_err(|e| format!("cannot create {}: {e}", self.cache.display()))?;
        let release = match u.download(&self.target, &self.cache) {
            Ok(path) => std::fs::read(&path)
                .map(Some)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            Err(UpdateError::TargetNotFound { .. }) => Ok(None),
            Err(e) => Err(crate::error_chain(&e)),
        };
        if let Some(hook) = &self.after_refresh {
            hook(&mut u);
        }
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_sit_beside_metadata() {
        assert_eq!(
            default_targets_url("https://h/berth/metadata/").as_deref(),
            Some("https://h/berth/targets")
        );
        assert_eq!(default_targets_url("https://h/tuf"), None);
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(transport("http://127.0.0.1:8080/metadata", None).is_ok());
        assert!(transport("http://localhost/metadata", None).is_ok());
        let e = transport("http://example.com/metadata", None)
            .err()
            .expect("refused");
        assert!(e.contains("plain http is refused"), "{e}");
        assert!(transport("file:///var/lib/berth/mirror", None).is_ok());
        // Beside each other, each URL is checked on its own.
        let e = transports(
            "http://127.0.0.1:1/metadata",
            "http://example.com/targets",
            None,
        )
        .err()
        .expect("refused");
        assert!(
            e.contains("example.com") && e.contains("plain http is refused"),
            "{e}"
        );
        assert!(transports("https://h/metadata", "https://h/targets", None).is_ok());
        assert!(transports("file:///m", "https://h/targets", None).is_ok());
    }
}
