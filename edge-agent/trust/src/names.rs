//! Untrusted names: target paths and role names become validated values before they
//! become URLs or file names; delegation path patterns match them.

/// Why a name was refused.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error(
        "target path {0:?} is empty, absolute, or has an empty, `.` or `..` component or a NUL"
    )]
    TargetPath(String),
    #[error("role name {0:?} is empty or has a NUL")]
    RoleName(String),
}

/// Checks a target path taken from signed metadata or the command line.
pub fn check_target_path(path: &str) -> Result<(), NameError> {
    if path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(NameError::TargetPath(path.into()));
    }
    Ok(())
}

/// A role name as a single file-name component (percent-encoded, like python-tuf's
/// `quote(name, safe="")`), so `../x` or `a/b` cannot leave the metadata directory.
pub fn role_file_stem(name: &str) -> Result<String, NameError> {
    if name.is_empty() || name.contains('\0') {
        return Err(NameError::RoleName(name.into()));
    }
    Ok(quote(name))
}

/// Percent-encodes every byte except ASCII letters, digits and `_.-~`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `target` matches a delegation `pattern`: both split on `/` into the same
/// number of components, each matched with shell-style `*`, `?`, `[…]`, `[!…]`.
pub fn path_matches(pattern: &str, target: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = target.split('/').collect();
    p.len() == t.len()
        && p.iter()
            .zip(&t)
            .all(|(p, t)| fnmatch(p.as_bytes(), t.as_bytes()))
}

fn fnmatch(p: &[u8], t: &[u8]) -> bool {
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&p[pi..], t[ti]) {
                        if matched {
                            pi += next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[…]` class at the start of `p`; returns whether it
/// matched and the class length, or None when the class is unterminated (a literal `[`).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = p.get(i) == Some(&b'!');
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < p.len() {
        if p[i] == b']' && i > start {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// Percent-encodes each `/`-separated component of a URL path.
pub fn quote_path(path: &str) -> String {
    path.split('/').map(quote).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_per_component() {
        assert!(path_matches("releases/*.json", "releases/fleet-a.json"));
        assert!(!path_matches(
            "releases/*.json",
            "releases/sub/fleet-a.json"
        ));
        assert!(!path_matches("*", "a/b"));
        assert!(path_matches("*/*", "a/b"));
        assert!(path_matches("file?.txt", "file1.txt"));
        assert!(!path_matches("file?.txt", "file10.txt"));
        assert!(path_matches("f[0-9].txt", "f7.txt"));
        assert!(!path_matches("f[!0-9].txt", "f7.txt"));
        assert!(path_matches("f[!0-9].txt", "fx.txt"));
        assert!(path_matches("a*b*c", "axxbyyc"));
        assert!(!path_matches("a*b*c", "axxbyy"));
        assert!(path_matches("[", "["));
        assert!(!path_matches("Releases/*", "releases/x"));
    }

    #[test]
    fn target_paths_and_role_names() {
        check_target_path("releases/a.json").unwrap();
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\0b"] {
            assert!(check_target_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(role_file_stem("../evil/x").unwrap(), "..%2Fevil%2Fx");
        assert_eq!(role_file_stem("..").unwrap(), "..", "stored as `...json`");
        assert!(role_file_stem("").is_err());
        assert_eq!(quote("a b/c"), "a%20b%2Fc");
    }
}
