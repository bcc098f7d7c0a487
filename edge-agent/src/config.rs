//! The agent's configuration: defaults < `/etc/berth/agent.toml` <
//! `/etc/berth/agent.d/*.toml` (in name order) < `BERTH__SECTION__KEY`
//! environment variables < command-line `--set section.key=value`, merged
//! key by key, then validated once into [`AgentConfig`]. An unknown key or a
//! wrong type is an error naming the key and every source that was read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::release::document::Arch;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub device: Device,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub mqtt: Option<Mqtt>,
    pub trust: Trust,
    #[serde(default)]
    pub registry: Registry,
    #[serde(default)]
    pub policy: Policy,
    /// A status LED (absent: none).
    #[serde(default)]
    pub led: Option<Led>,
    /// The hardware watchdog (absent: not used).
    #[serde(default)]
    pub watchdog: Option<Watchdog>,
    /// Agent self-update into two slots with a trial (absent: the agent
    /// runs as installed and ignores agent targets; see `selfupdate`).
    #[serde(default)]
    pub self_update: Option<SelfUpdate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfUpdate {
    /// How long a new agent has, from its start, to reconnect, reconcile
    /// and report healthy before it is stopped and the old one restarted.
    #[serde(default = "SelfUpdate::default_deadline")]
    pub deadline_s: u64,
    /// Starts of a new agent before it is given up (each counted, and
    /// persisted, before it happens).
    #[serde(default = "SelfUpdate::default_tries")]
    pub tries: u32,
}

impl SelfUpdate {
    fn default_deadline() -> u64 {
        300
    }
    fn default_tries() -> u32 {
        2
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Led {
    /// `gpio:/dev/gpiochipN:LINE`, or `sim:/path` (a file recording the
    /// pin's changes; format in `hw::led`).
    pub pin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    #[serde(default = "Watchdog::default_device")]
    pub device: PathBuf,
    /// How often it is petted (well under the hardware timeout).
    #[serde(default = "Watchdog::default_interval")]
    pub interval_ms: u64,
    /// The longest the main loop (or one update step) may go without
    /// progress before petting stops and the hardware resets the device.
    #[serde(default = "Watchdog::default_stall")]
    pub stall_s: u64,
    /// Disarm (write `V`) on a clean stop.
    #[serde(default = "Watchdog::default_magic_close")]
    pub magic_close: bool,
}

impl Watchdog {
    fn default_device() -> PathBuf {
        "/dev/watchdog".into()
    }
    fn default_interval() -> u64 {
        1000
    }
    fn default_stall() -> u64 {
        600
    }
    fn default_magic_close() -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// This device's id (a DNS label; also its MQTT client identity).
    pub id: String,
    pub fleet: String,
    /// Defaults to the architecture the agent was built for.
    #[serde(default)]
    pub arch: Option<Arch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// sled state, images, volumes, the device key.
    pub state: PathBuf,
    /// The local API socket (mode 0600).
    pub socket: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    /// `berth-runtime` (the default), or `record`: start no container and
    /// record every operation under `runtime_root` (fleet simulations).
    pub runtime_backend: RuntimeBackend,
    /// A directory watched for offline bundles (`*.bundle`), e.g. where
    /// USB sticks are mounted.
    pub import_dir: Option<PathBuf>,
    /// Where opened secrets are put for the workloads (must be on a tmpfs).
    pub secrets: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state: "/var/lib/berth".into(),
            socket: "/run/berth/agent.sock".into(),
            runtime: "/usr/bin/berth-runtime".into(),
            runtime_root: "/run/berth/runtime".into(),
            runtime_backend: RuntimeBackend::default(),
            import_dir: None,
            secrets: "/run/berth/secrets".into(),
        }
    }
}

/// Which container runtime the agent drives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeBackend {
    #[default]
    #[serde(rename = "berth-runtime")]
    BerthRuntime,
    #[serde(rename = "record")]
    Record,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    pub host: String,
    #[serde(default = "Mqtt::default_port")]
    pub port: u16,
    /// CA of the broker's certificate, the device's client certificate
    /// and key. All three absent: plain MQTT, only to a loopback broker.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default = "Mqtt::default_prefix")]
    pub prefix: String,
    #[serde(default = "Mqtt::default_keep_alive")]
    pub keep_alive_s: u64,
}

impl Mqtt {
    fn default_port() -> u16 {
        8883
    }
    fn default_prefix() -> String {
        "berth".into()
    }
    fn default_keep_alive() -> u64 {
        30
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// Where TUF metadata is fetched (`https://…`, or `file://…` for a mirror directory).
    pub metadata_url: String,
    /// Where targets are fetched; defaults to `…/targets` beside a
    /// `…/metadata` URL.
    #[serde(default)]
    pub targets_url: Option<String>,
    /// The root of trust, pinned at provisioning (used once, on first start).
    pub root: PathBuf,
    /// Periodic refresh (covers a silent broker), with ±jitter.
    #[serde(default = "Trust::default_refresh")]
    pub refresh_s: u64,
    #[serde(default = "Trust::default_jitter")]
    pub jitter_s: u64,
    /// A CA for the metadata server besides the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl Trust {
    fn default_refresh() -> u64 {
        900
    }
    fn default_jitter() -> u64 {
        120
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Tried in order before the registry a release names.
    #[serde(default)]
    pub mirrors: Vec<String>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Registry account for pulls (basic or token auth).
    #[serde(default)]
    pub user: Option<String>,
    /// A file holding the account's password (mode 0600).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// What releases may ask of this device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Host devices a workload may have passed through.
    #[serde(default)]
    pub allow_devices: Vec<String>,
    #[serde(default)]
    pub allow_host_network: bool,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: not valid TOML: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    #[error("configuration key {key}: {message} (sources read: {sources}); fix it and restart the agent")]
    Invalid {
        key: String,
        message: String,
        sources: String,
    },
    #[error("{0} is not SECTION.KEY=VALUE")]
    Override(String),
}

/// Loads and validates the configuration from `file` (absent is fine), its
/// `agent.d` drop-ins, the environment and `overrides`.
pub fn load(
    file: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[String],
) -> Result<AgentConfig, ConfigError> {
    let mut merged = Table::new();
    let mut sources = Vec::new();
    let mut files = vec![file.to_path_buf()];
    let dropins = file.with_extension("d");
    if let Ok(rd) = std::fs::read_dir(&dropins) {
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        files.extend(v);
    }
    for path in files {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let t: Table = text
                    .parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax {
                        source_name: path.display().to_string(),
                        message: e.message().to_string(),
                    })?;
                merge(&mut merged, t);
                sources.push(path.display().to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
    }
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("BERTH__") else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        set(&mut merged, &key, &v);
        sources.push(format!("${k}"));
    }
    for o in overrides {
        let (key, value) = o
            .split_once('=')
            .ok_or_else(|| ConfigError::Override(o.clone()))?;
        set(&mut merged, key.trim(), value.trim());
        sources.push(format!("--set {key}"));
    }
    let sources = if sources.is_empty() {
        "none".to_string()
    } else {
        sources.join(", ")
    };
    let cfg: AgentConfig = serde_path_to_error::deserialize(Value::Table(merged)).map_err(|e| {
        ConfigError::Invalid {
            key: e.path().to_string(),
            message: e.inner().to_string(),
            sources: sources.clone(),
        }
    })?;
    check(&cfg).map_err(|(key, message)| ConfigError::Invalid {
        key: key.into(),
        message,
        sources,
    })?;
    Ok(cfg)
}

fn check(c: &AgentConfig) -> Result<(), (&'static str, String)> {
    let label = |s: &str| crate::names::WorkloadName::parse(s).is_ok();
    if !label(&c.device.id) {
        return Err((
            "device.id",
            "must be 1-63 characters of a-z, 0-9, '-'".into(),
        ));
    }
    if !label(&c.device.fleet) {
        return Err((
            "device.fleet",
            "must be 1-63 characters of a-z, 0-9, '-'".into(),
        ));
    }
    if c.device.arch.or_else(Arch::native).is_none() {
        return Err((
            "device.arch",
            "this machine's architecture is not supported: set amd64, arm64 or arm".into(),
        ));
    }
    let url_ok = |u: &str| {
        u.starts_with("https://")
            || u.starts_with("file:///")
            || ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| {
                    u.strip_prefix(p)
                        .is_some_and(|r| r.is_empty() || r.starts_with([':', '/']))
                })
    };
    let url = &c.trust.metadata_url;
    if !url_ok(url) {
        return Err((
            "trust.metadata_url",
            format!("{url:?} must be https:// (or file:/// for a local mirror; plain http only on loopback)"),
        ));
    }
    match &c.trust.targets_url {
        Some(t) if !url_ok(t) => {
            return Err((
                "trust.targets_url",
                format!("{t:?} must be https:// (or file:/// for a local mirror; plain http only on loopback)"),
            ));
        }
        None if crate::source::default_targets_url(url).is_none() => {
            return Err((
                "trust.targets_url",
                format!("is needed: {url:?} does not end in /metadata, so the targets location cannot be derived"),
            ));
        }
        _ => {}
    }
    if let Some(m) = &c.mqtt {
        let given = [&m.ca, &m.cert, &m.key]
            .iter()
            .filter(|p| p.is_some())
            .count();
        let loopback = matches!(m.host.as_str(), "127.0.0.1" | "localhost" | "::1");
        if given != 3 && !(given == 0 && loopback) {
            return Err((
                "mqtt.ca",
                "mqtt.ca, mqtt.cert and mqtt.key are all needed (TLS with a client certificate; \
                 only a broker on loopback may be reached without them)"
                    .into(),
            ));
        }
    }
    if c.registry.user.is_some() != c.registry.password_file.is_some() {
        return Err((
            "registry.password_file",
            "registry.user and registry.password_file go together".into(),
        ));
    }
    if c.trust.refresh_s == 0 || c.trust.jitter_s >= c.trust.refresh_s {
        return Err((
            "trust.refresh_s",
            "must be positive and larger than trust.jitter_s".into(),
        ));
    }
    if let Some(l) = &c.led {
        crate::hw::led::PinSpec::parse(&l.pin).map_err(|e| ("led.pin", e.to_string()))?;
    }
    if let Some(w) = &c.watchdog {
        if w.interval_ms == 0 || w.stall_s == 0 || w.interval_ms >= w.stall_s * 1000 {
            return Err((
                "watchdog.interval_ms",
                "interval_ms and stall_s must be positive, the interval shorter than stall_s"
                    .into(),
            ));
        }
    }
    if let Some(u) = &c.self_update {
        if u.deadline_s == 0 || !(1..=10).contains(&u.tries) {
            return Err((
                "self_update.deadline_s",
                "deadline_s must be positive and tries between 1 and 10".into(),
            ));
        }
    }
    for (i, d) in c.policy.allow_devices.iter().enumerate() {
        if !d.starts_with("/dev/") || d.contains("..") {
            return Err((
                "policy.allow_devices",
                format!("entry {i} ({d:?}) must be a path under /dev/"),
            ));
        }
    }
    Ok(())
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Sets `a.b.c` to `raw`, read as a TOML value when it is one (numbers,
/// booleans, arrays), else as a string.
fn set(t: &mut Table, key: &str, raw: &str) {
    let value = format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = t;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        cur = entry.as_table_mut().expect("just made a table");
    }
    cur.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[device]
id = "gw-1"
fleet = "pumps"
[trust]
metadata_url = "https://tuf.example/metadata"
root = "/etc/berth/root.json"
"#;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, BASE).unwrap();
        std::fs::create_dir(dir.path().join("agent.d")).unwrap();
        std::fs::write(
            dir.path().join("agent.d/10-net.toml"),
            "[trust]\nrefresh_s = 600\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("agent.d/20-net.toml"),
            "[trust]\nrefresh_s = 300\n[policy]\nallow_host_network = true\n",
        )
        .unwrap();
        let env = vec![
            ("BERTH__TRUST__JITTER_S".to_string(), "30".to_string()),
            ("BERTH__DEVICE__ID".to_string(), "gw-2".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = load(&file, env, &["device.id=gw-3".into()]).unwrap();
        assert_eq!(c.trust.refresh_s, 300);
        assert_eq!(c.trust.jitter_s, 30);
        assert!(c.policy.allow_host_network);
        assert_eq!(c.device.id, "gw-3");
        assert_eq!(c.paths.state, PathBuf::from("/var/lib/berth"));
    }

    #[test]
    fn the_runtime_backend_is_selectable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, BASE).unwrap();
        let c = load(&file, vec![], &[]).unwrap();
        assert_eq!(c.paths.runtime_backend, RuntimeBackend::BerthRuntime);
        let c = load(&file, vec![], &["paths.runtime_backend=record".into()]).unwrap();
        assert_eq!(c.paths.runtime_backend, RuntimeBackend::Record);
        let e = load(&file, vec![], &["paths.runtime_backend=runc".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("paths.runtime_backend") && e.contains("record"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key_and_the_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, format!("{BASE}\n[mqtt]\nhost = \"b\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nport = \"x\"\n")).unwrap();
        let e = load(&file, vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("mqtt.port") && e.contains("agent.toml"), "{e}");
        std::fs::write(&file, format!("{BASE}\ncolour = 1\n")).unwrap();
        let e = load(&file, vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        std::fs::write(&file, BASE.replace("https://", "http://")).unwrap();
        let e = load(&file, vec![], &[]).unwrap_err().to_string();
        assert!(
            e.contains("trust.metadata_url") && e.contains("https"),
            "{e}"
        );
        std::fs::write(&file, "[device\n").unwrap();
        let e = load(&file, vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = load(&dir.path().join("absent.toml"), vec![], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("device") && e.contains("sources read: none"),
            "{e}"
        );
    }
}
