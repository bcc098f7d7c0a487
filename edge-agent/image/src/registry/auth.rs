//! `WWW-Authenticate` challenges (RFC 7235) and the credentials that answer
//! them: anonymous, HTTP Basic, and the registry bearer-token flow.

use std::collections::BTreeMap;
use std::fmt;

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
}

impl TokenResponse {
    pub fn into_token(self) -> Option<String> {
        self.token
            .or(self.access_token)
            .filter(|t| !t.is_empty() && t.len() < 64 * 1024)
    }
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
            })
        );
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
        assert_eq!(t.into_token().as_deref(), Some("abc"));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(t.into_token(), None);
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
