//! The process a workload runs: image configuration plus overrides, checked.

use serde::Deserialize;

use super::paths::{self, PathError, RootDir};
use super::WorkloadOptions;
use crate::idmap::IdRange;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an OCI image configuration (`application/vnd.oci.image.config.v1+json`)
/// that decide how the workload starts.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: RunConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

impl ImageConfig {
    /// Parses an image configuration document.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The checked process of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Combines image configuration and overrides into a checked process.
pub fn plan(
    root: &RootDir,
    image: &ImageConfig,
    opts: &WorkloadOptions,
    range: IdRange,
) -> Result<ProcessPlan, PathError> {
    let c = &image.config;
    let args = match &opts.args {
        Some(a) => a.clone(),
        None => {
            let mut a = c.entrypoint.clone().unwrap_or_default();
            a.extend(c.cmd.clone().unwrap_or_default());
            a
        }
    };
    if args.is_empty() || args[0].is_empty() {
        return Err(PathError::NoEntrypoint);
    }
    if let Some(bad) = args.iter().find(|a| a.contains('\0')) {
        return Err(PathError::Spec(format!("argument {bad:?} contains NUL")));
    }
    let mut env: Vec<String> = Vec::new();
    for e in c.env.iter().flatten().chain(&opts.env) {
        let key = match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !e.contains('\0') => k,
            _ => return Err(PathError::Env(e.clone())),
        };
        env.retain(|x| x.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(e.clone());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = match c.working_dir.as_deref().filter(|w| !w.is_empty()) {
        Some(w) => {
            let w = paths::container_path(w, "working directory")?;
            paths::not_reserved(&w, "working directory")?;
            root.check_no_symlink(&w)?;
            w
        }
        None => "/".to_string(),
    };
    let user = opts.user.as_deref().or(c.user.as_deref()).unwrap_or("");
    let (uid, gid) = resolve_user(root, user)?;
    for (what, id) in [("uid", uid), ("gid", gid)] {
        if u64::from(id) >= u64::from(range.size) {
            return Err(PathError::User {
                user: user.to_string(),
                reason: format!(
                    "{what} {id} is outside the workload's user namespace (ids 0..{}): use a smaller id",
                    range.size
                ),
            });
        }
    }
    Ok(ProcessPlan {
        args,
        env,
        cwd,
        uid,
        gid,
        additional_gids: Vec::new(),
    })
}

/// Resolves `""`, `uid`, `uid:gid`, `name` or `name:group` against the image's
/// `/etc/passwd` and `/etc/group` (read without following symlinks).
fn resolve_user(root: &RootDir, user: &str) -> Result<(u32, u32), PathError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let err = |reason: String| PathError::User {
        user: user.to_string(),
        reason,
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid_entry = lookup(root, "/etc/passwd", u, 2).map_err(&err)?;
    let uid = uid_entry.0;
    let gid = match g {
        Some(g) => lookup(root, "/etc/group", g, 2).map_err(&err)?.0,
        None => uid_entry.1.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// A numeric id (with no passwd lookup) or a name's `(id, primary gid)`.
fn lookup(
    root: &RootDir,
    file: &str,
    name: &str,
    id_field: usize,
) -> Result<(u32, Option<u32>), String> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        let id: u64 = name
            .parse()
            .map_err(|_| format!("'{name}' is not a valid id"))?;
        if id > i32::MAX as u64 {
            return Err(format!(
                "id {id} is above 2^31-1, which no user namespace maps"
            ));
        }
        return Ok((id as u32, None));
    }
    root.check_no_symlink(file).map_err(|e| e.to_string())?;
    let text = root.read_to_string(file).map_err(|e| {
        format!("'{name}' is not numeric and {file} cannot be read in the image: {e}")
    })?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&name) && f.len() > id_field {
            let id: u32 = f[id_field]
                .parse()
                .map_err(|_| format!("{file} has a bad id for '{name}'"))?;
            let primary = f.get(id_field + 1).and_then(|g| g.parse().ok());
            return Ok((id, primary));
        }
    }
    Err(format!("'{name}' is not in the image's {file}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn range() -> IdRange {
        IdRange {
            start: 100_000,
            size: 65_536,
        }
    }

    fn cfg(json: &str) -> ImageConfig {
        ImageConfig::from_slice(json.as_bytes()).unwrap()
    }

    #[test]
    fn entrypoint_cmd_env_and_overrides() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(
            r#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["-v"],"Env":["A=1","PATH=/bin"],"WorkingDir":"/srv"}}"#,
        );
        let mut o = WorkloadOptions::default();
        let p = plan(&RootDir::open(d.path()), &c, &o, range()).unwrap();
        assert_eq!(p.args, ["/bin/app", "-v"]);
        assert_eq!(p.env, ["A=1", "PATH=/bin"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!((p.uid, p.gid), (0, 0));
        o.args = Some(vec!["/bin/sh".into()]);
        o.env = vec!["A=2".into()];
        o.user = Some("1000:1001".into());
        let p = plan(&RootDir::open(d.path()), &c, &o, range()).unwrap();
        assert_eq!(p.args, ["/bin/sh"]);
        assert_eq!(p.env, ["PATH=/bin", "A=2"]);
        assert_eq!((p.uid, p.gid), (1000, 1001));
    }

    #[test]
    fn bad_inputs_are_named() {
        let d = tempfile::tempdir().unwrap();
        let o = WorkloadOptions::default();
        let e = plan(&RootDir::open(d.path()), &cfg("{}"), &o, range()).unwrap_err();
        assert!(matches!(e, PathError::NoEntrypoint));
        let e = plan(
            &RootDir::open(d.path()),
            &cfg(r#"{"config":{"Cmd":["x"],"WorkingDir":"/proc/self/fd/3"}}"#),
            &o,
            range(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/proc"), "{e}");
        let e = plan(
            &RootDir::open(d.path()),
            &cfg(r#"{"config":{"Cmd":["x"],"User":"2147483648"}}"#),
            &o,
            range(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("above 2^31"), "{e}");
        let e = plan(
            &RootDir::open(d.path()),
            &cfg(r#"{"config":{"Cmd":["x"],"User":"70000"}}"#),
            &o,
            range(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("outside the workload's user namespace"),
            "{e}"
        );
        let e = plan(
            &RootDir::open(d.path()),
            &cfg(r#"{"config":{"Cmd":["x"],"Env":["=x"]}}"#),
            &o,
            range(),
        )
        .unwrap_err();
        assert!(matches!(e, PathError::Env(_)));
        let e = plan(
            &RootDir::open(d.path()),
            &cfg(r#"{"config":{"Cmd":["x"],"User":"nobody"}}"#),
            &o,
            range(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/etc/passwd"), "{e}");
    }

    #[test]
    fn names_resolve_from_the_image() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let o = WorkloadOptions::default();
        let p = plan(
            &RootDir::open(d.path()),
            &cfg(r#"{"config":{"Cmd":["x"],"User":"app:staff"}}"#),
            &o,
            range(),
        )
        .unwrap();
        assert_eq!((p.uid, p.gid), (1000, 50));
    }
}
