//! The HTTPS client: TLS roots, proxies, and answering auth challenges.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{RequestBuilder, Response, StatusCode};

use super::auth::{parse_challenges, Auth, Challenge, TokenResponse};
use super::{ClientConfig, ImageRef, RegistryError};

/// A registry client. Cheap to share behind a reference across tasks.
#[derive(Debug)]
pub struct Client {
    pub(super) http: reqwest::Client,
    pub(super) cfg: ClientConfig,
    /// Answered challenges, by `host scope`.
    auth: Mutex<HashMap<String, Auth>>,
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

    /// Sends the request `make` builds, answering one auth challenge.
    pub(super) async fn send(
        &self,
        host: &str,
        scope: &str,
        url: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let key = format!("{host} {scope}");
        let current = self.auth.lock().expect("auth cache").get(&key).cloned();
        let current = current.unwrap_or(Auth::Anonymous);
        let resp = send_with(make(), &current, url).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let header = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let challenge = parse_challenges(&header).ok_or_else(|| RegistryError::Auth {
            url: url.to_string(),
            challenge: header.clone(),
            why: "the challenge names no scheme this client answers (Basic, Bearer)".into(),
        })?;
        let next =
            match challenge {
                Challenge::Basic { .. } => match &self.cfg.credentials {
                    Some(c) => Auth::Basic(c.clone()),
                    None => return Err(RegistryError::Auth {
                        url: url.to_string(),
                        challenge: header,
                        why:
                            "no credentials were given; pass --user and set BERTH_REGISTRY_PASSWORD"
                                .into(),
                    }),
                },
                Challenge::Bearer {
                    realm,
                    service,
                    scope: asked,
                } => Auth::Bearer(
                    self.token(
                        url,
                        &realm,
                        service.as_deref(),
                        asked.as_deref().unwrap_or(scope),
                    )
                    .await?,
                ),
            };
        if next == current {
            return Err(RegistryError::Denied {
                url: url.to_string(),
                status: 401,
            });
        }
        self.auth
            .lock()
            .expect("auth cache")
            .insert(key, next.clone());
        let resp = send_with(make(), &next, url).await?;
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Denied {
                url: url.to_string(),
                status: resp.status().as_u16(),
            }),
            _ => Ok(resp),
        }
    }

    async fn token(
        &self,
        url: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut q = vec![("scope", scope)];
        if let Some(s) = service {
            q.push(("service", s));
        }
        let mut req = self.http.get(realm).query(&q);
        if let Some(c) = &self.cfg.credentials {
            req = req.basic_auth(&c.user, Some(&c.password));
        }
        let resp = req.send().await.map_err(|source| RegistryError::Http {
            url: realm.to_string(),
            source,
        })?;
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(RegistryError::Denied {
                url: realm.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let resp = check(resp, realm, "token service").await?;
        let body = read_capped(resp, realm, 64 << 10).await?;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| RegistryError::Auth {
                url: url.to_string(),
                challenge: format!("Bearer realm={realm:?}"),
                why: "the token service answered without a token".into(),
            })
    }
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
