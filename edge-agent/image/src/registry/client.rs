//! The HTTPS client: TLS roots, proxies, and answering auth challenges.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{RequestBuilder, Response, StatusCode};

use super::auth::{
    granted_actions, parse_challenges, repository_scope, Auth, Challenge, TokenResponse,
};
use super::{ClientConfig, ImageRef, RegistryError, ScopeDenied};

/// A registry client. Cheap to share behind a reference across tasks.
#[derive(Debug)]
pub struct Client {
    pub(super) http: reqwest::Client,
    pub(super) cfg: ClientConfig,
    /// Answered challenges, by `host scope`: a token per scope.
    auth: Mutex<HashMap<String, Answer>>,
    /// Held while a token is fetched (see [`Client::answer`]).
    token_flight: tokio::sync::Mutex<()>,
}

impl Client {
    /// Builds the client. `HTTPS_PROXY`/`NO_PROXY` from the environment apply.
    pub fn new(cfg: ClientConfig) -> Result<Self, RegistryError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            // One HTTP/1.1 connection per transfer: parallel layers do not
            // share one TCP window (a stall or a drop hits one blob, which
            // resumes alone), and bulk downloads from a Distribution
            // registry run about a fifth faster than multiplexed over HTTP/2.
            .http1_only()
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        for pem in &cfg.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(RegistryError::Client)? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Self {
            http: b.build().map_err(RegistryError::Client)?,
            cfg,
            auth: Mutex::new(HashMap::new()),
            token_flight: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Hosts to try for `image`: the mirrors in order, then its own registry.
    pub(super) fn endpoints(&self, image: &ImageRef) -> Vec<String> {
        let mut v: Vec<String> = self
            .cfg
            .mirrors
            .iter()
            .map(|m| {
                m.trim_start_matches("https://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        if !v.contains(&image.registry) {
            v.push(image.registry.clone());
        }
        v
    }

    pub(super) fn url(host: &str, image: &ImageRef, kind: &str, reference: &str) -> String {
        format!("https://{host}/v2/{}/{kind}/{reference}", image.repository)
    }

    /// Sends the request `make` builds with the cached answer for `host
    /// scope` (a bearer token replaced shortly before it expires), and
    /// answers one auth challenge: a 401 to a cached token (expired, or
    /// revoked) fetches a fresh one and sends the request again.
    pub(super) async fn send(
        &self,
        host: &str,
        scope: &str,
        url: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let key = format!("{host} {scope}");
        let mut current = self.cached(&key).unwrap_or_else(Answer::anonymous);
        if let Some(challenge) = current.stale() {
            current = self
                .answer(&key, url, scope, &current, challenge.clone())
                .await?;
        }
        let resp = redirect_checked(send_with(make(), &current.auth, url).await?, url)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let header = www_authenticate(&resp);
        let challenge = parse_challenges(&header).ok_or_else(|| RegistryError::Auth {
            url: url.to_string(),
            challenge: header.clone(),
            why: "the challenge names no scheme this client answers (Basic, Bearer)".into(),
        })?;
        let next = self.answer(&key, url, scope, &current, challenge).await?;
        let resp = redirect_checked(send_with(make(), &next.auth, url).await?, url)?;
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(self.refused(url, scope, &next, &resp))
            }
            _ => Ok(resp),
        }
    }

    fn cached(&self, key: &str) -> Option<Answer> {
        self.auth.lock().expect("auth cache").get(key).cloned()
    }

    /// Answers `challenge` for `key` after `tried` was not accepted (or went
    /// stale). One token request at a time: transfers that meet the same
    /// challenge together wait for the first one's token.
    async fn answer(
        &self,
        key: &str,
        url: &str,
        scope: &str,
        tried: &Answer,
        challenge: Challenge,
    ) -> Result<Answer, RegistryError> {
        let _flight = self.token_flight.lock().await;
        if let Some(a) = self.cached(key) {
            if a.auth != tried.auth && a.stale().is_none() {
                return Ok(a);
            }
        }
        let next = match &challenge {
            Challenge::Basic { .. } => match &self.cfg.credentials {
                Some(c) => Answer {
                    auth: Auth::Basic(c.clone()),
                    refresh_at: None,
                    challenge: None,
                },
                None => {
                    return Err(RegistryError::Auth {
                        url: url.to_string(),
                        challenge: "Basic".into(),
                        why: "no credentials were given; pass --user and set \
                              BERTH_REGISTRY_PASSWORD"
                            .into(),
                    })
                }
            },
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
                ..
            } => {
                let (token, life) = self
                    .token(url, realm, service.as_deref(), scope, asked.as_deref())
                    .await?;
                Answer {
                    auth: Auth::Bearer(token),
                    refresh_at: Some(Instant::now() + life),
                    challenge: Some(challenge.clone()),
                }
            }
        };
        if next.auth == tried.auth {
            return Err(RegistryError::Denied {
                url: url.to_string(),
                status: 401,
            });
        }
        self.auth
            .lock()
            .expect("auth cache")
            .insert(key.to_string(), next.clone());
        Ok(next)
    }

    /// The error for a request refused again with a fresh answer.
    fn refused(&self, url: &str, scope: &str, sent: &Answer, resp: &Response) -> RegistryError {
        let status = resp.status().as_u16();
        let (Auth::Bearer(token), Some(Challenge::Bearer { realm, .. })) =
            (&sent.auth, &sent.challenge)
        else {
            return RegistryError::Denied {
                url: url.to_string(),
                status,
            };
        };
        let error = match parse_challenges(&www_authenticate(resp)) {
            Some(Challenge::Bearer { error, .. }) => error,
            _ => None,
        };
        let user = self
            .cfg
            .credentials
            .as_ref()
            .map_or_else(|| "(anonymous)".to_string(), |c| c.user.clone());
        match (error.as_deref(), repository_scope(scope)) {
            (Some("invalid_token"), _) => RegistryError::Auth {
                url: url.to_string(),
                challenge: format!("Bearer realm={realm:?} error=\"invalid_token\""),
                why: format!(
                    "it does not accept the token the token service {realm} signed: the \
                     registry's auth.token settings (issuer, service, rootcertbundle) do not \
                     match that service"
                ),
            },
            (_, Some((repository, wanted))) => {
                let granted = granted_actions(token, repository);
                let missing: Vec<&str> = wanted
                    .iter()
                    .copied()
                    .filter(|a| granted.as_ref().is_none_or(|g| !g.iter().any(|x| x == a)))
                    .collect();
                RegistryError::Scope(Box::new(ScopeDenied {
                    url: url.to_string(),
                    user,
                    repository: repository.to_string(),
                    scope: scope.to_string(),
                    missing: missing.join(","),
                    realm: realm.clone(),
                }))
            }
            _ => RegistryError::Denied {
                url: url.to_string(),
                status,
            },
        }
    }

    /// Asks the token service for a token covering `ours` (and the scope the
    /// challenge named, when different). Returns it and when to replace it.
    async fn token(
        &self,
        url: &str,
        realm: &str,
        service: Option<&str>,
        ours: &str,
        asked: Option<&str>,
    ) -> Result<(String, Duration), RegistryError> {
        let mut q = Vec::new();
        if let Some(s) = service {
            q.push(("service", s));
        }
        q.push(("scope", ours));
        if let Some(a) = asked.filter(|a| *a != ours) {
            q.push(("scope", a));
        }
        if let Some(c) = &self.cfg.credentials {
            q.push(("account", c.user.as_str()));
        }
        let mut req = self.http.get(realm).query(&q);
        if let Some(c) = &self.cfg.credentials {
            req = req.basic_auth(&c.user, Some(&c.password));
        }
        let resp = req.send().await.map_err(|source| RegistryError::Http {
            url: realm.to_string(),
            source,
        })?;
        let status = resp.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(match &self.cfg.credentials {
                Some(c) => RegistryError::TokenDenied {
                    realm: realm.to_string(),
                    user: c.user.clone(),
                    status: status.as_u16(),
                },
                None => RegistryError::TokenNeedsCredentials {
                    realm: realm.to_string(),
                    status: status.as_u16(),
                },
            });
        }
        let resp = check(resp, realm, "token service").await?;
        let body = read_capped(resp, realm, 64 << 10).await?;
        let token = serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| RegistryError::Auth {
                url: url.to_string(),
                challenge: format!("Bearer realm={realm:?}"),
                why: "the token service answered without a token".into(),
            })?;
        tracing::debug!(
            realm,
            scope = ours,
            refresh_s = token.1.as_secs_f64(),
            "bearer token"
        );
        Ok(token)
    }
}

/// A cached answer to the challenge of one `host scope`.
#[derive(Debug, Clone)]
struct Answer {
    auth: Auth,
    /// When a bearer token is replaced before use.
    refresh_at: Option<Instant>,
    /// The challenge a bearer token answered, to fetch the next one.
    challenge: Option<Challenge>,
}

impl Answer {
    fn anonymous() -> Self {
        Self {
            auth: Auth::Anonymous,
            refresh_at: None,
            challenge: None,
        }
    }

    /// The challenge to answer again when the token is due for replacement.
    fn stale(&self) -> Option<&Challenge> {
        match self.refresh_at {
            Some(t) if Instant::now() >= t => self.challenge.as_ref(),
            _ => None,
        }
    }
}

/// A registry may redirect a blob to another host (object storage, a CDN)
/// with a short-lived signed link; the client follows without the
/// registry's credentials. That host's 401 or 403 is no challenge to answer
/// with them: the link expired or the storage refused it, and asking the
/// registry again yields a fresh one (a transient error).
fn redirect_checked(resp: Response, url: &str) -> Result<Response, RegistryError> {
    let status = resp.status();
    if !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Ok(resp);
    }
    let to = resp.url();
    let same = reqwest::Url::parse(url).is_ok_and(|u| {
        u.scheme() == to.scheme()
            && u.host_str() == to.host_str()
            && u.port_or_known_default() == to.port_or_known_default()
    });
    if same {
        return Ok(resp);
    }
    // The query of a signed link is a secret: it is never shown.
    let mut location = to.clone();
    location.set_query(None);
    Err(RegistryError::Redirect {
        url: url.to_string(),
        location: location.to_string(),
        status: status.as_u16(),
    })
}

fn www_authenticate(resp: &Response) -> String {
    resp.headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn send_with(req: RequestBuilder, auth: &Auth, url: &str) -> Result<Response, RegistryError> {
    let req = match auth {
        Auth::Anonymous => req,
        Auth::Basic(c) => req.basic_auth(&c.user, Some(&c.password)),
        Auth::Bearer(t) => req.bearer_auth(t),
    };
    req.send().await.map_err(|source| RegistryError::Http {
        url: url.to_string(),
        source,
    })
}

/// Turns a non-success answer into an error naming the URL.
pub(super) async fn check(
    resp: Response,
    url: &str,
    what: &str,
) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(RegistryError::NotFound {
            url: url.to_string(),
            what: what.to_string(),
        });
    }
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(RegistryError::Denied {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let body = read_capped(resp, url, 512).await.unwrap_or_default();
    Err(RegistryError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body).trim().to_string(),
    })
}

/// Reads a small body, truncating (never buffering) past `limit`.
pub(super) async fn read_capped(
    resp: Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        let c = c.map_err(|source| RegistryError::Http {
            url: url.to_string(),
            source,
        })?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&c[..c.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
