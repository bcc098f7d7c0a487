//! Security defaults, each proven by a probe running inside a real container.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::{field, probe_image, require_root, run, text, Rt};

const ZERO_CAPS: &str = "0000000000000000";

#[test]
fn hardened_profile_seen_from_inside() {
    require_root!();
    let rt = Rt::new();
    let o = rt.launch(probe_image(), "sec-profile", &[], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&out, cap), Some(ZERO_CAPS), "{cap} in {out}");
    }
    assert_eq!(field(&out, "NoNewPrivs"), Some("1"), "{out}");
    assert_eq!(field(&out, "Seccomp"), Some("2"), "{out}");
    for denied in [
        "mount",
        "unshare_user",
        "keyctl",
        "add_key",
        "bpf",
        "ptrace",
    ] {
        assert_eq!(field(&out, denied), Some("EPERM"), "{denied} in {out}");
    }
    assert_eq!(
        field(&out, "write /probe-root-write"),
        Some("EROFS"),
        "{out}"
    );
    assert_eq!(
        field(&out, "write /tmp/probe-tmp-write"),
        Some("ok"),
        "{out}"
    );
    assert_eq!(field(&out, "interfaces"), Some("lo,"), "{out}");
    assert_eq!(field(&out, "fds"), Some("0,1,2,"), "{out}");
    assert_eq!(field(&out, "cwd"), Some("/"), "{out}");
    let map: Vec<u64> = field(&out, "uid_map")
        .unwrap()
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0, "container root is mapped: {out}");
    assert!(
        map[1] >= 65_536,
        "host id {} is a subordinate id, not host root or a user",
        map[1]
    );
    assert_eq!(map[2], 65_536);
    rt.assert_nothing_left("sec-profile");
}

#[test]
fn tmp_and_run_are_nosuid_nodev_noexec_tmpfs() {
    require_root!();
    let rt = Rt::new();
    let script = "grep -E ' /(tmp|run) ' /proc/self/mounts; cp /probe /tmp/p && /probe exec /tmp/p";
    let o = rt.launch(probe_image(), "sec-tmp", &[], &["/bin/sh", "-c", script]);
    let out = text(&o);
    for dir in ["/tmp", "/run"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" {dir} ")))
            .unwrap_or_else(|| panic!("{dir}: {out}"));
        assert!(line.starts_with("tmpfs "), "{line}");
        for opt in ["nosuid", "nodev", "noexec"] {
            assert!(
                line.split([' ', ',']).any(|o| o == opt),
                "{dir} lacks {opt}: {line}"
            );
        }
    }
    assert_eq!(field(&out, "exec /tmp/p"), Some("EACCES"), "{out}");
}

#[test]
fn masked_and_read_only_kernel_paths() {
    require_root!();
    let rt = Rt::new();
    let script = "grep -E ' /(proc/keys|proc/kcore|proc/timer_list|sys/firmware|proc/sys) ' /proc/self/mountinfo; \
                  echo keys=$(wc -c < /proc/keys); echo firmware=$(ls -A /sys/firmware | wc -l); \
                  /probe write /proc/sys/kernel/hostname; /probe write /proc/sys/vm/overcommit_memory";
    let o = rt.launch(probe_image(), "sec-mask", &[], &["/bin/sh", "-c", script]);
    let out = text(&o);
    let mount = |p: &str| {
        out.lines()
            .find(|l| l.split(' ').nth(4) == Some(p))
            .map(str::to_string)
    };
    for masked in ["/proc/keys", "/proc/timer_list", "/proc/kcore"] {
        if std::path::Path::new(masked).exists() {
            let m = mount(masked).unwrap_or_else(|| panic!("{masked} is not masked: {out}"));
            assert!(
                m.contains(" - devtmpfs ") || m.contains(" - tmpfs ") || m.contains("/null "),
                "{m}"
            );
        }
    }
    let fw = mount("/sys/firmware").unwrap_or_else(|| panic!("/sys/firmware is not masked: {out}"));
    assert!(
        fw.split(' ')
            .nth(5)
            .unwrap_or("")
            .split(',')
            .any(|o| o == "ro"),
        "{fw}"
    );
    assert_eq!(field(&out, "keys"), Some("0"), "{out}");
    assert_eq!(field(&out, "firmware"), Some("0"), "{out}");
    let sys =
        mount("/proc/sys").unwrap_or_else(|| panic!("/proc/sys is not a read-only mount: {out}"));
    assert!(
        sys.split(' ')
            .nth(5)
            .unwrap_or("")
            .split(',')
            .any(|o| o == "ro"),
        "{sys}"
    );
    assert_eq!(
        field(&out, "write /proc/sys/kernel/hostname"),
        Some("EROFS"),
        "{out}"
    );
    assert_eq!(
        field(&out, "write /proc/sys/vm/overcommit_memory"),
        Some("EROFS"),
        "{out}"
    );
}

fn wait_status(rt: &Rt, id: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = run(rt.cmd().arg("state").arg(id));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let status = s["status"].as_str().unwrap_or("").to_string();
        if status == want || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn logs(rt: &Rt, id: &str) -> String {
    text(&run(rt.cmd().arg("logs").arg(id)))
}

#[test]
fn each_workload_has_its_own_id_range() {
    require_root!();
    let rt = Rt::new();
    let script = "cat /proc/self/uid_map; sleep 30";
    for id in ["sec-range-a", "sec-range-b"] {
        let o = rt.launch(probe_image(), id, &["--detach"], &["/bin/sh", "-c", script]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut a, mut b) = (String::new(), String::new());
    while (a.is_empty() || b.is_empty()) && Instant::now() < deadline {
        a = logs(&rt, "sec-range-a").trim().to_string();
        b = logs(&rt, "sec-range-b").trim().to_string();
        std::thread::sleep(Duration::from_millis(50));
    }
    let host_id = |m: &str| {
        m.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .parse::<u64>()
            .unwrap_or(0)
    };
    assert!(host_id(&a) >= 65_536 && host_id(&b) >= 65_536, "{a} / {b}");
    assert!(
        host_id(&a).abs_diff(host_id(&b)) >= 65_536,
        "ranges overlap: {a} / {b}"
    );
    for id in ["sec-range-a", "sec-range-b"] {
        let o = run(rt.cmd().args(["delete", "--force", id]));
        assert!(o.status.success(), "{}", text(&o));
        rt.assert_nothing_left(id);
    }
}

#[test]
fn network_none_by_default_host_on_request() {
    require_root!();
    let rt = Rt::new();
    let o = rt.launch(probe_image(), "sec-net", &[], &["/probe", "net"]);
    assert_eq!(field(&text(&o), "interfaces"), Some("lo,"), "{}", text(&o));
    let host_ifaces = std::fs::read_dir("/sys/class/net").unwrap().count();
    let o = rt.launch(
        probe_image(),
        "sec-net-host",
        &["--network", "host"],
        &["/probe", "net"],
    );
    let seen = field(&text(&o), "interfaces")
        .unwrap_or_default()
        .matches(',')
        .count();
    assert_eq!(seen, host_ifaces, "{}", text(&o));
}

fn start_neighbour(rt: &Rt, id: &str) {
    let o = rt.launch(probe_image(), id, &["--detach"], &["/bin/sleep", "60"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(wait_status(rt, id, "running"), "running");
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    require_root!();
    let rt = Rt::new();
    start_neighbour(&rt, "sec-fork-neighbour");
    let o = rt.launch(
        probe_image(),
        "sec-fork",
        &["--pids", "32"],
        &["/probe", "forkbomb"],
    );
    let out = text(&o);
    let count: u32 = out
        .split("count=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(999);
    assert!(
        count < 32,
        "forked {count} processes past a limit of 32: {out}"
    );
    assert!(out.contains("fork=EAGAIN"), "{out}");
    assert_eq!(
        wait_status(&rt, "sec-fork-neighbour", "running"),
        "running",
        "the neighbour died"
    );
    run(rt.cmd().args(["delete", "--force", "sec-fork-neighbour"]));
    rt.assert_nothing_left("sec-fork");
}

#[test]
fn memory_hog_is_oom_killed_alone() {
    require_root!();
    let rt = Rt::new();
    start_neighbour(&rt, "sec-oom-neighbour");
    let o = rt.launch(
        probe_image(),
        "sec-oom",
        &["--memory", "32m"],
        &["/probe", "memhog", "256"],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(137), "the hog was not killed: {out}");
    assert!(!out.contains("memhog survived"), "{out}");
    assert_eq!(
        wait_status(&rt, "sec-oom-neighbour", "running"),
        "running",
        "the neighbour died"
    );
    run(rt.cmd().args(["delete", "--force", "sec-oom-neighbour"]));
    rt.assert_nothing_left("sec-oom");
}

#[test]
fn only_stdio_is_inherited() {
    require_root!();
    let rt = Rt::new();
    let img = probe_image();
    let cmd = format!(
        "exec 7</etc/hostname 8>>/dev/null 9</proc/self/status; exec {} --root {} launch --image {} --measurement {} sec-fds -- /probe status",
        berth_tests::bin("berth-runtime").display(),
        rt.root().display(),
        img.display(),
        berth_tests::measurement(img)
    );
    let o = run(Command::new("sh").arg("-c").arg(cmd));
    assert_eq!(field(&text(&o), "fds"), Some("0,1,2,"), "{}", text(&o));
}

#[test]
fn working_directory_is_inside_the_rootfs() {
    require_root!();
    let d = berth_tests::open_tempdir();
    let img = berth_tests::copy_probe_image(d.path());
    let cfg = std::fs::read_to_string(img.join("config.json"))
        .unwrap()
        .replace("\"WorkingDir\": \"/\"", "\"WorkingDir\": \"/data\"");
    std::fs::write(img.join("config.json"), cfg).unwrap();
    let rt = Rt::new();
    let o = rt.launch(
        &img,
        "sec-cwd",
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo cwd=$(pwd); echo real=$(readlink /proc/self/cwd)",
        ],
    );
    assert_eq!(field(&text(&o), "cwd"), Some("/data"), "{}", text(&o));
    assert_eq!(field(&text(&o), "real"), Some("/data"), "{}", text(&o));
}

#[test]
fn runtime_runs_from_a_write_protected_executable() {
    require_root!();
    let rt = Rt::new();
    let img = probe_image();
    let mut child = rt
        .cmd()
        .args(["launch", "--image"])
        .arg(img)
        .arg("--measurement")
        .arg(berth_tests::measurement(img))
        .args(["sec-seal", "--", "/bin/sleep", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let exe = format!("/proc/{}/exe", child.id());
    let original = berth_tests::bin("berth-runtime").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut target = String::new();
    while Instant::now() < deadline {
        target = std::fs::read_link(&exe)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if !target.is_empty() && target != original {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // As root: a detached read-only clone of the file's mount (its root is
    // the file itself: "/"); otherwise a sealed memory file
    // ("/memfd:berth-runtime").
    assert!(
        target == "/" || target.starts_with("/memfd:berth-runtime"),
        "runtime exe is {target}, not a protected copy of {original}"
    );
    if target == "/" {
        let ro = run(Command::new("python3").args([
            "-c",
            "import os, sys; print(os.statvfs(sys.argv[1]).f_flag & os.ST_RDONLY)",
            &exe,
        ]));
        assert_eq!(text(&ro).trim(), "1", "{}", text(&ro));
    }
    let write = std::fs::OpenOptions::new().append(true).open(&exe);
    assert!(
        write.is_err(),
        "the running executable could be opened for writing"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_foreground_launch_forwards_signals_to_the_workload() {
    require_root!();
    let rt = Rt::new();
    let img = probe_image();
    let script = "trap 'echo got-term; exit 3' TERM; echo ready; sleep 30 & wait";
    let mut child = rt
        .cmd()
        .args(["launch", "--image"])
        .arg(img)
        .arg("--measurement")
        .arg(berth_tests::measurement(img))
        .args(["sec-signal", "--", "/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix_kill(child.id(), "TERM");
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(status.code(), Some(3), "{rest}");
    assert!(rest.contains("got-term"), "{rest}");
    rt.assert_nothing_left("sec-signal");
}

fn nix_kill(pid: u32, sig: &str) {
    let o = run(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn devices_pass_through_only_when_named_and_accessible() {
    require_root!();
    let rt = Rt::new();
    let node = format!("/dev/berth-test-null-{}", std::process::id());
    let o = run(Command::new("mknod").args(["-m", "0666", &node, "c", "1", "3"]));
    assert!(o.status.success(), "{}", text(&o));
    let script =
        format!("echo x > {node} && echo wrote=ok; ls /dev/loop0 2>&1 || echo loop0=absent");
    let o = rt.launch(
        probe_image(),
        "sec-dev",
        &["--device", &node],
        &["/bin/sh", "-c", &script],
    );
    assert_eq!(field(&text(&o), "wrote"), Some("ok"), "{}", text(&o));
    assert_eq!(field(&text(&o), "loop0"), Some("absent"), "{}", text(&o));
    run(Command::new("chmod").args(["0600", &node]));
    let o = rt.launch(probe_image(), "sec-dev-private", &["--device", &node], &[]);
    let _ = std::fs::remove_file(&node);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("does not let others read and write it"),
        "{}",
        text(&o)
    );
    rt.assert_nothing_left("sec-dev-private");
}

#[test]
fn exec_gets_the_containers_profile_and_nothing_more() {
    require_root!();
    let rt = Rt::new();
    let img = probe_image();
    let o = rt.launch(img, "sec-exec", &["--detach"], &["/bin/sleep", "30"]);
    assert!(o.status.success(), "{}", text(&o));
    let init = run(rt
        .cmd()
        .args(["exec", "sec-exec", "--", "/probe", "profile"]));
    assert!(init.status.success(), "{}", text(&init));
    let out = text(&init);
    let st: serde_json::Value =
        serde_json::from_slice(&run(rt.cmd().args(["state", "sec-exec"])).stdout).unwrap();
    let start = st["idRange"]["start"].as_u64().unwrap();
    // The container's user namespace (its subordinate range), not the host's.
    assert_eq!(
        field(&out, "uid_map"),
        Some(format!("0 {start} 65536").as_str()),
        "{out}"
    );
    for (k, v) in [
        ("CapEff", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        ("mount", "EPERM"),
        ("sethostname", "EPERM"),
        ("unshare_user", "EPERM"),
        ("fds", "0,1,2,"),
        ("interfaces", "lo,"),
        ("write /probe-root-write", "EROFS"),
    ] {
        assert_eq!(field(&out, k), Some(v), "{k} in exec:\n{out}");
    }
    // The container's cgroups, in every hierarchy: seen from the host, the
    // init is in one cgroup of its own (the same path in each cgroup v1
    // hierarchy, not this test's); seen from inside, an exec'd process is
    // where the init is, at the root of the container's cgroup namespace.
    let pid = st["pid"].as_i64().unwrap();
    let host = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    // The paths of the cgroup v1 hierarchies (not named ones) in such a file.
    let v1_paths = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                (!ctl.is_empty() && !ctl.starts_with("name=")).then(|| path.to_string())
            })
            .collect()
    };
    let init_paths = v1_paths(&host);
    if !init_paths.is_empty() {
        let paths: std::collections::BTreeSet<_> = init_paths.iter().collect();
        assert_eq!(paths.len(), 1, "init's cgroups:\n{host}");
        let own = *paths.first().unwrap();
        assert!(own.contains("sec-exec"), "init's cgroups:\n{host}");
        assert!(v1_paths(&ours).iter().all(|p| p != own), "{ours}");
    }
    let cg = run(rt.cmd().args([
        "exec",
        "sec-exec",
        "--",
        "sh",
        "-c",
        "cat /proc/self/cgroup; echo ==; cat /proc/1/cgroup",
    ]));
    let cg = text(&cg);
    let (exec_cg, init_cg) = cg.split_once("==\n").unwrap_or_default();
    assert_eq!(exec_cg, init_cg, "exec's cgroups, then init's:\n{cg}");
    assert!(
        !exec_cg.is_empty() && exec_cg.lines().all(|l| l.ends_with(":/")),
        "exec's cgroups:\n{cg}"
    );
    // Its own PID namespace: the probe is not pid 1 but sees only the container.
    let ps = run(rt.cmd().args([
        "exec",
        "sec-exec",
        "--",
        "sh",
        "-c",
        "ls /proc | grep -c '^[0-9]'",
    ]));
    let n: u32 = text(&ps).trim().parse().unwrap_or(99);
    // init, sh, ls and grep: nothing of the host.
    assert!(
        (2..=4).contains(&n),
        "exec sees {n} processes: {}",
        text(&ps)
    );
    // The command's exit status comes back; a missing program is 127.
    let code = run(rt
        .cmd()
        .args(["exec", "sec-exec", "--", "sh", "-c", "exit 7"]));
    assert_eq!(code.status.code(), Some(7));
    let missing = run(rt
        .cmd()
        .args(["exec", "sec-exec", "--", "/no/such/program"]));
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing));
    assert!(text(&missing).contains("/no/such/program"));
    assert!(run(rt.cmd().args(["delete", "--force", "sec-exec"]))
        .status
        .success());
    let gone = run(rt.cmd().args(["exec", "sec-exec", "--", "true"]));
    assert_eq!(gone.status.code(), Some(125));
    assert!(text(&gone).contains("does not exist"), "{}", text(&gone));
    rt.assert_nothing_left("sec-exec");
}
