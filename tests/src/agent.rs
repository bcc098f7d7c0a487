//! A whole Berth deployment on loopback for end-to-end tests: a TUF
//! repository signed with `berth repo`, served over HTTPS; Mosquitto with
//! TLS and client certificates; the Distribution registry with TLS and
//! auth; the sample images built once; and devices — `berth-agent`
//! processes with their own state directories, killable at any moment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::mosquitto::Mosquitto;
use crate::pki::Identity;
use crate::registry::{Registry, PASSWORD, USER};
use crate::tuf::{test_pki, HttpServer};
use crate::{bin, open_tempdir, run, text, workspace};

mod device;
pub use device::Device;

/// A sample image layout (`images/NAME/build.sh`) and its manifests.
#[derive(Debug)]
pub struct Sample {
    pub layout: PathBuf,
    pub amd64: String,
    pub arm64: String,
}

/// `images/NAME` built once per test run (amd64 + arm64 manifests).
pub fn sample(name: &'static str) -> &'static Sample {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static SENSOR: OnceLock<Sample> = OnceLock::new();
    static BROKEN: OnceLock<Sample> = OnceLock::new();
    static WEB: OnceLock<Sample> = OnceLock::new();
    let cell = match name {
        "sensor" => &SENSOR,
        "broken" => &BROKEN,
        "web" => &WEB,
        other => panic!("no sample image {other}"),
    };
    cell.get_or_init(|| {
        let dir = DIR.get_or_init(open_tempdir).path();
        let layout = dir.join(name);
        let o = run(Command::new("sh")
            .arg(workspace().join(format!("images/{name}/build.sh")))
            .arg(&layout)
            .env("BERTH", bin("berth")));
        assert!(
            o.status.success(),
            "building images/{name} failed: {}",
            text(&o)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        let find = |arch: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("manifest {arch} ")))
                .unwrap_or_else(|| panic!("no {arch} manifest in: {out}"))
                .trim()
                .to_string()
        };
        Sample {
            amd64: find("amd64"),
            arm64: find("arm64"),
            layout,
        }
    })
}

/// A `[[workloads]]` table running the sensor sample: `level` in its
/// environment (a new level is a changed workload), a reading every
/// `interval_ms` into its `data` volume, a 1 s uptime gate.
pub fn sensor_workload(name: &str, level: impl std::fmt::Display, interval_ms: u64) -> String {
    format!(
        r#"[[workloads]]
name = "{name}"
image = IMAGE(sensor)
env = {{ SENSOR_INTERVAL = "{interval_ms}", LEVEL = "{level}" }}
volumes = [{{ name = "data", path = "/data" }}]
health = {{ check = "uptime", seconds = 1, deadline_s = 20 }}
"#
    )
}

fn berth(args: &[&str]) -> Output {
    run(Command::new(bin("berth")).args(args))
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    text(o)
}

/// The operator's side: repository, keys, broker, registry, metadata server.
#[derive(Debug)]
pub struct Fleet {
    pub dir: PathBuf,
    pub name: String,
    pub repo: PathBuf,
    pub keys: Vec<PathBuf>,
    pub mqtt: Mosquitto,
    pub registry: Registry,
    pub meta: HttpServer,
    pub meta_ca: PathBuf,
    pub operator: Identity,
}

impl Fleet {
    /// Everything a fleet needs, under `dir`.
    pub fn start(dir: &Path, name: &str) -> Fleet {
        let keys_dir = dir.join("keys");
        std::fs::create_dir_all(&keys_dir).unwrap();
        let key = |n: &str| {
            let p = keys_dir.join(n);
            ok(&berth(&[
                "key",
                "generate",
                "--type",
                "ed25519",
                "--out",
                p.to_str().unwrap(),
            ]));
            p
        };
        let (root, online, targets) = (key("root"), key("online"), key("targets"));
        let repo = dir.join("repo");
        let pubk = |p: &Path| format!("{}.pub", p.display());
        ok(&berth(&[
            "repo",
            "init",
            repo.to_str().unwrap(),
            "--root-key",
            root.to_str().unwrap(),
            "--timestamp-key",
            &pubk(&online),
            "--snapshot-key",
            &pubk(&online),
            "--targets-key",
            &pubk(&targets),
        ]));
        let pki_dir = dir.join("meta-pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let (ca, cert, tls_key) = test_pki(&pki_dir);
        let meta = HttpServer::serve_tls(&repo, &cert, &tls_key);
        let mqtt_dir = dir.join("mqtt");
        std::fs::create_dir_all(&mqtt_dir).unwrap();
        let mqtt = Mosquitto::start(&mqtt_dir);
        let operator = mqtt.client("operator");
        let registry = Registry::start(&dir.join("registry"));
        Fleet {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            repo,
            keys: vec![online, targets],
            mqtt,
            registry,
            meta,
            meta_ca: ca,
            operator,
        }
    }

    /// A release document for this fleet: `workloads` is TOML of
    /// `[[workloads]]` tables where `IMAGE(name)` stands for the sample
    /// image `name` in this fleet's registry.
    pub fn release(&self, generation: u64, workloads: &str) -> PathBuf {
        let mut body = workloads.to_string();
        for name in ["sensor", "broken", "web"] {
            let pat = format!("IMAGE({name})");
            if body.contains(&pat) {
                let s = sample(name);
                body = body.replace(
                    &pat,
                    &format!(
                        "{{ registry = \"{}\", repository = \"samples/{name}\", digests = {{ amd64 = \"{}\", arm64 = \"{}\" }} }}",
                        self.registry.host(),
                        s.amd64,
                        s.arm64
                    ),
                );
            }
        }
        let path = self.dir.join(format!("release-{generation}.toml"));
        std::fs::write(
            &path,
            format!(
                "schema = 1\nfleet = \"{}\"\ngeneration = {generation}\n\n{body}",
                self.name
            ),
        )
        .unwrap();
        path
    }

    /// `berth release publish` with images, keys and the notification.
    pub fn publish(&self, release: &Path) -> Output {
        let mut cmd = Command::new(bin("berth"));
        cmd.args(["release", "publish", "--fleet", &self.name])
            .arg(release)
            .arg("--repo")
            .arg(&self.repo);
        for k in &self.keys {
            cmd.arg("--key").arg(k);
        }
        for name in ["sensor", "broken", "web"] {
            if std::fs::read_to_string(release)
                .unwrap()
                .contains(&format!("samples/{name}"))
            {
                cmd.arg("--images").arg(&sample(name).layout);
            }
        }
        cmd.arg("--registry-ca")
            .arg(self.registry.ca())
            .args(["--registry-user", USER])
            .env("BERTH_REGISTRY_PASSWORD", PASSWORD)
            .args(["--broker", &format!("127.0.0.1:{}", self.mqtt.port)])
            .arg("--ca")
            .arg(self.mqtt.pki.ca())
            .arg("--cert")
            .arg(&self.operator.cert)
            .arg("--mqtt-key")
            .arg(&self.operator.key);
        run(&mut cmd)
    }

    /// A device of this fleet (not started).
    pub fn device(&self, id: &str) -> Device {
        let dir = self.dir.join(format!("device-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mqtt = self.mqtt.client(id);
        let pw = dir.join("registry-password");
        std::fs::write(&pw, PASSWORD).unwrap();
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"[device]
id = "{id}"
fleet = "{fleet}"

[paths]
state = "{state}"
socket = "{socket}"
runtime = "{runtime}"
runtime_root = "{runtime_root}"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
ca = "{mqtt_ca}"
cert = "{mqtt_cert}"
key = "{mqtt_key}"

[trust]
metadata_url = "{meta}"
root = "{root}"
ca = "{meta_ca}"
refresh_s = 3600
jitter_s = 1

[registry]
ca = "{registry_ca}"
user = "{user}"
password_file = "{pw}"
"#,
                fleet = self.name,
                state = dir.join("state").display(),
                socket = dir.join("agent.sock").display(),
                runtime = bin("berth-runtime").display(),
                runtime_root = dir.join("run").display(),
                mqtt_port = self.mqtt.port,
                mqtt_ca = self.mqtt.pki.ca().display(),
                mqtt_cert = mqtt.cert.display(),
                mqtt_key = mqtt.key.display(),
                meta = self.meta.url("metadata"),
                root = self.repo.join("metadata/1.root.json").display(),
                meta_ca = self.meta_ca.display(),
                registry_ca = self.registry.ca().display(),
                user = USER,
                pw = pw.display(),
            ),
        )
        .unwrap();
        Device {
            id: id.to_string(),
            dir,
            config,
            offline: false,
            child: None,
        }
    }
}

/// `mosquitto_sub` on one topic as the operator, from the moment it was
/// started: every message (one JSON document per line) lands in a file.
#[derive(Debug)]
pub struct Subscription {
    child: Child,
    out: PathBuf,
}

impl Fleet {
    /// Subscribes to `topic` (`berth/devices/ID/events`, say) and returns
    /// once the subscription is in place.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.dir.join(format!("subscription-{n}.jsonl"));
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.mqtt.port.to_string()])
            .arg("--cafile")
            .arg(self.mqtt.pki.ca())
            .arg("--cert")
            .arg(&self.operator.cert)
            .arg("--key")
            .arg(&self.operator.key)
            .args(["-q", "1", "-t", topic])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed (tests/run.sh installs it)");
        // The broker logs each new subscription; wait for it.
        let log = self.dir.join("mqtt/mosquitto.log");
        let before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let sub = Subscription { child, out };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text
                .get(before..)
                .is_some_and(|t| t.contains("New client connected"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Connected is logged before the SUBSCRIBE is handled.
        std::thread::sleep(Duration::from_millis(300));
        sub
    }
}

impl Subscription {
    /// The messages received so far, parsed.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a message satisfying `cond`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| cond(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no MQTT message for {what}; received: {:?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
