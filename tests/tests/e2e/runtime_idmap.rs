//! Image owners seen from inside: the rootfs is mounted idmapped into each
//! container's id range, while the image on the host stays as unpacked.

use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::images::listing;
use berth_tests::{copy_probe_image, open_tempdir, require_root, run, text, Rt};

/// Owners and modes; `/private/note` only for user 1000 (its directory is 0700).
const STAT: &str = "stat -c '%n %u:%g %a' /owned /rootfile /private";
const STAT_NOTE: &str = "stat -c '%n %u:%g %a' /private/note";

/// A copy of the probe image with files of image user 1000 (mode 0600, and a
/// 0700 directory) and of image root, measured and recorded.
fn owners_image(dir: &Path) -> PathBuf {
    let img = copy_probe_image(dir);
    let r = img.join("rootfs");
    let put = |rel: &str, data: &[u8], mode: u32, owner: u32| {
        let p = r.join(rel);
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        chown(&p, Some(owner), Some(owner)).unwrap();
    };
    fs::create_dir(r.join("private")).unwrap();
    fs::set_permissions(r.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    chown(r.join("private"), Some(1000), Some(1000)).unwrap();
    put("owned", b"secret of 1000\n", 0o600, 1000);
    put("private/note", b"note of 1000\n", 0o600, 1000);
    put("rootfile", b"root's\n", 0o644, 0);
    let o = run(Command::new(berth_tests::bin("berth-runtime"))
        .arg("measure")
        .arg("--record")
        .arg(&img));
    assert!(o.status.success(), "{}", text(&o));
    img
}

fn measure(rootfs: &Path) -> String {
    let o = run(Command::new(berth_tests::bin("berth-runtime"))
        .arg("measure")
        .arg(rootfs));
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn assert_owners(out: &str, note: bool) {
    let mut want = vec![
        "/owned 1000:1000 600",
        "/rootfile 0:0 644",
        "/private 1000:1000 700",
    ];
    if note {
        want.push("/private/note 1000:1000 600");
    }
    for line in want {
        assert!(out.lines().any(|l| l == line), "no '{line}' in:\n{out}");
    }
    assert!(!out.contains("65534"), "overflow ids seen:\n{out}");
}

#[test]
fn image_owners_are_seen_inside_and_the_image_is_unchanged() {
    require_root!();
    let d = open_tempdir();
    let img = owners_image(d.path());
    let rootfs = img.join("rootfs");
    let before = listing(&rootfs);
    let rt = Rt::new();

    // The image's user 1000 owns and reads its 0600 files, and is refused the
    // root-owned file by its permissions (EACCES), not by the read-only mount.
    let script = format!(
        "{STAT}; {STAT_NOTE}; cat /owned /private/note; echo x >> /rootfile; echo x >> /owned; id -u"
    );
    let o = rt.launch(
        &img,
        "idm-user",
        &["--user", "1000:1000"],
        &["/bin/sh", "-c", &script],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_owners(&out, true);
    assert!(out.contains("secret of 1000"), "{out}");
    assert!(out.contains("note of 1000"), "{out}");
    assert!(
        out.contains("can't create /rootfile: Permission denied"),
        "{out}"
    );
    assert!(
        out.contains("can't create /owned: Read-only file system"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "1000"), "{out}");
    rt.assert_nothing_left("idm-user");

    // Container root holds no capability: user 1000's 0600 file stays closed.
    let o = rt.launch(
        &img,
        "idm-root",
        &[],
        &["/bin/sh", "-c", "cat /owned; id -u"],
    );
    let out = text(&o);
    assert!(
        out.contains("can't open '/owned': Permission denied"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "0"), "{out}");
    rt.assert_nothing_left("idm-root");

    // On the host the image is exactly as unpacked: owners, modes, content,
    // and its measurement.
    assert_eq!(listing(&rootfs), before);
    let owned = fs::metadata(rootfs.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    assert_eq!(measure(&rootfs), berth_tests::measurement(&img));
}

#[test]
fn two_containers_of_one_image_each_see_the_image_owners() {
    require_root!();
    let d = open_tempdir();
    let img = owners_image(d.path());
    let rt = Rt::new();
    let ids = ["idm-a", "idm-b"];
    let mut starts = Vec::new();
    for id in ids {
        let o = rt.launch(&img, id, &["--detach"], &["/bin/sleep", "60"]);
        assert!(o.status.success(), "{}", text(&o));
        let st: serde_json::Value =
            serde_json::from_slice(&run(rt.cmd().args(["state", id])).stdout).unwrap();
        let start = st["idRange"]["start"].as_u64().unwrap();
        let pid = st["pid"].as_u64().unwrap();
        starts.push(start);
        assert!(rt.holds_id_range(id), "{id} holds no range in the id table");
        let o = run(rt.cmd().args(["exec", id, "--", "/bin/sh", "-c", STAT]));
        assert!(o.status.success(), "{}", text(&o));
        assert_owners(&text(&o), false);
        // The host sees the same files, through the container's root, owned
        // by the container's range: image uid N is host uid start + N.
        let via = fs::metadata(format!("/proc/{pid}/root/owned")).unwrap();
        assert_eq!(u64::from(via.uid()), start + 1000, "{id}");
        let via = fs::metadata(format!("/proc/{pid}/root/rootfile")).unwrap();
        assert_eq!(u64::from(via.uid()), start, "{id}");
    }
    assert!(starts[0].abs_diff(starts[1]) >= 65_536, "{starts:?}");
    for id in ids {
        assert!(run(rt.cmd().args(["delete", "--force", id]))
            .status
            .success());
        rt.assert_nothing_left(id);
    }
    let owned = fs::metadata(img.join("rootfs/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
}

/// Idmapped mounts of `rootfs` in every process's mount namespace on the
/// machine: (pid, mount point).
fn idmapped_mounts_of(rootfs: &Path) -> Vec<(String, String)> {
    let root = rootfs.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(table) = fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        for line in table.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.get(3) == Some(&root.as_str()) && f.get(5).is_some_and(|o| o.contains("idmapped"))
            {
                out.push((name.clone(), f[4].to_string()));
            }
        }
    }
    out
}

fn host_mounts() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn the_idmapped_root_never_reaches_the_host_and_dies_with_its_container() {
    require_root!();
    let d = open_tempdir();
    let img = owners_image(d.path());
    let rootfs = fs::canonicalize(img.join("rootfs")).unwrap();
    let rt = Rt::new();
    let host_before = host_mounts();
    for round in 0..3 {
        // A foreground runtime killed -9 while its workload runs: the
        // container is orphaned; its root is only in its own namespace.
        let id = format!("idm-crash-{round}");
        let mut c = rt.cmd();
        c.arg("launch")
            .arg("--image")
            .arg(&img)
            .arg("--measurement")
            .arg(berth_tests::measurement(&img))
            .arg(&id)
            .args(["--", "/bin/sleep", "60"]);
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = run(rt.cmd().args(["state", &id]));
            if String::from_utf8_lossy(&st.stdout).contains("\"running\"") {
                break;
            }
            assert!(Instant::now() < deadline, "the container never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Once created, the view is only the root of the container's own
        // namespace (while it is created, the creating thread's private
        // namespace also holds it, at the bundle path).
        let seen = idmapped_mounts_of(&rootfs);
        assert!(
            !seen.is_empty() && seen.iter().all(|(_, at)| at == "/"),
            "only as a container's root: {seen:#?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(host_mounts(), host_before, "the host mount table changed");
        let listed = text(&run(rt.cmd().args(["list", "-q"])));
        assert!(listed.lines().any(|l| l == id), "{listed}");
        assert!(run(rt.cmd().args(["delete", "--force", &id]))
            .status
            .success());
        rt.assert_nothing_left(&id);
        // Nothing accumulates: no namespace anywhere keeps the mount.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !idmapped_mounts_of(&rootfs).is_empty() {
            assert!(
                Instant::now() < deadline,
                "idmapped mounts left after delete: {:#?}",
                idmapped_mounts_of(&rootfs)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(host_mounts(), host_before);
}

#[test]
fn an_image_on_a_filesystem_without_idmapping_is_refused_clearly() {
    require_root!();
    let d = open_tempdir();
    let img = owners_image(d.path());
    let rt = Rt::new();
    let ram = d.path().join("ram");
    fs::create_dir(&ram).unwrap();
    // ramfs cannot be idmapped; it is mounted in a private mount namespace
    // of the test's shell only, so the host mount table is untouched.
    let script = format!(
        "mount -t ramfs ramfs {ram} && chmod 755 {ram} && cp -a {img} {ram}/img && \
         exec {bin} --root {root} launch --image {ram}/img --measurement {m} idm-ramfs -- /bin/true",
        ram = ram.display(),
        img = img.display(),
        bin = berth_tests::bin("berth-runtime").display(),
        root = rt.root().display(),
        m = berth_tests::measurement(&img),
    );
    let o =
        run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    let path = format!("{}/img/rootfs", ram.display());
    for needle in [
        path.as_str(),
        "ramfs filesystem",
        "cannot be idmapped",
        "keep images on a filesystem that supports idmapped mounts",
    ] {
        assert!(out.contains(needle), "no '{needle}' in: {out}");
    }
    rt.assert_nothing_left("idm-ramfs");
    assert!(idmapped_mounts_of(&ram.join("img/rootfs")).is_empty());
}
