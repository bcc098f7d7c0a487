//! Verified boot and bad input: every refusal names its input and leaves
//! nothing behind.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use berth_tests::{copy_probe_image, open_tempdir, probe_image, require_root, run, text, Rt};

fn refused(rt: &Rt, img: &Path, id: &str, flags: &[&str], args: &[&str], needle: &str) {
    let o = rt.launch(img, id, flags, args);
    let out = text(&o);
    assert!(!o.status.success(), "{id} was launched: {out}");
    assert!(out.contains(needle), "{id}: expected '{needle}' in: {out}");
    rt.assert_nothing_left(id);
}

fn record(img: &Path) {
    let o = run(Command::new(berth_tests::bin("berth-runtime"))
        .arg("measure")
        .arg("--record")
        .arg(img));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn any_change_to_the_rootfs_refuses_the_launch() {
    require_root!();
    let d = open_tempdir();
    let img = copy_probe_image(d.path());
    let r = img.join("rootfs");
    let rt = Rt::new();
    let passwd = fs::read(r.join("etc/passwd")).unwrap();

    let mut changed = passwd.clone();
    changed[0] ^= 1;
    fs::write(r.join("etc/passwd"), &changed).unwrap();
    refused(
        &rt,
        &img,
        "verify-byte",
        &[],
        &[],
        "'etc/passwd' changed content",
    );
    fs::write(r.join("etc/passwd"), &passwd).unwrap();

    fs::write(r.join("etc/extra"), b"").unwrap();
    refused(&rt, &img, "verify-add", &[], &[], "'etc/extra' was added");
    fs::remove_file(r.join("etc/extra")).unwrap();

    fs::rename(r.join("bin/sleep"), d.path().join("sleep")).unwrap();
    refused(
        &rt,
        &img,
        "verify-remove",
        &[],
        &[],
        "'bin/sleep' was removed",
    );
    fs::rename(d.path().join("sleep"), r.join("bin/sleep")).unwrap();

    fs::set_permissions(r.join("probe"), fs::Permissions::from_mode(0o4755)).unwrap();
    refused(
        &rt,
        &img,
        "verify-mode",
        &[],
        &[],
        "'probe' changed mode from 755 to 4755",
    );
    fs::set_permissions(r.join("probe"), fs::Permissions::from_mode(0o755)).unwrap();

    std::os::unix::fs::lchown(r.join("etc/group"), Some(1000), Some(1000)).unwrap();
    refused(
        &rt,
        &img,
        "verify-owner",
        &[],
        &[],
        "'etc/group' changed owner from 0:0 to 1000:1000",
    );
    std::os::unix::fs::lchown(r.join("etc/group"), Some(0), Some(0)).unwrap();

    let o = rt.launch(&img, "verify-restored", &[], &["/bin/true"]);
    assert!(o.status.success(), "restored image refused: {}", text(&o));
}

/// An image unpacked by a release that measured with SHA-256 (its
/// manifest without the algorithm line) still launches, checked with
/// SHA-256, and a change to it is still refused by name; new measurements
/// are BLAKE3.
#[test]
fn an_image_measured_with_sha256_by_an_earlier_release_is_checked_with_sha256() {
    require_root!();
    let fresh = fs::read_to_string(probe_image().join("measurement")).unwrap();
    assert!(fresh.starts_with("blake3:"), "{fresh}");
    let d = open_tempdir();
    let img = copy_probe_image(d.path());
    let o = run(Command::new(berth_tests::bin("berth-runtime"))
        .args(["measure", "--record", "--algorithm", "sha256"])
        .arg(&img));
    assert!(o.status.success(), "{}", text(&o));
    let legacy = fs::read_to_string(img.join("measurement")).unwrap();
    assert!(legacy.starts_with("sha256:"), "{legacy}");
    let manifest = fs::read_to_string(img.join("manifest")).unwrap();
    let (header, entries) = manifest.split_once('\n').unwrap();
    assert_eq!(header, "# algorithm sha256");
    fs::write(img.join("manifest"), entries).unwrap();
    let rt = Rt::new();
    let o = rt.launch(&img, "verify-legacy", &[], &["/bin/true"]);
    assert!(o.status.success(), "legacy image refused: {}", text(&o));
    fs::write(img.join("rootfs/etc/group"), b"x\n").unwrap();
    refused(
        &rt,
        &img,
        "verify-legacy-changed",
        &[],
        &[],
        "'etc/group' changed size from 39 to 2 bytes",
    );
}

#[test]
fn a_wrong_measurement_is_refused() {
    require_root!();
    let rt = Rt::new();
    let mut c = rt.cmd();
    c.arg("launch").arg("--image").arg(probe_image());
    c.args([
        "--measurement",
        &format!("sha256:{}", "0".repeat(64)),
        "verify-wrong",
    ]);
    let o = run(&mut c);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("does not match its measurement"),
        "{}",
        text(&o)
    );
    rt.assert_nothing_left("verify-wrong");
}

#[test]
fn mount_paths_escaping_the_rootfs_are_refused() {
    require_root!();
    let rt = Rt::new();
    let img = probe_image();
    let d = open_tempdir();
    let src = d.path().display().to_string();
    refused(
        &rt,
        img,
        "bad-vol-dotdot",
        &["-v", &format!("{src}:/data/../etc")],
        &[],
        "not a clean absolute path",
    );
    refused(
        &rt,
        img,
        "bad-vol-rel",
        &["-v", &format!("{src}:data")],
        &[],
        "not a clean absolute path",
    );
    refused(
        &rt,
        img,
        "bad-vol-src",
        &["-v", "relative:/data"],
        &[],
        "not an absolute path",
    );
    refused(
        &rt,
        img,
        "bad-vol-missing",
        &["-v", &format!("{src}:/nowhere")],
        &[],
        "mount point '/nowhere' does not exist",
    );
}

#[test]
fn symlinked_proc_or_dev_null_in_the_rootfs_is_refused() {
    require_root!();
    let rt = Rt::new();
    let d = open_tempdir();
    let img = copy_probe_image(d.path());
    let r = img.join("rootfs");
    fs::remove_dir(r.join("proc")).unwrap();
    symlink("/etc", r.join("proc")).unwrap();
    record(&img);
    refused(
        &rt,
        &img,
        "bad-proc-link",
        &[],
        &[],
        "'/proc' in the rootfs is a symlink",
    );

    let d2 = open_tempdir();
    let img2 = copy_probe_image(d2.path());
    symlink("/etc/shadow", img2.join("rootfs/dev/null")).unwrap();
    record(&img2);
    refused(
        &rt,
        &img2,
        "bad-devnull-link",
        &[],
        &[],
        "'/dev/null' in the rootfs is a symlink",
    );
}

fn with_config(edit: &str, by: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = open_tempdir();
    let img = copy_probe_image(d.path());
    let cfg = fs::read_to_string(img.join("config.json")).unwrap();
    assert!(cfg.contains(edit), "config.json lacks {edit}");
    fs::write(img.join("config.json"), cfg.replace(edit, by)).unwrap();
    (d, img)
}

#[test]
fn bad_image_configs_are_refused() {
    require_root!();
    let rt = Rt::new();
    let (_d1, img) = with_config(
        "\"WorkingDir\": \"/\"",
        "\"WorkingDir\": \"/proc/self/fd/3\"",
    );
    refused(
        &rt,
        &img,
        "bad-cwd",
        &[],
        &[],
        "working directory '/proc/self/fd/3' points into /proc",
    );
    let (_d2, img) = with_config(
        "\"Entrypoint\": [\"/probe\"],\n    \"Cmd\": [\"profile\"],",
        "",
    );
    refused(
        &rt,
        &img,
        "bad-noentry",
        &[],
        &[],
        "no entrypoint and no command",
    );
    refused(
        &rt,
        probe_image(),
        "bad-uid",
        &["--user", "2147483648"],
        &[],
        "above 2^31",
    );
    refused(
        &rt,
        probe_image(),
        "bad-uid-range",
        &["--user", "70000"],
        &[],
        "outside the workload's user namespace",
    );
    refused(
        &rt,
        probe_image(),
        "bad-exe",
        &[],
        &["/no/such/binary"],
        "/no/such/binary",
    );
}

#[test]
fn a_duplicate_id_is_refused_and_the_first_keeps_running() {
    require_root!();
    let rt = Rt::new();
    let o = rt.launch(probe_image(), "dup", &["--detach"], &["/bin/sleep", "60"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = rt.launch(probe_image(), "dup", &["--detach"], &["/bin/sleep", "60"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("container 'dup' already exists"),
        "{}",
        text(&o)
    );
    let state = run(rt.cmd().args(["state", "dup"]));
    let s: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(s["status"], "running", "{s}");
    assert!(run(rt.cmd().args(["delete", "--force", "dup"]))
        .status
        .success());
    rt.assert_nothing_left("dup");
}
