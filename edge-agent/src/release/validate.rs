//! Parsing and checking a release document: every problem with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::document::{Arch, Check, Release, Workload, SCHEMA, SCHEMA_SECRETS};
use crate::names::WorkloadName;

/// One thing wrong with a release document, at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `workloads[1].image.digests.arm64`, or `.` for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A release document that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{source_name}: not a valid release document: {problem}; fix that field and validate again (`berth release validate`)")]
    Syntax {
        source_name: String,
        problem: Problem,
    },
    #[error("{source_name}: {} problem(s) in the release document:\n  {}\nfix them and validate again (`berth release validate`)", .problems.len(), list(.problems))]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Parses a TOML release document (the operator's form) and checks it.
pub fn from_toml(source_name: &str, text: &str) -> Result<Release, ReleaseError> {
    let de = toml::Deserializer::new(text);
    let release: Release = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ReleaseError::Syntax {
            source_name: source_name.to_string(),
            problem: Problem {
                path,
                message: inner.message().trim().to_string(),
            },
        }
    })?;
    checked(source_name, release)
}

/// Parses a JSON release document (the signed, published form) and checks it.
pub fn from_json(source_name: &str, bytes: &[u8]) -> Result<Release, ReleaseError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let release: Release = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ReleaseError::Syntax {
            source_name: source_name.to_string(),
            problem: Problem {
                path,
                message: e.into_inner().to_string(),
            },
        }
    })?;
    checked(source_name, release)
}

fn checked(source_name: &str, release: Release) -> Result<Release, ReleaseError> {
    let problems = check(&release);
    if problems.is_empty() {
        Ok(release)
    } else {
        Err(ReleaseError::Invalid {
            source_name: source_name.to_string(),
            problems,
        })
    }
}

/// Every semantic problem of a parsed document (empty when it is usable).
pub fn check(r: &Release) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |path: String, message: String| out.push(Problem { path, message });
    if !(SCHEMA..=SCHEMA_SECRETS).contains(&r.schema) {
        bad(
            "schema".into(),
            format!(
                "schema {} is not supported (this agent reads schemas {SCHEMA} to {SCHEMA_SECRETS}); upgrade the agent or write schema {SCHEMA_SECRETS}",
                r.schema
            ),
        );
    }
    if !is_label(&r.fleet) {
        bad(
            "fleet".into(),
            "must be 1-63 characters of a-z, 0-9, '-'".into(),
        );
    }
    if r.generation == 0 {
        bad("generation".into(), "must be at least 1".into());
    }
    for (i, d) in r.devices.iter().enumerate() {
        if !is_label(d) {
            bad(
                format!("devices[{i}]"),
                format!("device id {d:?} must be 1-63 characters of a-z, 0-9, '-'"),
            );
        }
    }
    let names: BTreeMap<&WorkloadName, usize> = r
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| (&w.name, i))
        .collect();
    let mut seen = BTreeSet::new();
    for (i, w) in r.workloads.iter().enumerate() {
        if !seen.insert(&w.name) {
            bad(
                format!("workloads[{i}].name"),
                format!("workload {:?} is defined twice", w.name.as_str()),
            );
        }
        check_workload(&format!("workloads[{i}]"), w, &names, &mut bad);
    }
    check_secrets(r, &mut bad);
    if let Err(cycle) = start_order(r) {
        bad(
            "workloads".into(),
            format!(
                "start order has a cycle through {}",
                cycle
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        );
    }
    out
}

/// The largest sealed secret accepted (age adds ~200 bytes per recipient).
pub const MAX_SEALED: usize = 256 * 1024;

fn check_secrets(r: &Release, bad: &mut impl FnMut(String, String)) {
    let uses = r.workloads.iter().any(|w| !w.secrets.is_empty());
    if (uses || !r.secrets.is_empty()) && r.schema < SCHEMA_SECRETS {
        bad(
            "schema".into(),
            format!("sealed secrets need schema = {SCHEMA_SECRETS} (agents that read only schema {SCHEMA} would not deliver them)"),
        );
    }
    let mut names = BTreeSet::new();
    for (i, s) in r.secrets.iter().enumerate() {
        if !names.insert(&s.name) {
            bad(
                format!("secrets[{i}].name"),
                format!("secret {:?} is defined twice", s.name.as_str()),
            );
        }
        if s.sealed.len() > MAX_SEALED {
            bad(
                format!("secrets[{i}].sealed"),
                format!("is {} bytes, more than {MAX_SEALED}", s.sealed.len()),
            );
        } else if !s
            .sealed
            .trim_start()
            .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
        {
            bad(
                format!("secrets[{i}].sealed"),
                "must be an ASCII-armoured age file (berth secret seal prints one)".into(),
            );
        }
        let actual = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(s.sealed.as_bytes()))
        );
        if actual != s.digest.as_str() {
            bad(
                format!("secrets[{i}].digest"),
                format!("is not the digest of `sealed` ({actual}): copy both from the same `berth secret seal` output"),
            );
        }
    }
    for (i, w) in r.workloads.iter().enumerate() {
        let mut used = BTreeSet::new();
        let mut vars = BTreeSet::new();
        for (j, s) in w.secrets.iter().enumerate() {
            if let Some(var) = &s.env {
                let p = format!("workloads[{i}].secrets[{j}].env");
                if !is_env_name(var) {
                    bad(p, format!("{var:?} is not a variable name: use letters, digits and '_', not starting with a digit"));
                } else if w.env.contains_key(var) {
                    bad(
                        p,
                        format!(
                            "{var} is also set in workloads[{i}].env: give the variable one source"
                        ),
                    );
                } else if !vars.insert(var) {
                    bad(
                        p,
                        format!("{var} receives two secrets: give each its own variable"),
                    );
                }
            }
            if !names.contains(&s.name) {
                bad(
                    format!("workloads[{i}].secrets[{j}].name"),
                    format!(
                        "no secret named {:?} in this release's [[secrets]]",
                        s.name.as_str()
                    ),
                );
            } else if !used.insert(&s.name) {
                bad(
                    format!("workloads[{i}].secrets[{j}].name"),
                    format!("secret {:?} is named twice", s.name.as_str()),
                );
            }
        }
        if !w.secrets.is_empty()
            && w.volumes
                .iter()
                .any(|v| v.path == "/run/secrets" || v.path.starts_with("/run/secrets/"))
        {
            bad(
                format!("workloads[{i}].volumes"),
                "/run/secrets is where the workload's secrets are mounted: use another path".into(),
            );
        }
    }
}

fn check_workload(
    p: &str,
    w: &Workload,
    names: &BTreeMap<&WorkloadName, usize>,
    bad: &mut impl FnMut(String, String),
) {
    if w.image.digests.is_empty() {
        bad(
            format!("{p}.image.digests"),
            "pin at least one architecture's manifest digest".into(),
        );
    }
    if w.image.registry.is_empty() || w.image.registry.contains(['/', ' ']) {
        bad(
            format!("{p}.image.registry"),
            "must be host[:port], without a scheme or path".into(),
        );
    }
    if w.image.repository.is_empty()
        || !w.image.repository.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c != "."
                && c != ".."
        })
    {
        bad(
            format!("{p}.image.repository"),
            "must be lower-case path components of a-z, 0-9, '.', '_', '-'".into(),
        );
    }
    if let Some(args) = &w.args {
        if args.is_empty() {
            bad(
                format!("{p}.args"),
                "must not be empty (omit it to use the image's)".into(),
            );
        }
    }
    for k in w.env.keys() {
        if k.is_empty() || k.contains(['=', '\0']) {
            bad(
                format!("{p}.env.{k}"),
                "variable names must be non-empty, without '=' or NUL".into(),
            );
        }
    }
    if let Some(user) = &w.user {
        let ok = user.split(':').count() <= 2
            && user
                .split(':')
                .all(|part| !part.is_empty() && part.parse::<u32>().is_ok());
        if !ok {
            bad(
                format!("{p}.user"),
                format!("{user:?} must be numeric uid[:gid]"),
            );
        }
    }
    let res = &w.resources;
    if res.memory_mb.is_some_and(|m| !(4..=1 << 20).contains(&m)) {
        bad(
            format!("{p}.resources.memory_mb"),
            "must be between 4 and 1048576".into(),
        );
    }
    if res
        .cpu_millis
        .is_some_and(|c| !(10..=1_000_000).contains(&c))
    {
        bad(
            format!("{p}.resources.cpu_millis"),
            "must be between 10 and 1000000".into(),
        );
    }
    if res.pids.is_some_and(|n| !(1..=1 << 22).contains(&n)) {
        bad(
            format!("{p}.resources.pids"),
            "must be between 1 and 4194304".into(),
        );
    }
    let mut paths = BTreeSet::new();
    for (j, v) in w.volumes.iter().enumerate() {
        if !is_container_path(&v.path) {
            bad(
                format!("{p}.volumes[{j}].path"),
                format!(
                    "{:?} must be an absolute path without '..', '.' or '//' components",
                    v.path
                ),
            );
        } else if !paths.insert(v.path.as_str()) {
            bad(
                format!("{p}.volumes[{j}].path"),
                format!("{:?} is mounted twice", v.path),
            );
        }
    }
    for (j, d) in w.devices.iter().enumerate() {
        if !d.starts_with("/dev/") || !is_container_path(d) {
            bad(
                format!("{p}.devices[{j}]"),
                format!("{d:?} must be a path under /dev/"),
            );
        }
    }
    let h = &w.health;
    if h.deadline_s == 0 || h.deadline_s > 3600 {
        bad(
            format!("{p}.health.deadline_s"),
            "must be between 1 and 3600 seconds".into(),
        );
    }
    match &h.check {
        Check::Uptime { seconds } if *seconds >= h.deadline_s => bad(
            format!("{p}.health.seconds"),
            "uptime must be shorter than the deadline".into(),
        ),
        Check::Command { command } if command.is_empty() => {
            bad(format!("{p}.health.command"), "must name a program".into())
        }
        Check::Tcp { port } | Check::Http { port, .. } if *port == 0 => {
            bad(format!("{p}.health.port"), "must not be 0".into())
        }
        Check::Http { path, .. } if !path.starts_with('/') => {
            bad(format!("{p}.health.path"), "must start with '/'".into())
        }
        _ => {}
    }
    if matches!(h.check, Check::Tcp { .. } | Check::Http { .. })
        && w.network != super::document::Network::Host
    {
        bad(
            format!("{p}.health"),
            "tcp and http checks probe the host network: set network = \"host\" or use a command check".into(),
        );
    }
    let r = &w.restart;
    if r.backoff_initial_ms == 0 || r.backoff_initial_ms > r.backoff_max_ms {
        bad(
            format!("{p}.restart"),
            "backoff_initial_ms must be at least 1 and at most backoff_max_ms".into(),
        );
    }
    for (j, a) in w.after.iter().enumerate() {
        if !names.contains_key(a) {
            bad(
                format!("{p}.after[{j}]"),
                format!("no workload named {:?} in this release", a.as_str()),
            );
        } else if a == &w.name {
            bad(
                format!("{p}.after[{j}]"),
                "a workload cannot start after itself".into(),
            );
        }
    }
}

/// Workload names in start order (dependencies first, then document order).
/// Errors with a cycle when `after` edges loop.
pub fn start_order(r: &Release) -> Result<Vec<WorkloadName>, Vec<WorkloadName>> {
    let index: BTreeMap<&WorkloadName, &Workload> =
        r.workloads.iter().map(|w| (&w.name, w)).collect();
    let mut done: BTreeSet<&WorkloadName> = BTreeSet::new();
    let mut order = Vec::new();
    for w in &r.workloads {
        let mut stack: Vec<&WorkloadName> = Vec::new();
        visit(&w.name, &index, &mut done, &mut stack, &mut order)?;
    }
    Ok(order)
}

fn visit<'a>(
    n: &'a WorkloadName,
    index: &BTreeMap<&'a WorkloadName, &'a Workload>,
    done: &mut BTreeSet<&'a WorkloadName>,
    stack: &mut Vec<&'a WorkloadName>,
    order: &mut Vec<WorkloadName>,
) -> Result<(), Vec<WorkloadName>> {
    if done.contains(n) {
        return Ok(());
    }
    if let Some(at) = stack.iter().position(|s| *s == n) {
        let mut cycle: Vec<WorkloadName> = stack[at..].iter().map(|s| (*s).clone()).collect();
        cycle.push(n.clone());
        return Err(cycle);
    }
    stack.push(n);
    if let Some(w) = index.get(n) {
        for dep in &w.after {
            if index.contains_key(dep) && dep != n {
                visit(dep, index, done, stack, order)?;
            }
        }
    }
    stack.pop();
    done.insert(n);
    order.push(n.clone());
    Ok(())
}

/// Who this device is, for deciding whether a release is meant for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub fleet: String,
    pub device: String,
    pub arch: Arch,
}

/// Whether a verified release applies to a device, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    Yes,
    OtherFleet(String),
    OtherDevices,
    /// These workloads pin no image for the device's architecture.
    NoImageFor(Arch, Vec<WorkloadName>),
}

pub fn applies(r: &Release, me: &DeviceIdentity) -> Applies {
    if r.fleet != me.fleet {
        return Applies::OtherFleet(r.fleet.clone());
    }
    if !r.devices.is_empty() && !r.devices.iter().any(|d| d == &me.device) {
        return Applies::OtherDevices;
    }
    let missing: Vec<WorkloadName> = r
        .workloads
        .iter()
        .filter(|w| !w.image.digests.contains_key(&me.arch))
        .map(|w| w.name.clone())
        .collect();
    if missing.is_empty() {
        Applies::Yes
    } else {
        Applies::NoImageFor(me.arch, missing)
    }
}

/// A portable environment variable name (what `berth-runtime --secret-env`
/// accepts).
fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_label(s: &str) -> bool {
    WorkloadName::parse(s).is_ok()
}

fn is_container_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() < 4096
        && !p.contains('\0')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}
