//! Environment variables whose values are files inside the container
//! (`--secret-env KEY=PATH`), for secrets delivered on a tmpfs.
//!
//! The spec that is written to the bundle (`config.json`) names only the
//! variable and the file ([`ANNOTATION`]); the value is read inside the
//! container, as its user, right before the workload is executed (by the
//! executor, and by `exec` for commands run in it), and lives only in that
//! process's memory. So no file the runtime writes holds it, and neither do
//! its arguments or logs: errors name the variable and the path, never the
//! value.

use std::collections::BTreeMap;
use std::io::Read;

use oci_spec::runtime::Spec;

/// The annotation holding `{"KEY": "/container/path", …}`.
pub const ANNOTATION: &str = "run.berth.secret-env";

/// The largest value read (Linux allows 128 KiB per environment string).
pub const MAX_VALUE: u64 = 64 * 1024;

/// Why a secret variable cannot be declared or set.
#[derive(Debug, thiserror::Error)]
pub enum SecretEnvError {
    #[error("--secret-env {0:?} is not KEY=PATH")]
    Syntax(String),
    #[error(
        "secret variable name {0:?} must be letters, digits and '_', not starting with a digit"
    )]
    Name(String),
    #[error("secret variable {name}: the path {path:?} must be absolute, without '..' or ','")]
    Path { name: String, path: String },
    #[error("secret variable {0} is given twice")]
    Twice(String),
    #[error("secret variable {0} is also set by --env: give it once")]
    Clash(String),
    #[error("the {ANNOTATION} annotation is not a JSON object of names to paths: {0}")]
    Annotation(String),
    #[error("secret variable {name}: cannot read {path}: {reason}")]
    Read {
        name: String,
        path: String,
        reason: String,
    },
}

/// Whether `name` is a portable environment variable name.
pub fn valid_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Parses one `KEY=PATH` argument.
pub fn parse_arg(arg: &str) -> Result<(String, String), SecretEnvError> {
    let (k, p) = arg
        .split_once('=')
        .ok_or_else(|| SecretEnvError::Syntax(arg.to_string()))?;
    Ok((k.to_string(), p.to_string()))
}

/// Checks the declared variables against each other and the plain `env`
/// entries (`KEY=VALUE`), and returns the annotation value (`None` when
/// there are none).
pub fn annotation(
    entries: &[(String, String)],
    env: &[String],
) -> Result<Option<String>, SecretEnvError> {
    let mut map = BTreeMap::new();
    for (name, path) in entries {
        if !valid_name(name) {
            return Err(SecretEnvError::Name(name.clone()));
        }
        let clean = path.starts_with('/')
            && !path.contains(['\0', ','])
            && path[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !clean {
            return Err(SecretEnvError::Path {
                name: name.clone(),
                path: path.clone(),
            });
        }
        if env
            .iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == name)
        {
            return Err(SecretEnvError::Clash(name.clone()));
        }
        if map.insert(name.clone(), path.clone()).is_some() {
            return Err(SecretEnvError::Twice(name.clone()));
        }
    }
    Ok((!map.is_empty()).then(|| serde_json::to_string(&map).expect("a map of strings")))
}

/// The variables a spec declares, name to path inside the container.
pub fn declared(spec: &Spec) -> Result<BTreeMap<String, String>, SecretEnvError> {
    let Some(text) = spec.annotations().as_ref().and_then(|a| a.get(ANNOTATION)) else {
        return Ok(BTreeMap::new());
    };
    let map: BTreeMap<String, String> =
        serde_json::from_str(text).map_err(|e| SecretEnvError::Annotation(e.to_string()))?;
    if let Some(bad) = map.keys().find(|k| !valid_name(k)) {
        return Err(SecretEnvError::Name(bad.clone()));
    }
    Ok(map)
}

/// Reads one value: at most [`MAX_VALUE`] bytes of UTF-8 text without NUL,
/// kept exactly (a trailing newline included).
pub fn read_value(name: &str, path: &str) -> Result<String, SecretEnvError> {
    let err = |reason: String| SecretEnvError::Read {
        name: name.to_string(),
        path: path.to_string(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_VALUE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_VALUE {
        return Err(err(format!("it is larger than {MAX_VALUE} bytes")));
    }
    if buf.contains(&0) {
        return Err(err("it contains a NUL byte".into()));
    }
    String::from_utf8(buf).map_err(|_| err("it is not UTF-8 text".into()))
}

/// Every declared variable with its value, read now (inside the container).
/// (The process executes the workload right after, which drops its memory.)
pub fn resolve(spec: &Spec) -> Result<Vec<(String, String)>, SecretEnvError> {
    declared(spec)?
        .into_iter()
        .map(|(name, path)| read_value(&name, &path).map(|v| (name, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_checked_and_carried_as_names_and_paths_only() {
        let e = |k: &str, p: &str| (k.to_string(), p.to_string());
        let a = annotation(&[e("DB_PASSWORD", "/run/secrets/db")], &["A=1".into()])
            .unwrap()
            .unwrap();
        assert_eq!(a, r#"{"DB_PASSWORD":"/run/secrets/db"}"#);
        assert_eq!(annotation(&[], &[]).unwrap(), None);
        for (bad, want) in [
            (vec![e("1X", "/a")], "must be letters"),
            (vec![e("A-B", "/a")], "must be letters"),
            (vec![e("X", "rel")], "must be absolute"),
            (vec![e("X", "/a/../b")], "must be absolute"),
            (vec![e("X", "/a"), e("X", "/b")], "given twice"),
            (vec![e("A", "/a")], "also set by --env"),
        ] {
            let msg = annotation(&bad, &["A=1".into()]).unwrap_err().to_string();
            assert!(msg.contains(want), "{bad:?}: {msg}");
        }
        assert!(parse_arg("NOEQUALS").is_err());
        assert_eq!(parse_arg("K=/p").unwrap(), e("K", "/p"));
    }

    #[test]
    fn values_are_read_exactly_and_bad_ones_are_refused_without_their_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n).display().to_string();
        std::fs::write(p("ok"), "s3cret\n").unwrap();
        assert_eq!(read_value("V", &p("ok")).unwrap(), "s3cret\n");
        std::fs::write(p("nul"), b"ab\0cd-hidden").unwrap();
        let e = read_value("V", &p("nul")).unwrap_err().to_string();
        assert!(e.contains("NUL") && !e.contains("hidden"), "{e}");
        std::fs::write(p("bin"), b"\xff\xfe-hidden").unwrap();
        let e = read_value("V", &p("bin")).unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && !e.contains("hidden"), "{e}");
        std::fs::write(p("big"), vec![b'x'; MAX_VALUE as usize + 1]).unwrap();
        let e = read_value("V", &p("big")).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_value("V", &p("absent")).unwrap_err().to_string();
        assert!(e.starts_with("secret variable V: cannot read"), "{e}");
    }
}
