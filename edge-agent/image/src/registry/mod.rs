//! An OCI Distribution client: manifests and blobs fetched *by digest only*,
//! streamed through digest and size-limit adapters into the blob store, with
//! anonymous / Basic / bearer-token auth, custom CAs, HTTPS_PROXY, Range
//! resume, bounded retries with backoff, mirrors, a minimum transfer rate, an
//! overall deadline, bounded parallel layer downloads; and uploads for push.

pub mod auth;
mod blob;
mod client;
pub mod limits;
pub mod manifest;
mod pull;
mod pull_unpack;
mod push;
pub mod reference;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::Credentials;
pub use client::Client;
pub use limits::Backoff;
pub use manifest::{Compression, Descriptor, ImageConfig, Layer, Manifest, ManifestError};
pub use pull::{pull_blocking, put_verified, PullReport, PulledImage};
pub use pull_unpack::pull_unpack_blocking;
pub use push::{push_blocking, PushReport};
pub use reference::{Digest, ImageRef, RefError};

use crate::store::StoreError;

/// How the client talks to registries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Extra trusted CA certificates (PEM), added to the web PKI roots.
    pub ca_pem: Vec<Vec<u8>>,
    /// Credentials for Basic auth and for the bearer-token service.
    pub credentials: Option<Credentials>,
    /// Registries (`host[:port]`) tried in order before the image's own registry.
    pub mirrors: Vec<String>,
    /// Attempts per endpoint for a transient failure (at least 1).
    pub attempts: u32,
    pub backoff: Backoff,
    /// Minimum average rate per transfer, in bytes/s over `rate_window` (0: none).
    pub min_rate: u64,
    pub rate_window: Duration,
    /// Overall deadline for one pull or push.
    pub deadline: Duration,
    /// Layer downloads (or uploads) in flight at once.
    pub parallel: usize,
    /// Connection establishment timeout.
    pub connect_timeout: Duration,
    /// Upload chunk size for push.
    pub chunk_size: usize,
    /// Show progress bars on a terminal.
    pub progress: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            ca_pem: Vec::new(),
            credentials: None,
            mirrors: Vec::new(),
            attempts: 4,
            backoff: Backoff::default(),
            min_rate: 1024,
            rate_window: Duration::from_secs(30),
            deadline: Duration::from_secs(3600),
            parallel: 3,
            connect_timeout: Duration::from_secs(15),
            chunk_size: 4 << 20,
            progress: false,
        }
    }
}

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot build the HTTPS client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("CA certificate {} is not valid PEM: {source}", path.display())]
    Ca {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error(
        "request to {url} failed: {source}; check the address, the network, and the CA (--ca)"
    )]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "{url} refused the credentials ({status}); check the user and password for this registry"
    )]
    Denied { url: String, status: u16 },
    #[error(
        "the token service {realm} refused the credentials of user '{user}' ({status}); check \
         the user and its password (BERTH_REGISTRY_PASSWORD for berth, registry.password_file \
         on a device)"
    )]
    TokenDenied {
        realm: String,
        user: String,
        status: u16,
    },
    #[error(
        "the token service {realm} asks for credentials ({status}); pass --user and set \
         BERTH_REGISTRY_PASSWORD (registry.user and registry.password_file on a device)"
    )]
    TokenNeedsCredentials { realm: String, status: u16 },
    #[error(transparent)]
    Scope(Box<ScopeDenied>),
    #[error(
        "{url} redirected to {location}, which refused the request ({status}): the \
         registry's link to its storage expired or the storage refused it; if this persists, \
         check the registry's storage (redirect) settings"
    )]
    Redirect {
        url: String,
        location: String,
        status: u16,
    },
    #[error("{url} asks for authentication ({challenge}) but {why}")]
    Auth {
        url: String,
        challenge: String,
        why: String,
    },
    #[error(
        "{url} has no {what}; check the repository and that the pinned digest was pushed there"
    )]
    NotFound { url: String, what: String },
    #[error("content of {url} was refused: {source}")]
    Verify {
        url: String,
        source: limits::VerifyError,
    },
    #[error("{url} sent {got} bytes/s, under the minimum {min}; the link is too slow or the peer is stalling")]
    Slow { url: String, got: u64, min: u64 },
    #[error("{url} answered a Range request for bytes {asked}- with {got:?}")]
    BadRange {
        url: String,
        asked: u64,
        got: Option<String>,
    },
    #[error("{what} did not finish within the {secs}s deadline; retry on a better link or raise --deadline")]
    Deadline { what: String, secs: u64 },
    #[error("every source of {what} failed (each mirror, then the registry, with retries)")]
    Exhausted {
        what: String,
        #[source]
        last: Box<RegistryError>,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unpack(#[from] crate::unpack::UnpackError),
    #[error("image layout {}: {why}", path.display())]
    Layout { path: PathBuf, why: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl RegistryError {
    /// Whether trying the same endpoint again may help.
    pub fn transient(&self) -> bool {
        match self {
            RegistryError::Http { .. }
            | RegistryError::Slow { .. }
            | RegistryError::Redirect { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            RegistryError::Verify { source, .. } => {
                matches!(source, limits::VerifyError::Truncated { .. })
            }
            _ => false,
        }
    }
}

/// A registry refused a request although the token service issued a token:
/// the account lacks some of the actions the scope asks for.
#[derive(Debug, thiserror::Error)]
#[error(
    "{url}: user '{user}' has no {missing} access to repository {repository} (the token \
     service {realm} did not grant scope {scope}); ask the registry's administrator for \
     {missing} access to {repository}, or use an account that has it"
)]
pub struct ScopeDenied {
    pub url: String,
    pub user: String,
    pub repository: String,
    pub scope: String,
    pub missing: String,
    pub realm: String,
}

/// Runs `f` with a client on a private async runtime, for callers that are
/// not async.
fn block_on<T>(
    cfg: ClientConfig,
    f: impl AsyncFnOnce(&Client) -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    rt.block_on(async {
        let client = Client::new(cfg)?;
        f(&client).await
    })
}
