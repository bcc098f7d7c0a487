//! The Debian package (`cross/deb.sh`): built for amd64 from this build's
//! binaries, inspected, installed by dpkg into a throw-away root (its
//! maintainer scripts run too, chrootless), and the installed agent started
//! with its installed configuration.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::{bin, is_root, run, text, workspace};

/// Every path the package installs, with its mode (all owned by root).
const CONTENTS: &[(&str, u32)] = &[
    ("etc/berth/", 0o755),
    ("etc/berth/agent.toml", 0o644),
    ("lib/systemd/system/berth-agent.service", 0o644),
    ("usr/bin/berth", 0o755),
    ("usr/bin/berth-agent", 0o755),
    ("usr/bin/berth-runtime", 0o755),
    ("usr/share/doc/berth/README.md", 0o644),
    ("usr/share/doc/berth/copyright", 0o644),
    ("var/lib/berth/", 0o711),
];

fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `cross/deb.sh amd64 debug` over the binaries the tests use.
fn build_package(out: &Path) -> PathBuf {
    let target_dir = bin("berth-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let o = run(Command::new("bash")
        .arg(workspace().join("cross/deb.sh"))
        .args(["amd64", "debug"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("OUT", out)
        .env("COMPRESS", "none"));
    PathBuf::from(ok(&o, "cross/deb.sh amd64 debug").trim())
}

/// dpkg, installing into `root` (its own database; maintainer scripts run
/// outside a chroot with DPKG_ROOT set).
fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"]);
    c
}

/// Directives of the installed unit that make its sandbox: the agent may
/// write its state, the runtime state and cgroups, and nothing else.
const HARDENING: &[&str] = &[
    "ExecStart=/usr/bin/berth-agent --config /etc/berth/agent.toml",
    "StateDirectory=berth",
    "StateDirectoryMode=0711",
    "RuntimeDirectoryPreserve=yes",
    "UMask=0022",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ReadWritePaths=/var/lib/berth /run/berth /sys/fs/cgroup",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "RestrictSUIDSGID=yes",
    "KillMode=process",
];

#[test]
fn amd64_package_installs_with_its_modes_and_the_installed_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(dir.path());
    assert!(deb.ends_with("berth_0.1.0_amd64.deb"), "{}", deb.display());

    // Control data: the architecture, the conffile, the scripts.
    let field = |f: &str| {
        ok(
            &run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)),
            "dpkg-deb -f",
        )
        .trim()
        .to_string()
    };
    assert_eq!(field("Package"), "berth");
    assert_eq!(field("Architecture"), "amd64");
    assert!(
        field("Depends").starts_with("libc6 (>= 2."),
        "{}",
        field("Depends")
    );
    let conffiles = ok(
        &run(Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles")),
        "dpkg-deb --info conffiles",
    );
    assert_eq!(conffiles, "/etc/berth/agent.toml\n");

    // The archive: exactly the expected files (plus their parent
    // directories), each owned by root:root with its mode.
    let listing = ok(
        &run(Command::new("dpkg-deb").arg("--contents").arg(&deb)),
        "dpkg-deb --contents",
    );
    let mut archive = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "root/root", "{line}");
        let path = f[5].trim_start_matches("./");
        archive.insert(path.to_string(), f[0].to_string());
    }
    for (path, mode) in CONTENTS {
        let perms = archive
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not in the package: {listing}"));
        assert_eq!(perms, &unix_perms(*mode, path.ends_with('/')), "{path}");
    }
    for (path, perms) in &archive {
        // berth-hil is packaged once the workspace builds it.
        let expected = CONTENTS.iter().any(|(p, _)| p == path)
            || (path == "usr/bin/berth-hil" && perms == "-rwxr-xr-x")
            || (path.is_empty() || path.ends_with('/')) && perms == "drwxr-xr-x";
        assert!(expected, "unexpected in the package: {perms} {path}");
    }

    // Built and inspected above; installing needs root (dpkg chowns), and
    // this test is not skipped without it.
    assert!(
        is_root(),
        "the package test installs with dpkg and needs root: run tests/run.sh as root"
    );

    // Installed into a throw-away root.
    let root = dir.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    ok(
        &run(dpkg(&root).arg("--install").arg(&deb)),
        "dpkg --install",
    );
    let status = ok(
        &run(dpkg(&root).args(["--status", "berth"])),
        "dpkg --status",
    );
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("Conffiles:\n /etc/berth/agent.toml "),
        "{status}"
    );
    for (path, mode) in CONTENTS {
        let m = std::fs::symlink_metadata(root.join(path)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, *mode, "{path}");
        assert_eq!((m.uid(), m.gid()), (0, 0), "{path}");
    }

    // The installed unit: its sandbox, and systemd accepts it.
    let unit_path = root.join("lib/systemd/system/berth-agent.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for d in HARDENING {
        assert!(
            unit.lines().any(|l| l == *d),
            "{d} is not in the unit:\n{unit}"
        );
    }
    // systemd's own reading of it: every directive known, and an exposure
    // level no worse than 7.2 today (`systemd-analyze security`, 10 = none).
    let o = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=72"])
        .arg(format!("--root={}", root.display()))
        .arg("berth-agent.service"));
    let report = ok(&o, "systemd-analyze security");
    let warnings = String::from_utf8_lossy(&o.stderr);
    assert!(
        !warnings.contains("berth-agent.service"),
        "systemd warns about the unit: {warnings}"
    );
    assert!(
        report.contains("Overall exposure level for berth-agent.service:"),
        "{report}"
    );

    // The default configuration is valid as shipped.
    let agent = root.join("usr/bin/berth-agent");
    let config = root.join("etc/berth/agent.toml");
    let o = run(Command::new(&agent)
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    let shown = ok(&o, "berth-agent check-config");
    assert!(shown.contains("state = \"/var/lib/berth\""), "{shown}");

    // A signed repository made with the installed CLI, and the installed
    // agent on it, with its paths moved into this test's directory.
    let berth = root.join("usr/bin/berth");
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("keys")).unwrap();
    for k in ["root", "online", "targets"] {
        ok(
            &run(Command::new(&berth)
                .args(["key", "generate", "--type", "ed25519", "--out"])
                .arg(work.join("keys").join(k))),
            "berth key generate",
        );
    }
    let key = |k: &str| work.join("keys").join(k).display().to_string();
    ok(
        &run(Command::new(&berth)
            .args(["repo", "init"])
            .arg(work.join("repo"))
            .args(["--root-key", &key("root")])
            .args(["--timestamp-key", &key("online.pub")])
            .args(["--snapshot-key", &key("online.pub")])
            .args(["--targets-key", &key("targets.pub")])),
        "berth repo init",
    );
    let state = work.join("state");
    let socket = work.join("run/agent.sock");
    let log = std::fs::File::create(work.join("agent.log")).unwrap();
    let set = |k: &str, v: &Path| format!("{k}={}", v.display());
    // Under the unit's UMask, as systemd would start it.
    let mut child = Command::new("sh")
        .args(["-c", "umask 0022 && exec \"$0\" \"$@\""])
        .arg(&agent)
        .arg("--foreground")
        .arg("--config")
        .arg(&config)
        .args(["--set", &set("paths.state", &state)])
        .args(["--set", &set("paths.socket", &socket)])
        .args([
            "--set",
            &set("paths.runtime", &root.join("usr/bin/berth-runtime")),
        ])
        .args([
            "--set",
            &set("paths.runtime_root", &work.join("run/runtime")),
        ])
        .args([
            "--set",
            &format!("trust.metadata_url=file://{}/repo/metadata", work.display()),
        ])
        .args([
            "--set",
            &set("trust.root", &work.join("repo/metadata/1.root.json")),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(work.join("agent.log")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(30);
    let doc = loop {
        let o = run(Command::new(&berth)
            .args(["status", "--json", "--socket"])
            .arg(&socket));
        if o.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the installed agent exited: {}",
            agent_log()
        );
        assert!(
            Instant::now() < deadline,
            "the agent's API did not answer: {}\n{}",
            text(&o),
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(doc["device"], "gateway", "{doc}");
    assert_eq!(doc["fleet"], "default", "{doc}");
    assert_eq!(doc["arch"], "amd64", "{doc}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&state), 0o711);
    assert_eq!(mode(&state.join("device.key")), 0o600);

    // SIGTERM: a clean stop.
    let o = run(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null()));
    ok(&o, "kill -TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop on SIGTERM: {}", agent_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}: {}", agent_log());

    // Purge removes everything, the state directory included.
    ok(&run(dpkg(&root).args(["--purge", "berth"])), "dpkg --purge");
    for (path, _) in CONTENTS {
        assert!(!root.join(path).exists(), "{path} survived the purge");
    }
}

/// `ls -l`-style permissions of a file or directory with `mode`.
fn unix_perms(mode: u32, dir: bool) -> String {
    let mut s = String::from(if dir { "d" } else { "-" });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}
