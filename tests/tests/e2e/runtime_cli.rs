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

/// The unprivileged account of the rootless-mode tests (tests/run.sh makes it).
const USER: &str = "berthtest";

/// Held by each test that launches as [`USER`]: the user's subordinate ids
/// (65536 in tests/run.sh's setup) make one slot, one workload at a time.
static USER_SLOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn user_slot() -> std::sync::MutexGuard<'static, ()> {
    USER_SLOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// `berth-runtime --root ROOT ARGS…` run as [`USER`], whose state root the
/// test's runtime root becomes.
fn unprivileged(rt: &Rt, args: &[&str]) -> std::process::Output {
    let o = run(Command::new("id").args(["-u", USER]));
    assert!(
        o.status.success(),
        "user {USER} is missing: tests/run.sh creates it"
    );
    let own = run(Command::new("install")
        .args(["-d", "-o", USER])
        .arg(rt.root()));
    assert!(own.status.success(), "{}", text(&own));
    run(Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(berth_tests::bin("berth-runtime"))
        .arg("--root")
        .arg(rt.root())
        .args(args)
        // The runtime keeps its id table in the user's own runtime directory.
        .env_remove("XDG_RUNTIME_DIR"))
}

/// `berth-runtime launch FLAGS --image PROBE --measurement M ID [-- ARGS]` as [`USER`].
fn unprivileged_launch(
    rt: &Rt,
    flags: &[&str],
    measurement: &str,
    id: &str,
    args: &[&str],
) -> std::process::Output {
    let image = probe_image().to_string_lossy();
    let mut all = vec!["launch"];
    all.extend(flags);
    all.extend(["--image", &image, "--measurement", measurement, id]);
    if !args.is_empty() {
        all.push("--");
        all.extend(args);
    }
    unprivileged(rt, &all)
}

/// The user's uid and its /etc/subuid range, if it has one.
fn user_ids() -> (u32, Option<u32>) {
    let uid: u32 = text(&run(Command::new("id").args(["-u", USER])))
        .trim()
        .parse()
        .expect("uid");
    let sub = fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == USER && f[2].parse::<u32>().is_ok_and(|n| n >= 65_536))
                .then(|| f[1].parse().ok())
                .flatten()
        });
    (uid, sub)
}

/// Asserts that an unprivileged launch left nothing: state, bundle, id range
/// (in the user's table), mount or process.
fn assert_unprivileged_left_nothing(rt: &Rt, id: &str) {
    rt.assert_nothing_left(id);
    let (uid, _) = user_ids();
    let dir = std::env::temp_dir().join(format!("berth-ids-{uid}"));
    let table = fs::read_to_string(berth_runtime::idmap::table_file(&dir)).unwrap_or_default();
    let root = fs::canonicalize(rt.root()).unwrap_or_else(|_| rt.root());
    assert!(
        !table.contains(&format!("\"{}/{id}\"", root.display())),
        "id range of {id} left behind: {table}"
    );
}

#[test]
fn unprivileged_launch_without_limits_is_refused_clearly_and_leaves_nothing() {
    require_root!();
    let _slot = user_slot();
    let rt = Rt::new();
    let img = probe_image();
    let m = berth_tests::measurement(img);
    let o = unprivileged_launch(&rt, &[], &m, "cli-unpriv", &[]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("resource limits cannot be applied"), "{out}");
    assert!(out.contains("--allow-unlimited"), "{out}");
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(out.contains("cgroup v1"), "{out}");
    }
    assert_unprivileged_left_nothing(&rt, "cli-unpriv");
}

#[test]
fn unprivileged_launch_allowed_unlimited_runs_as_the_caller_on_a_read_only_root() {
    require_root!();
    let _slot = user_slot();
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && !Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
    {
        eprintln!(
            "skipped: a cgroup v1 host without a v2 hierarchy cannot run unprivileged workloads"
        );
        return;
    }
    let rt = Rt::new();
    let img = probe_image();
    let m = berth_tests::measurement(img);
    let probe = "cat /proc/self/uid_map; id -u; touch /written || echo root-read-only; \
                 grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status";
    let o = unprivileged_launch(
        &rt,
        &["--allow-unlimited"],
        &m,
        "cli-unpriv-run",
        &["/bin/sh", "-c", probe],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let (uid, sub) = user_ids();
    let map: Vec<Vec<u64>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .filter(|f: &Vec<u64>| f.len() == 3)
        .collect();
    // Container root is the caller, never host root; the other ids are the
    // caller's subordinate ids where it has some.
    assert_eq!(map.first(), Some(&vec![0, u64::from(uid), 1]), "{out}");
    match sub {
        Some(start) => assert_eq!(
            map.get(1),
            Some(&vec![1, u64::from(start) + 1, 65_535]),
            "{out}"
        ),
        None => assert_eq!(map.len(), 1, "{out}"),
    }
    assert!(out.lines().any(|l| l == "0"), "not root inside: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("root-read-only"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(!img.join("rootfs/written").exists());
    assert_unprivileged_left_nothing(&rt, "cli-unpriv-run");

    // Without subordinate ids the namespace holds the caller only, and an
    // image user other than root is refused, naming the id.
    let nopool = ["--allow-unlimited", "--subid-name", "berth-no-such-pool"];
    let o = unprivileged_launch(
        &rt,
        &nopool,
        &m,
        "cli-unpriv-one",
        &["/bin/cat", "/proc/self/uid_map"],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("the workload has the caller's uid only"),
        "{out}"
    );
    let lines: Vec<Vec<u64>> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .collect();
    assert_eq!(lines, [vec![0, u64::from(uid), 1]], "{out}");
    assert_unprivileged_left_nothing(&rt, "cli-unpriv-one");
    let mut as_user = nopool.to_vec();
    as_user.extend(["--user", "1000"]);
    let o = unprivileged_launch(&rt, &as_user, &m, "cli-unpriv-user", &["/bin/true"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("uid 1000 is outside the workload's user namespace (ids 0..1)"),
        "{out}"
    );
    assert_unprivileged_left_nothing(&rt, "cli-unpriv-user");

    // The measurement is still checked: a wrong one refuses the launch.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let o = unprivileged_launch(&rt, &["--allow-unlimited"], &wrong, "cli-unpriv-bad", &[]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("does not match its measurement"), "{out}");
    assert_unprivileged_left_nothing(&rt, "cli-unpriv-bad");
}

#[test]
fn unprivileged_detached_workload_is_signalled_and_deleted_by_namespace() {
    require_root!();
    let _slot = user_slot();
    if !Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        eprintln!(
            "skipped: runs where unprivileged workloads have no cgroup of their own (hybrid hosts)"
        );
        return;
    }
    let rt = Rt::new();
    let img = probe_image();
    let m = berth_tests::measurement(img);
    let id = "cli-unpriv-bg";
    let launch_sleeper = || {
        let flags = ["--allow-unlimited", "--detach"];
        let args = ["/bin/sh", "-c", "sleep 600 & sleep 600"];
        let o = unprivileged_launch(&rt, &flags, &m, id, &args);
        assert!(o.status.success(), "{}", text(&o));
    };
    launch_sleeper();
    let o = unprivileged(&rt, &["exec", id, "--", "/bin/sh", "-c", "id -u"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "{}",
        text(&o)
    );
    let o = unprivileged(&rt, &["kill", "--all", id, "KILL"]);
    assert!(o.status.success(), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = unprivileged(&rt, &["state", id]);
        let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap_or_default();
        if s["status"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "never stopped: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = unprivileged(&rt, &["delete", id]);
    assert!(o.status.success(), "{}", text(&o));
    assert_unprivileged_left_nothing(&rt, id);
    // A running one, deleted by force.
    launch_sleeper();
    let o = unprivileged(&rt, &["delete", "--force", id]);
    assert!(o.status.success(), "{}", text(&o));
    assert_unprivileged_left_nothing(&rt, id);
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
