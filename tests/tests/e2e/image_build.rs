//! Images: unpacking matches `umoci unpack`; `berth image build` is
//! reproducible, multi-arch and readable by umoci; the sample workloads build
//! and run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::images::listing;
use berth_tests::{bin, open_tempdir, run, text};

fn umoci(args: &[&str]) {
    let o = run(Command::new("umoci").args(args));
    assert!(o.status.success(), "umoci {args:?}: {}", text(&o));
}

#[test]
fn parity_with_umoci_unpack() {
    berth_tests::require_root!();
    let d = open_tempdir();
    let p = |s: &str| d.path().join(s).to_string_lossy().into_owned();
    let img = p("layout");
    umoci(&["init", "--layout", &img]);
    umoci(&["new", "--image", &format!("{img}:t")]);
    let src = d.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("etc/conf.d")).unwrap();
    fs::create_dir_all(src.join("home/app")).unwrap();
    fs::create_dir_all(src.join("gone/deep")).unwrap();
    fs::write(src.join("gone/deep/f"), b"f").unwrap();
    fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/etc/conf.d", src.join("conf")).unwrap();
    fs::write(src.join("etc/motd"), b"hello\n").unwrap();
    fs::hard_link(src.join("etc/motd"), src.join("etc/motd.link")).unwrap();
    fs::write(src.join("home/app/data"), vec![3u8; 100_000]).unwrap();
    let sh = |c: &str| {
        let o = run(Command::new("sh").arg("-c").arg(c).current_dir(&src));
        assert!(o.status.success(), "{c}: {}", text(&o));
    };
    sh(
        "chmod 4755 bin/busybox && chmod 700 home/app && chmod 640 home/app/data \
        && chown -R 1000:1000 home/app && chown 0:42 etc/motd && chmod 1777 etc/conf.d",
    );
    umoci(&[
        "insert",
        "--image",
        &format!("{img}:t"),
        &src.to_string_lossy(),
        "/",
    ]);
    let layer2 = d.path().join("src2");
    fs::create_dir_all(layer2.join("etc/conf.d")).unwrap();
    fs::write(layer2.join("etc/conf.d/new"), b"n").unwrap();
    umoci(&[
        "insert",
        "--image",
        &format!("{img}:t"),
        "--whiteout",
        "/gone",
    ]);
    umoci(&[
        "insert",
        "--image",
        &format!("{img}:t"),
        &layer2.to_string_lossy(),
        "/",
    ]);
    umoci(&["unpack", "--image", &format!("{img}:t"), &p("by-umoci")]);
    let o = run(Command::new(bin("berth")).args([
        "image",
        "unpack",
        "--allow-setid",
        &img,
        &p("by-berth"),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("measurement blake3:"), "{}", text(&o));
    let a = listing(&d.path().join("by-umoci/rootfs"));
    let b = listing(&d.path().join("by-berth/rootfs"));
    assert!(
        a.iter().any(|l| l.starts_with("/bin/busybox 4755 0:0")),
        "{a:#?}"
    );
    assert!(!a.iter().any(|l| l.starts_with("/gone")), "{a:#?}");
    assert_eq!(a, b, "berth and umoci unpack differ");
}

#[test]
fn build_is_reproducible_multi_arch_and_umoci_reads_it() {
    berth_tests::require_root!();
    let d = open_tempdir();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("rootfs/bin")).unwrap();
    fs::create_dir_all(src.join("rootfs/data")).unwrap();
    fs::create_dir_all(src.join("rootfs-amd64")).unwrap();
    fs::create_dir_all(src.join("rootfs-arm64")).unwrap();
    fs::copy("/bin/busybox", src.join("rootfs/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("rootfs/bin/sh")).unwrap();
    fs::write(src.join("rootfs-amd64/arch"), b"amd64").unwrap();
    fs::write(src.join("rootfs-arm64/arch"), b"arm64").unwrap();
    fs::write(
        src.join("recipe.toml"),
        "architectures = [\"amd64\", \"arm64\"]\nentrypoint = [\"/bin/sh\"]\n\
         volumes = [\"/data\"]\n[[path]]\npath = \"data\"\nmode = \"0750\"\nowner = \"1000:1000\"\n",
    )
    .unwrap();
    let build = |out: &str| {
        let o = run(Command::new(bin("berth"))
            .args(["image", "build"])
            .arg(&src)
            .arg("-o")
            .arg(d.path().join(out)));
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let first = build("one");
    // Touch every file: timestamps must not matter.
    let o = run(Command::new("touch")
        .arg("-d")
        .arg("2001-01-01")
        .arg(src.join("rootfs/bin/busybox"))
        .arg(src.join("rootfs-arm64/arch")));
    assert!(o.status.success());
    let second = build("two");
    assert_eq!(first, second, "two builds of the same input differ");
    assert!(first.contains("manifest amd64 sha256:") && first.contains("manifest arm64 sha256:"));
    let one = d.path().join("one").to_string_lossy().into_owned();
    umoci(&[
        "unpack",
        "--image",
        &format!("{one}:latest-arm64"),
        &format!("{one}-umoci"),
    ]);
    let digest = first
        .lines()
        .find_map(|l| l.strip_prefix("manifest arm64 "))
        .unwrap()
        .to_string();
    let o = run(Command::new(bin("berth")).args([
        "image",
        "unpack",
        "--digest",
        &digest,
        &one,
        &format!("{one}-berth"),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let a = listing(&PathBuf::from(format!("{one}-umoci/rootfs")));
    let b = listing(&PathBuf::from(format!("{one}-berth/rootfs")));
    assert!(a.contains(&"/data 750 1000:1000 d".to_string()), "{a:#?}");
    assert_eq!(a, b);
    // Without --digest, a multi-arch layout is ambiguous.
    let o = run(Command::new(bin("berth")).args(["image", "unpack", &one, &format!("{one}-x")]));
    assert!(
        !o.status.success() && text(&o).contains("choose one with --digest"),
        "{}",
        text(&o)
    );
}

/// Builds a sample workload twice (same digests) and unpacks its amd64 image.
fn sample(name: &str, dir: &Path) -> PathBuf {
    let build = |out: &Path| {
        let o = run(Command::new("sh")
            .arg(berth_tests::workspace().join(format!("images/{name}/build.sh")))
            .arg(out)
            .env("BERTH", bin("berth")));
        assert!(
            o.status.success(),
            "building images/{name} failed (it needs gcc-aarch64-linux-gnu): {}",
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let first = build(&dir.join(format!("{name}-1")));
    assert_eq!(
        first,
        build(&dir.join(format!("{name}-2"))),
        "{name} is not reproducible"
    );
    assert!(first.contains("manifest arm64 sha256:"), "{first}");
    let amd64 = first
        .lines()
        .find_map(|l| l.strip_prefix("manifest amd64 "))
        .expect("amd64 manifest");
    let img = dir.join(format!("{name}-img"));
    let o = run(Command::new(bin("berth"))
        .args(["image", "unpack", "--digest", amd64])
        .arg(dir.join(format!("{name}-1")))
        .arg(&img));
    assert!(o.status.success(), "{}", text(&o));
    img
}

#[test]
fn sample_images_build_reproducibly_and_run() {
    berth_tests::require_root!();
    let d = open_tempdir();
    let rt = berth_tests::Rt::new();

    let sensor = sample("sensor", d.path());
    let vol = d.path().join("sensor-data");
    fs::create_dir_all(&vol).unwrap();
    let volume = format!("{}:/data:U", vol.display());
    let o = rt.launch(
        &sensor,
        "sensor-1",
        &[
            "-e",
            "SENSOR_COUNT=3",
            "-e",
            "SENSOR_INTERVAL=10",
            "-v",
            &volume,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let log = fs::read_to_string(vol.join("readings.log")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(log.starts_with("seq=0 millideg="), "{log}");
    rt.assert_nothing_left("sensor-1");

    let broken = sample("broken", d.path());
    let o = rt.launch(&broken, "broken-1", &[], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("failing at start on purpose"),
        "{}",
        text(&o)
    );
    rt.assert_nothing_left("broken-1");

    let web = sample("web", d.path());
    let config = fs::read_to_string(web.join("config.json")).unwrap();
    assert!(config.contains("\"8080/tcp\""), "{config}");
}
