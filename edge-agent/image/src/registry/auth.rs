//! `WWW-Authenticate` challenges (RFC 7235) and the credentials that answer
//! them: anonymous, HTTP Basic, and the registry bearer-token flow.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A user name and password for a registry or its token service.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One parsed challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
        /// Why a token was not enough (`invalid_token`, `insufficient_scope`).
        error: Option<String>,
    },
}

/// How requests to one host are authorized once a challenge was answered.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    Basic(Credentials),
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic(c) => write!(f, "Basic({})", c.user),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Parses a `WWW-Authenticate` header value. Returns the first challenge with
/// a scheme this client answers (Bearer preferred over Basic), or `None`.
pub fn parse_challenges(header: &str) -> Option<Challenge> {
    let mut found = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        let (scheme, after) = match rest.find([' ', ',']) {
            Some(i) => (&rest[..i], rest[i..].trim_start_matches([' ', ','])),
            None => (rest, ""),
        };
        let (params, next) = parse_params(after);
        found.push((scheme.to_ascii_lowercase(), params));
        rest = next.trim_start_matches([' ', ',']);
    }
    let bearer = found.iter().find_map(|(s, p)| {
        (s == "bearer").then(|| {
            Some(Challenge::Bearer {
                realm: p.get("realm")?.clone(),
                service: p.get("service").cloned(),
                scope: p.get("scope").cloned(),
                error: p.get("error").cloned(),
            })
        })?
    });
    bearer.or_else(|| {
        found.iter().find_map(|(s, p)| {
            (s == "basic").then(|| Challenge::Basic {
                realm: p.get("realm").cloned(),
            })
        })
    })
}

/// Parses `key=value` or `key="quoted"` pairs until the next scheme token.
fn parse_params(mut s: &str) -> (BTreeMap<String, String>, &str) {
    let mut out = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        let Some(eq) = s.find('=') else {
            return (out, s);
        };
        let key = &s[..eq];
        if key.is_empty() || key.contains([' ', ',', '"']) {
            return (out, s);
        }
        let v = &s[eq + 1..];
        let (value, after) = if let Some(q) = v.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            (val, &q[end.min(q.len())..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].trim().to_string(), &v[end..])
        };
        out.insert(key.to_ascii_lowercase(), value);
        s = after;
    }
}

/// The token service's answer (`token` per the Docker spec, `access_token` per OAuth2).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds the token stays valid from its issue (60 when absent).
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// How long a token lives when the service does not say (the Docker spec's default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl TokenResponse {
    /// The token and how long after its receipt it should be replaced: a
    /// tenth of its lifetime (at most 30 s) early, so a request never
    /// carries a token that expires on the way.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let life = self
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .min(Duration::from_secs(24 * 3600));
        let early = (life / 10).min(Duration::from_secs(30));
        self.token
            .or(self.access_token)
            .filter(|t| !t.is_empty() && t.len() < 64 * 1024)
            .map(|t| (t, life - early))
    }
}

/// `repository:NAME:ACTIONS` split into its name and actions (a name may
/// hold `:`, as in `host:port/repo`).
pub fn repository_scope(scope: &str) -> Option<(&str, Vec<&str>)> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((name, actions.split(',').filter(|a| !a.is_empty()).collect()))
}

/// The actions a JWT bearer token grants on `repository`, read from its
/// `access` claim without checking the signature (only to say what is
/// missing; the registry is the one that verifies). `None`: an opaque token.
pub fn granted_actions(token: &str, repository: &str) -> Option<Vec<String>> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Claims {
        #[serde(default)]
        access: Vec<Access>,
    }
    #[derive(serde::Deserialize)]
    struct Access {
        #[serde(rename = "type")]
        kind: String,
        name: String,
        #[serde(default)]
        actions: Vec<String>,
    }
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&raw).ok()?;
    Some(
        claims
            .access
            .into_iter()
            .filter(|a| a.kind == "repository" && a.name == repository)
            .flat_map(|a| a.actions)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
                error: None,
            })
        );
    }

    #[test]
    fn bearer_challenge_with_an_error() {
        let c = parse_challenges(
            r#"Bearer realm="https://t/token",service="reg",scope="repository:a:pull,push",error="insufficient_scope""#,
        );
        assert!(matches!(
            c,
            Some(Challenge::Bearer { error: Some(e), scope: Some(s), .. })
                if e == "insufficient_scope" && s == "repository:a:pull,push"
        ));
    }

    #[test]
    fn basic_challenge_and_preference() {
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic {
                realm: Some("Registry Realm".into())
            })
        );
        let both = r#"Basic realm="x", Bearer realm="https://t/", service=s"#;
        assert!(matches!(
            parse_challenges(both),
            Some(Challenge::Bearer { service: Some(s), .. }) if s == "s"
        ));
    }

    #[test]
    fn quoted_escapes_commas_and_junk() {
        let c = parse_challenges(
            r#"bearer realm="https://t/?a=1,b=2",scope="repository:x:pull,push",service="a\"b""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://t/?a=1,b=2".into(),
                service: Some("a\"b".into()),
                scope: Some("repository:x:pull,push".into()),
                error: None,
            })
        );
        assert_eq!(parse_challenges(""), None);
        assert_eq!(parse_challenges("Negotiate"), None);
        assert_eq!(parse_challenges("Bearer service=x"), None);
        assert!(parse_challenges(r#"Bearer realm="unterminated"#).is_some());
    }

    #[test]
    fn tokens() {
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("abc".into(), Duration::from_secs(54)))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"token":"t","expires_in":900}"#).unwrap();
        assert_eq!(t.into_token(), Some(("t".into(), Duration::from_secs(870))));
        let t: TokenResponse = serde_json::from_str(r#"{"token":"t","expires_in":1}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("t".into(), Duration::from_millis(900)))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[test]
    fn scopes_and_granted_actions() {
        assert_eq!(
            repository_scope("repository:127.0.0.1:5000/a/b:pull,push"),
            Some(("127.0.0.1:5000/a/b", vec!["pull", "push"]))
        );
        assert_eq!(repository_scope("registry:catalog:*").map(|s| s.0), None);
        use base64::Engine as _;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let claims = r#"{"access":[{"type":"repository","name":"a/b","actions":["pull"]},
            {"type":"repository","name":"c","actions":["push"]}]}"#;
        let jwt = format!("{}.{}.sig", enc(r#"{"alg":"ES256"}"#), enc(claims));
        assert_eq!(granted_actions(&jwt, "a/b"), Some(vec!["pull".to_string()]));
        assert_eq!(granted_actions(&jwt, "x"), Some(vec![]));
        assert_eq!(granted_actions("opaque", "a/b"), None);
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?} {:?}", Auth::Bearer("tok".into())).contains("hunter2"));
        assert!(!format!("{:?}", Auth::Bearer("tok".into())).contains("tok"));
    }
}
