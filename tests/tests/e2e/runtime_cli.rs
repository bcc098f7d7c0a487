//! The OCI runtime command line on a bundle, logs, and unprivileged use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{open_tempdir, probe_image, require_root, run, text, Rt};

/// A runc-style bundle over the probe rootfs running `args`.
fn bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let b = dir.join("bundle");
    fs::create_dir_all(&b).unwrap();
    let o = run(Command::new("runc").arg("spec").arg("--bundle").arg(&b));
    assert!(o.status.success(), "runc spec: {}", text(&o));
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    spec["root"]["path"] = probe_image().join("rootfs").display().to_string().into();
    fs::write(
        b.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    b
}

fn state(rt: &Rt, id: &str) -> serde_json::Value {
    let o = run(rt.cmd().args(["state", id]));
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

fn wait_for(rt: &Rt, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(rt, id)["status"] != status {
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}: {}",
            state(rt, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn oci_lifecycle_create_start_state_kill_delete_list() {
    require_root!();
    let d = open_tempdir();
    let b = bundle(d.path(), &["/bin/sleep", "60"]);
    let rt = Rt::new();
    // The container's init keeps the stdio it was created with (as with runc),
    // so `create` gets files, not pipes this test would wait on.
    let out = fs::File::create(d.path().join("create.out")).unwrap();
    let status = rt
        .cmd()
        .arg("create")
        .arg("--bundle")
        .arg(&b)
        .arg("cli-life")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        fs::read_to_string(d.path().join("create.out")).unwrap()
    );
    let s = state(&rt, "cli-life");
    assert_eq!(s["status"], "created", "{s}");
    assert!(s["pid"].as_i64().unwrap_or(0) > 0, "{s}");
    assert!(run(rt.cmd().args(["start", "cli-life"])).status.success());
    wait_for(&rt, "cli-life", "running");
    let list = text(&run(rt.cmd().args(["list", "--quiet"])));
    assert_eq!(list.trim(), "cli-life");
    let o = run(rt.cmd().args(["kill", "cli-life", "KILL"]));
    assert!(o.status.success(), "{}", text(&o));
    wait_for(&rt, "cli-life", "stopped");
    assert!(run(rt.cmd().args(["delete", "cli-life"])).status.success());
    let o = run(rt.cmd().args(["state", "cli-life"]));
    assert!(!o.status.success());
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
    assert_eq!(text(&run(rt.cmd().args(["list", "-q"]))).trim(), "");
    rt.assert_nothing_left("cli-life");
}

#[test]
fn run_returns_the_workload_exit_code() {
    require_root!();
    let d = open_tempdir();
    let b = bundle(d.path(), &["/bin/sh", "-c", "echo hello; exit 7"]);
    let rt = Rt::new();
    let o = run(rt.cmd().arg("run").arg("--bundle").arg(&b).arg("cli-run"));
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("hello"));
    rt.assert_nothing_left("cli-run");
}

#[test]
fn a_custom_seccomp_profile_is_refused_clearly() {
    require_root!();
    let d = open_tempdir();
    let b = bundle(d.path(), &["/bin/true"]);
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"});
    fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let rt = Rt::new();
    let o = run(rt
        .cmd()
        .arg("run")
        .arg("--bundle")
        .arg(&b)
        .arg("cli-seccomp"));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("custom linux.seccomp profile"),
        "{}",
        text(&o)
    );
    rt.assert_nothing_left("cli-seccomp");
}

#[test]
fn logs_rotate_within_their_byte_bound() {
    require_root!();
    let rt = Rt::new();
    let flags = [
        "--detach",
        "--log-max-bytes",
        "4096",
        "--log-max-files",
        "2",
    ];
    let o = rt.launch(
        probe_image(),
        "cli-logs",
        &flags,
        &["/bin/seq", "1", "5000"],
    );
    assert!(o.status.success(), "{}", text(&o));
    wait_for(&rt, "cli-logs", "stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = String::new();
    while !out.ends_with("5000\n") && Instant::now() < deadline {
        out =
            String::from_utf8_lossy(&run(rt.cmd().args(["logs", "cli-logs"])).stdout).into_owned();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        out.ends_with("4999\n5000\n"),
        "tail of logs: {:?}",
        &out[out.len().saturating_sub(40)..]
    );
    assert!(
        !out.starts_with("1\n"),
        "the oldest lines were not rotated away"
    );
    let files: Vec<_> = fs::read_dir(rt.root().join("logs"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        assert!(
            f.metadata().unwrap().len() <= 4096,
            "{:?} exceeds the bound",
            f.path()
        );
    }
    assert!(run(rt.cmd().args(["delete", "cli-logs"])).status.success());
    assert_eq!(fs::read_dir(rt.root().join("logs")).unwrap().count(), 0);
}

#[test]
fn unprivileged_launch_on_cgroup_v1_fails_clearly() {
    require_root!();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("skipped: this host has cgroup v2, where unprivileged launches are possible");
        return;
    }
    let user = "berthtest";
    if !run(Command::new("id").arg(user)).status.success() {
        panic!("user {user} is missing: tests/run.sh creates it");
    }
    let rt = Rt::new();
    let own = run(Command::new("install")
        .args(["-d", "-o", user])
        .arg(rt.dir.path().join("u")));
    assert!(own.status.success(), "{}", text(&own));
    let img = probe_image();
    let m = berth_tests::measurement(img);
    for extra in ["", "--allow-unlimited"] {
        let cmd = format!(
            "{} --root {}/u launch {extra} --image {} --measurement {m} cli-unpriv",
            berth_tests::bin("berth-runtime").display(),
            rt.dir.path().display(),
            img.display()
        );
        let o = run(Command::new("setpriv").args([
            "--reuid",
            user,
            "--regid",
            user,
            "--init-groups",
            "sh",
            "-c",
            &cmd,
        ]));
        let out = text(&o);
        assert!(!o.status.success(), "{out}");
        assert!(out.contains("resource limits cannot be applied"), "{out}");
        assert!(out.contains("cgroup v1"), "{out}");
        let left = fs::read_dir(rt.dir.path().join("u/containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "state left behind");
    }
}

#[test]
fn bundle_specs_with_escaping_paths_are_refused() {
    require_root!();
    let d = open_tempdir();
    let b = bundle(d.path(), &["/bin/true"]);
    let base: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    let rt = Rt::new();
    type Case = (&'static str, fn(&mut serde_json::Value), &'static str);
    let cases: [Case; 3] = [
        (
            "cli-bad-mount",
            |s| s["mounts"][0]["destination"] = "/proc/../../etc".into(),
            "mount destination '/proc/../../etc' is not a clean absolute path",
        ),
        (
            "cli-bad-cwd",
            |s| s["process"]["cwd"] = "/proc/self/fd/5".into(),
            "working directory '/proc/self/fd/5' points into /proc",
        ),
        (
            "cli-rel-mount",
            |s| s["mounts"][0]["destination"] = "proc".into(),
            "is not a clean absolute path",
        ),
    ];
    for (id, edit, needle) in cases {
        let mut spec = base.clone();
        edit(&mut spec);
        fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        let o = run(rt.cmd().arg("run").arg("--bundle").arg(&b).arg(id));
        assert!(!o.status.success(), "{id}: {}", text(&o));
        assert!(text(&o).contains(needle), "{id}: {}", text(&o));
        rt.assert_nothing_left(id);
    }
}
