//! Images: safe layer unpacking against malicious layers (parity with umoci
//! and builds: `image_build`).
//!
//! Every attack test asserts the refusal (or, where a path is legitimately
//! re-rooted, where it landed) *and* that nothing outside the rootfs changed:
//! the sandbox around the destination, holding a victim directory that the
//! layers aim at, is listed before and after.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_image::unpack::{self, LayerSource, Limits, Options, Ownership, Policy};
use berth_tests::images::{gzip, listing_except, Raw, Tar};
use berth_tests::{bin, open_tempdir, run, text};

/// A sandbox: `victim/` with a secret, the destination `img` beside it.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = open_tempdir();
        fs::create_dir_all(dir.path().join("victim/sub")).unwrap();
        fs::write(dir.path().join("victim/secret"), b"secret").unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn victim(&self) -> String {
        self.path().join("victim").to_string_lossy().into_owned()
    }

    fn dest(&self) -> PathBuf {
        self.path().join("img")
    }

    fn outside(&self) -> Vec<String> {
        listing_except(self.path(), &[self.dest()])
    }

    fn opts(&self) -> Options {
        Options {
            ownership: Ownership::for_current_user(),
            ..Options::default()
        }
    }

    /// Unpacks uncompressed layers, in order, with `opts`.
    fn unpack(&self, layers: &[Vec<u8>], opts: &Options) -> Result<unpack::Unpacked, String> {
        let sources = layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerSource {
                name: format!("#{i}"),
                reader: &l[..],
                compression: None,
                blob: None,
                diff_id: None,
            })
            .collect();
        unpack::unpack_layers(sources, &self.dest(), None, opts).map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s.push_str(&format!(" / {c}"));
                src = c.source();
            }
            s
        })
    }

    /// Asserts the unpack is refused with `needle` in the reason, that
    /// nothing outside changed, and that no destination was left.
    fn refused(&self, layers: &[Vec<u8>], opts: &Options, needle: &str) {
        let before = self.outside();
        let err = self
            .unpack(layers, opts)
            .expect_err("the layer must be refused");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        assert_eq!(
            before,
            self.outside(),
            "something outside the rootfs changed"
        );
        assert!(
            !self.dest().exists(),
            "a refused unpack left {}",
            self.dest().display()
        );
        let staged = self.path().join(".img.unpacking");
        assert!(
            !staged.exists(),
            "a refused unpack left its staging directory"
        );
    }

    /// Asserts the unpack succeeds and nothing outside changed.
    fn contained(&self, layers: &[Vec<u8>], opts: &Options) -> PathBuf {
        let before = self.outside();
        self.unpack(layers, opts).expect("unpack");
        assert_eq!(
            before,
            self.outside(),
            "something outside the rootfs changed"
        );
        self.dest().join("rootfs")
    }
}

#[test]
fn dotdot_paths_are_refused() {
    let s = Sandbox::new();
    let l = Tar::new()
        .file("../../victim/secret", 0o644, b"pwned")
        .finish();
    s.refused(&[l], &s.opts(), "contains '..'");
    let l = Tar::new().file("a/../../x", 0o644, b"x").finish();
    s.refused(&[l], &s.opts(), "contains '..'");
}

#[test]
fn absolute_paths_land_inside_the_rootfs() {
    let s = Sandbox::new();
    let target = format!("{}/secret", s.victim());
    let l = Tar::new().file(&target, 0o644, b"pwned").finish();
    let root = s.contained(&[l], &s.opts());
    let inside = root.join(target.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
}

#[test]
fn symlink_climbing_above_the_root_is_refused() {
    let s = Sandbox::new();
    let l = Tar::new()
        .symlink("up", "../../../../../../../../victim")
        .file("up/secret", 0o644, b"pwned")
        .finish();
    s.refused(
        &[l],
        &s.opts(),
        "climbs above the rootfs through the symlink 'up'",
    );
}

#[test]
fn absolute_symlink_is_followed_inside_the_rootfs() {
    let s = Sandbox::new();
    let l = Tar::new()
        .symlink("abs", &s.victim())
        .file("abs/secret", 0o644, b"pwned")
        .finish();
    let root = s.contained(&[l], &s.opts());
    let inside = root.join(s.victim().trim_start_matches('/')).join("secret");
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    assert_eq!(
        fs::read_link(root.join("abs")).unwrap(),
        PathBuf::from(s.victim())
    );
}

#[test]
fn directory_replaced_by_symlink_in_the_same_layer() {
    let s = Sandbox::new();
    let l = Tar::new()
        .dir("d/", 0o755)
        .symlink("d", "../../../../../../victim")
        .file("d/secret", 0o644, b"pwned")
        .finish();
    s.refused(&[l], &s.opts(), "climbs above the rootfs");
}

#[test]
fn directory_replaced_by_symlink_in_a_later_layer() {
    let s = Sandbox::new();
    let l1 = Tar::new()
        .dir("d/", 0o755)
        .file("d/f", 0o644, b"1")
        .finish();
    let l2 = Tar::new()
        .symlink("d", "../../../../../../victim")
        .file("d/secret", 0o644, b"pwned")
        .finish();
    s.refused(&[l1.clone(), l2], &s.opts(), "climbs above the rootfs");
    let l2 = Tar::new()
        .symlink("d", &s.victim())
        .file("d/secret", 0o644, b"pwned")
        .finish();
    let root = s.contained(&[l1, l2], &s.opts());
    assert!(root
        .join(s.victim().trim_start_matches('/'))
        .join("secret")
        .is_file());
}

#[test]
fn hardlink_escapes_are_refused() {
    let s = Sandbox::new();
    let l = Tar::new().hardlink("h", "../victim/secret").finish();
    s.refused(&[l], &s.opts(), "hardlink target");
    let abs = format!("{}/secret", s.victim());
    let l = Tar::new().hardlink("h", &abs).finish();
    s.refused(&[l], &s.opts(), "does not exist");
    let l = Tar::new()
        .symlink("s", "../../../../../../victim")
        .hardlink("h", "s/secret")
        .finish();
    s.refused(&[l], &s.opts(), "climbs above the rootfs");
    // A hardlink to a symlink links the symlink itself; writing the same
    // name later replaces it and never writes through it.
    let l = Tar::new()
        .symlink("s", &abs)
        .hardlink("h", "s")
        .file("h", 0o644, b"pwned")
        .finish();
    let root = s.contained(&[l], &s.opts());
    assert_eq!(fs::read(root.join("h")).unwrap(), b"pwned");
}

#[test]
fn entries_named_dot_are_refused() {
    let s = Sandbox::new();
    let l = Tar::new().symlink(".", "/").finish();
    s.refused(&[l], &s.opts(), "named '.'");
    let l = Tar::new()
        .dir("d/", 0o755)
        .symlink("d/.", "../../../victim")
        .finish();
    s.refused(&[l], &s.opts(), "named '.'");
}

#[test]
fn device_nodes_and_fifos_follow_policy() {
    let s = Sandbox::new();
    let mut r = Raw::new(b"dev/mem", b'3');
    r.major = 1;
    r.minor = 1;
    let dev = Tar::new().header(&r).finish();
    s.refused(
        std::slice::from_ref(&dev),
        &s.opts(),
        "device nodes are refused",
    );
    let fifo = Tar::new().header(&Raw::new(b"p", b'6')).finish();
    s.refused(&[fifo], &s.opts(), "fifos are refused");
    if !berth_tests::is_root() {
        return;
    }
    let mut opts = s.opts();
    opts.policy.allow_devices = true;
    let root = s.contained(&[dev], &opts);
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = fs::symlink_metadata(root.join("dev/mem")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), 0x101);
}

#[test]
fn setuid_bits_and_file_capabilities_are_stripped() {
    use std::os::unix::fs::PermissionsExt;
    let s = Sandbox::new();
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l = Tar::new()
        .file("suid", 0o4755, b"x")
        .file("sgid", 0o2755, b"x")
        .pax(&[("SCHILY.xattr.security.capability", cap)])
        .file("capped", 0o755, b"x")
        .finish();
    let before = s.outside();
    let out = s.unpack(std::slice::from_ref(&l), &s.opts()).unwrap();
    assert_eq!(before, s.outside());
    assert_eq!(out.stats.stripped, 3);
    let root = s.dest().join("rootfs");
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("suid"), mode("sgid")), (0o755, 0o755));
    let caps = Command::new("getfattr")
        .args(["-n", "security.capability"])
        .arg(root.join("capped"))
        .output();
    if let Ok(o) = caps {
        assert!(!o.status.success(), "security.capability was kept");
    }
    if !berth_tests::is_root() {
        return;
    }
    let s = Sandbox::new();
    let mut opts = s.opts();
    opts.policy = Policy {
        allow_setid: true,
        allow_file_caps: true,
        allow_devices: false,
    };
    let root = s.contained(&[l], &opts);
    assert_eq!(
        fs::metadata(root.join("suid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
}

#[test]
fn whiteouts_apply_inside_and_never_through_symlinks() {
    let s = Sandbox::new();
    let l1 = Tar::new()
        .dir("a/", 0o755)
        .file("a/x", 0o644, b"x")
        .file("a/y", 0o644, b"y")
        .dir("o/", 0o755)
        .file("o/old", 0o644, b"old")
        .finish();
    let l2 = Tar::new()
        .file("a/.wh.x", 0o644, b"")
        .dir("o/", 0o755)
        .file("o/new", 0o644, b"new")
        .file("o/.wh..wh..opq", 0o644, b"")
        .finish();
    let root = s.contained(&[l1, l2], &s.opts());
    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(root.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("a"), ["y"]);
    assert_eq!(names("o"), ["new"]);

    let s = Sandbox::new();
    let l1 = Tar::new().symlink("rel", "../../victim").finish();
    let l2 = Tar::new().file("rel/.wh.secret", 0o644, b"").finish();
    s.refused(&[l1, l2], &s.opts(), "never applied through symlinks");
    let l1 = Tar::new().symlink("abs", &s.victim()).finish();
    let l2 = Tar::new().file("abs/.wh.secret", 0o644, b"").finish();
    s.refused(&[l1, l2], &s.opts(), "never applied through symlinks");
    let l = Tar::new().file("../.wh.victim", 0o644, b"").finish();
    s.refused(&[l], &s.opts(), "contains '..'");
    let l = Tar::new().file("a/.wh..", 0o644, b"").finish();
    s.refused(&[l], &s.opts(), "a whiteout that names nothing");
}

#[test]
fn decompression_bomb_hits_the_size_cap() {
    let s = Sandbox::new();
    let big = vec![0u8; 32 << 20];
    let layer = gzip(&Tar::new().file("zeros", 0o644, &big).finish());
    assert!(layer.len() < 1 << 20, "the bomb compresses well");
    let mut opts = s.opts();
    opts.limits.max_bytes = 8 << 20;
    s.refused(&[layer], &opts, "total uncompressed size exceeds the limit");
}

#[test]
fn entry_count_path_length_and_header_size_are_capped() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    for i in 0..200 {
        t.file(&format!("f{i}"), 0o644, b"");
    }
    let mut opts = s.opts();
    opts.limits = Limits {
        max_entries: 100,
        ..Limits::default()
    };
    s.refused(&[t.finish()], &opts, "number of entries exceeds the limit");

    let long = "d/".repeat(3000) + "f";
    let l = Tar::new()
        .pax(&[("path", long.as_bytes())])
        .file("short", 0o644, b"")
        .finish();
    s.refused(&[l], &s.opts(), "entry path length exceeds the limit");

    // A pax header declaring 4 GiB: refused before anything is allocated.
    let mut r = Raw::new(b"PaxHeader", b'x');
    r.size = 4 << 30;
    let l = Tar::new().header(&r).finish();
    s.refused(&[l], &s.opts(), "extended header size exceeds the limit");
}

#[test]
fn truncated_and_non_tar_input_is_an_error() {
    let s = Sandbox::new();
    let full = Tar::new().file("a", 0o644, &[7u8; 5000]).finish();
    s.refused(&[full[..3000].to_vec()], &s.opts(), "truncated");
    s.refused(&[full[..512 + 5120].to_vec()], &s.opts(), "end-of-archive");
    s.refused(&[vec![0x42u8; 4096]], &s.opts(), "not a tar archive");
    let gz = gzip(&full);
    s.refused(
        &[gz[..gz.len() / 2].to_vec()],
        &s.opts(),
        "cannot read the layer stream",
    );
    s.refused(&[Vec::new()], &s.opts(), "end-of-archive");
}

#[test]
fn cli_refuses_a_bad_layer_with_the_reason() {
    let s = Sandbox::new();
    let layer = s.path().join("evil.tar.gz");
    fs::write(
        &layer,
        gzip(
            &Tar::new()
                .symlink("up", "../../../../../../victim")
                .file("up/secret", 0o644, b"pwned")
                .finish(),
        ),
    )
    .unwrap();
    let before = listing_except(s.path(), &[s.dest(), layer.clone()]);
    let o = run(Command::new(bin("berth"))
        .args(["image", "unpack"])
        .arg(&layer)
        .arg(s.dest()));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("entry 'up/secret'") && text(&o).contains("climbs above the rootfs"),
        "{}",
        text(&o)
    );
    assert_eq!(before, listing_except(s.path(), &[s.dest(), layer]));
    assert!(!s.dest().exists());
}
