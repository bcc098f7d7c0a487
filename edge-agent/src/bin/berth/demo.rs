//! `berth demo`: a whole update story on this machine with nothing
//! external — an embedded MQTT broker (rumqttd) on loopback, a local TUF
//! repository directory, the sample images built and signed, and a real
//! `berth-agent` on a temporary state directory running real containers.
//! v1 runs; v2 restarts only the workload it changes; a broken v3 fails
//! its health gate and is rolled back; a tampered release is refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_agent::api::{request, Request};
use berth_image::registry::{put_verified, Digest};
use berth_image::store::Store;
use clap::Args;

use crate::fleet::{publish_retained, BrokerArgs};

#[derive(Args)]
pub struct DemoArgs {
    /// The sample workloads' sources (`images/` of the Berth repository).
    #[arg(long, default_value = "images")]
    images: PathBuf,
    /// Work directory (default: a new one under /tmp, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory and leave the agent's containers running.
    #[arg(long)]
    keep: bool,
}

const FLEET: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the berth binary")?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it beside berth (cargo build --bins)",
            p.display()
        );
    }
    Ok(p)
}

fn step(n: usize, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

/// Runs `berth ARGS…` (this binary), failing with its output.
fn berth(args: &[&str]) -> Result<String> {
    let o = Command::new(std::env::current_exe()?)
        .args(args)
        .output()
        .context("cannot run berth")?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        bail!("berth {} failed:\n{out}", args.join(" "));
    }
    Ok(out)
}

struct Image {
    layout: PathBuf,
    amd64: String,
    arm64: String,
}

fn build(images: &Path, name: &str, out: &Path) -> Result<Image> {
    let script = images.join(name).join("build.sh");
    if !script.exists() {
        bail!(
            "{} not found: run berth demo from the Berth repository, or pass --images",
            script.display()
        );
    }
    let layout = out.join(name);
    let o = Command::new("sh")
        .arg(&script)
        .arg(&layout)
        .env("BERTH", std::env::current_exe()?)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !o.status.success() {
        bail!(
            "building images/{name} failed (it needs gcc and gcc-aarch64-linux-gnu):\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let find = |arch: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("manifest {arch} ")))
            .map(|d| d.trim().to_string())
            .with_context(|| format!("images/{name}: no {arch} manifest in the build output"))
    };
    Ok(Image {
        amd64: find("amd64")?,
        arm64: find("arm64")?,
        layout,
    })
}

/// Puts every blob of `layout` into the device's store, each verified
/// against its digest, and pins them (owner `cache:NAME`, so garbage
/// collection keeps them): a device's image cache, as a factory would
/// provision it.
fn seed(store: &Store, layout: &Path, name: &str) -> Result<u64> {
    let mut n = 0;
    let mut all = Vec::new();
    for e in std::fs::read_dir(layout.join("blobs/sha256"))? {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let digest: Digest = format!("sha256:{name}").parse()?;
        all.push(digest.clone());
        if store.has(&digest) {
            continue;
        }
        put_verified(store, &digest, &std::fs::read(&path)?)?;
        n += 1;
    }
    store.set_refs(&format!("cache:{name}"), &all)?;
    Ok(n)
}

fn image(i: &Image, name: &str) -> String {
    format!(
        "{{ registry = \"registry.demo.invalid\", repository = \"samples/{name}\", digests = {{ amd64 = \"{}\", arm64 = \"{}\" }} }}",
        i.amd64, i.arm64
    )
}

struct Demo {
    work: PathBuf,
    socket: PathBuf,
    agent: Option<Child>,
    runtime: PathBuf,
    run_root: PathBuf,
    keep: bool,
}

impl Demo {
    fn status(&self) -> Option<serde_json::Value> {
        request(&self.socket, &Request::Status).ok()
    }

    fn wait(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status() {
                if cond(&s) {
                    return Ok(s);
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "timed out waiting for {what}; last status {last:?}; agent log: {}",
            self.work.join("agent.log").display()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill").arg(a.id().to_string()).status();
            let _ = a.wait();
        }
        if self.keep {
            return;
        }
        // The agent leaves workloads running when it stops (by design):
        // the demo removes its own.
        if let Ok(o) = Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.run_root)
            .args(["list", "--quiet"])
            .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new(&self.runtime)
                    .arg("--root")
                    .arg(&self.run_root)
                    .args(["delete", "--force", id])
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn pid(s: &serde_json::Value, name: &str) -> Option<i64> {
    s["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)?["pid"]
        .as_i64()
}

fn show(s: &serde_json::Value) {
    println!(
        "    generation {}  phase {}  last failed {}",
        s["current"],
        s["phase"].as_str().unwrap_or("?"),
        s["failed"]
    );
    for w in s["workloads"].as_array().into_iter().flatten() {
        println!(
            "    {:<10} {:<10} pid {}",
            w["name"].as_str().unwrap_or("?"),
            w["status"].as_str().unwrap_or("?"),
            w["pid"]
        );
    }
}

fn start_broker() -> Result<u16> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config: rumqttd::Config = toml::from_str(&format!(
        r#"id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 4

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 262144
max_inflight_count = 100
dynamic_filters = true
"#
    ))
    .context("broker configuration")?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("berth demo: the embedded broker stopped: {e}");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the embedded MQTT broker did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(port)
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    if !nix_root() {
        bail!("berth demo runs real containers: run it as root (sudo)");
    }
    let started = Instant::now();
    let agent_bin = sibling("berth-agent")?;
    let runtime = sibling("berth-runtime")?;
    let work = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("berth-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let work = std::fs::canonicalize(&work)?;
    let mut demo = Demo {
        socket: work.join("agent.sock"),
        run_root: work.join("run"),
        runtime: runtime.clone(),
        work: work.clone(),
        agent: None,
        keep: a.keep,
    };

    step(
        1,
        "Build the sample images (reproducible, amd64 + arm64) and sign with a new TUF root",
    );
    let t = Instant::now();
    let built = work.join("images");
    let sensor = build(&a.images, "sensor", &built)?;
    let web = build(&a.images, "web", &built)?;
    let broken = build(&a.images, "broken", &built)?;
    for (n, i) in [("sensor", &sensor), ("web", &web), ("broken", &broken)] {
        println!(
            "    {n:<7} amd64 {}  arm64 {}",
            &i.amd64[..19],
            &i.arm64[..19]
        );
    }
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys)?;
    let key = |n: &str| -> Result<String> {
        let p = keys.join(n).display().to_string();
        berth(&["key", "generate", "--type", "ed25519", "--out", &p])?;
        Ok(p)
    };
    let (root, online, targets) = (key("root")?, key("online")?, key("targets")?);
    let repo = work.join("repo");
    let repo_s = repo.display().to_string();
    berth(&[
        "repo",
        "init",
        &repo_s,
        "--root-key",
        &root,
        "--timestamp-key",
        &format!("{online}.pub"),
        "--snapshot-key",
        &format!("{online}.pub"),
        "--targets-key",
        &format!("{targets}.pub"),
    ])?;
    println!(
        "    repository {repo_s} (root v1, 1-of-1 keys)  in {:.1?}",
        t.elapsed()
    );

    step(
        2,
        "Start an MQTT broker (embedded) and a device agent on a fresh state directory",
    );
    let port = start_broker()?;
    let state = work.join("state");
    {
        let store = Store::open(&state.join("blobs"))?;
        let mut n = 0;
        for (name, i) in [("sensor", &sensor), ("web", &web), ("broken", &broken)] {
            n += seed(&store, &i.layout, name)?;
        }
        println!(
            "    image cache seeded with {n} verified blobs (the registry is never contacted)"
        );
    }
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[device]
id = "gw-demo"
fleet = "{FLEET}"

[paths]
state = "{state}"
socket = "{socket}"
runtime = "{runtime}"
runtime_root = "{run_root}"

[mqtt]
host = "127.0.0.1"
port = {port}

[trust]
metadata_url = "file://{repo}/metadata"
root = "{repo}/metadata/1.root.json"
refresh_s = 3600
jitter_s = 60
"#,
            state = state.display(),
            socket = demo.socket.display(),
            runtime = runtime.display(),
            run_root = demo.run_root.display(),
            repo = repo.display(),
        ),
    )?;
    let log = std::fs::File::create(work.join("agent.log"))?;
    demo.agent = Some(
        Command::new(&agent_bin)
            .arg("--config")
            .arg(&config)
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start berth-agent")?,
    );
    demo.wait("the agent's API", |s| s["phase"] == "idle")?;
    println!("    berth-agent up: broker 127.0.0.1:{port}, metadata {repo_s}");

    let broker = BrokerArgs {
        broker: format!("127.0.0.1:{port}"),
        ca: None,
        cert: None,
        key: None,
        prefix: "berth".into(),
    };
    let sensor_w = |level: &str| {
        format!(
            "[[workloads]]\nname = \"sensor\"\nimage = {}\nenv = {{ SENSOR_INTERVAL = \"500\", LEVEL = \"{level}\" }}\nvolumes = [{{ name = \"data\", path = \"/data\" }}]\nhealth = {{ check = \"uptime\", seconds = 1, deadline_s = 20 }}\n",
            image(&sensor, "sensor")
        )
    };
    let web_w = |version: &str| {
        format!(
            "[[workloads]]\nname = \"web\"\nimage = {}\nenv = {{ WEB_VERSION = \"{version}\" }}\nhealth = {{ check = \"uptime\", seconds = 1, deadline_s = 20 }}\n",
            image(&web, "web")
        )
    };
    let publish = |g: u64, body: String, notify: bool| -> Result<()> {
        let path = work.join(format!("release-{g}.toml"));
        std::fs::write(
            &path,
            format!("schema = 1\nfleet = \"{FLEET}\"\ngeneration = {g}\n\n{body}"),
        )?;
        let path_s = path.display().to_string();
        let b = broker.broker.clone();
        let mut args = vec![
            "release", "publish", "--fleet", FLEET, &path_s, "--repo", &repo_s, "--key", &online,
            "--key", &targets,
        ];
        if notify {
            args.extend(["--broker", &b]);
        }
        berth(&args)?;
        Ok(())
    };
    let mut timings = Vec::new();

    step(
        3,
        "Publish v1 (sensor + web): signed, notified over MQTT, verified, started",
    );
    let t = Instant::now();
    publish(1, sensor_w("1") + &web_w("1"), true)?;
    let s = demo.wait("generation 1 running", |s| {
        s["current"] == 1
            && s["phase"] == "idle"
            && pid(s, "sensor").is_some()
            && pid(s, "web").is_some()
    })?;
    timings.push(("v1 publish -> running", t.elapsed()));
    show(&s);
    let (sensor_pid, web_pid) = (pid(&s, "sensor"), pid(&s, "web"));

    step(4, "Publish v2 (web changes): only web restarts");
    let t = Instant::now();
    publish(2, sensor_w("1") + &web_w("2"), true)?;
    let s = demo.wait("generation 2 running", |s| {
        s["current"] == 2 && s["phase"] == "idle" && pid(s, "web").is_some()
    })?;
    timings.push(("v2 update -> running", t.elapsed()));
    show(&s);
    let same = pid(&s, "sensor") == sensor_pid && pid(&s, "web") != web_pid;
    println!(
        "    sensor pid {} (unchanged: {}), web pid {:?} -> {:?}",
        s["workloads"][0]["pid"],
        pid(&s, "sensor") == sensor_pid,
        web_pid,
        pid(&s, "web")
    );

    step(
        5,
        "Publish v3 with a workload that exits at start: health gate fails, rollback to v2",
    );
    let t = Instant::now();
    let broken_w = format!(
        "[[workloads]]\nname = \"broken\"\nimage = {}\nrestart = {{ policy = \"never\" }}\nhealth = {{ check = \"uptime\", seconds = 2, deadline_s = 8 }}\n",
        image(&broken, "broken")
    );
    publish(3, sensor_w("1") + &web_w("2") + &broken_w, true)?;
    let s = demo.wait("the rollback to generation 2", |s| {
        s["current"] == 2 && s["failed"] == 3 && s["phase"] == "idle"
    })?;
    timings.push(("v3 failed gate -> back on v2", t.elapsed()));
    show(&s);
    let history = request(&demo.socket, &Request::History)?;
    if let Some(last) = history.as_array().and_then(|h| h.last()) {
        println!(
            "    history: generation {} {}: {}",
            last["generation"],
            last["result"].as_str().unwrap_or("?"),
            last["reason"].as_str().unwrap_or("?")
        );
    }

    step(
        6,
        "A tampered release: v4 is signed, then its document is changed on the server",
    );
    let t = Instant::now();
    publish(4, sensor_w("4") + &web_w("4"), false)?;
    let mut tampered = 0;
    for e in std::fs::read_dir(repo.join("targets/releases"))? {
        let p = e?.path();
        let text = std::fs::read_to_string(&p)?;
        if text.contains("\"generation\": 4") {
            std::fs::write(&p, text.replace("\"4\"", "\"6\""))?;
            tampered += 1;
        }
    }
    let at = demo.log().len();
    publish_retained(
        &broker,
        &format!("berth/fleets/{FLEET}/timestamp"),
        b"{\"tampered\": true}".to_vec(),
    )?;
    let deadline = Instant::now() + WAIT;
    let reason = loop {
        let log = demo.log();
        if let Some(line) = log[at.min(log.len())..]
            .lines()
            .find(|l| l.contains("refresh failed"))
        {
            break line.to_string();
        }
        if Instant::now() > deadline {
            bail!(
                "the tampered release was not refused; agent log: {}",
                work.join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    timings.push(("tampered v4 refused", t.elapsed()));
    let s = demo.wait("generation 2 still running", |s| s["current"] == 2)?;
    let reason = reason
        .split("reason=")
        .nth(1)
        .unwrap_or(&reason)
        .to_string();
    println!("    {tampered} served copy changed; the device refused it: {reason}");
    show(&s);

    step(7, "Summary");
    for (what, d) in &timings {
        println!("    {what:<32} {:>7.2} s", d.as_secs_f64());
    }
    println!(
        "    only the changed workload restarted on update: {}",
        if same { "yes" } else { "NO" }
    );
    println!(
        "    total {:.1} s; work directory {}{}",
        started.elapsed().as_secs_f64(),
        work.display(),
        if a.keep { " (kept)" } else { " (removed)" }
    );
    Ok(if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
