//! Harness for Berth's end-to-end tests: locates the built binaries, builds
//! the sample images, and runs the runtime the way an operator would.

#![forbid(unsafe_code)]

pub mod agent;
pub mod images;
pub mod mosquitto;
pub mod pki;
pub mod registry;
pub mod token;
pub mod tuf;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary built from this workspace (`cargo build --bins` runs first in `tests/run.sh`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` (tests/run.sh does)",
        p.display()
    );
    p
}

/// Whether the tests run as root (the runtime tests need it on this host).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A temporary directory others can traverse (container roots must reach images).
pub fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// Runs a command and returns its output, failing on a spawn error.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Stdout and stderr as one string, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The probe sample image, built once per test run and never modified;
/// `copy_probe_image` gives a test a copy it may change.
pub fn probe_image() -> &'static Path {
    static IMG: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &IMG.get_or_init(|| {
        let d = open_tempdir();
        let img = d.path().join("probe");
        let o = run(Command::new("sh")
            .arg(workspace().join("images/probe/build.sh"))
            .arg(&img));
        assert!(
            o.status.success(),
            "building the probe image failed: {}",
            text(&o)
        );
        let o = run(Command::new(bin("berth-runtime"))
            .arg("measure")
            .arg("--record")
            .arg(&img));
        assert!(
            o.status.success(),
            "measuring the probe image failed: {}",
            text(&o)
        );
        (d, img)
    })
    .1
}

/// A copy of the probe image (with its recorded measurement) under `dir`.
pub fn copy_probe_image(dir: &Path) -> PathBuf {
    let dest = dir.join("probe");
    let o = run(Command::new("cp").arg("-a").arg(probe_image()).arg(&dest));
    assert!(
        o.status.success(),
        "copying the probe image failed: {}",
        text(&o)
    );
    dest
}

/// The recorded measurement of an image directory.
pub fn measurement(img: &Path) -> String {
    fs::read_to_string(img.join("measurement"))
        .expect("measurement")
        .trim()
        .to_string()
}

/// A runtime state directory for one test, and the commands to drive it.
#[derive(Debug)]
pub struct Rt {
    pub dir: tempfile::TempDir,
}

impl Default for Rt {
    fn default() -> Self {
        Self::new()
    }
}

impl Rt {
    pub fn new() -> Self {
        Self {
            dir: open_tempdir(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `berth-runtime --root ROOT ARGS…`
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin("berth-runtime"));
        c.arg("--root").arg(self.root());
        c
    }

    /// Launches `img` in the foreground with extra flags and an optional command.
    pub fn launch(&self, img: &Path, id: &str, flags: &[&str], args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.arg("launch")
            .arg("--image")
            .arg(img)
            .arg("--measurement")
            .arg(measurement(img));
        c.args(flags).arg(id);
        if !args.is_empty() {
            c.arg("--").args(args);
        }
        run(&mut c)
    }

    /// Whether container `id` holds a range in the machine-wide id table.
    pub fn holds_id_range(&self, id: &str) -> bool {
        let table = berth_runtime::idmap::table_file(&berth_runtime::idmap::table_dir());
        let table = fs::read_to_string(table).unwrap_or_default();
        let root = fs::canonicalize(self.root()).unwrap_or_else(|_| self.root());
        table.contains(&format!("\"{}/{id}\"", root.display()))
    }

    /// Asserts that nothing of container `id` is left: no state, bundle, id
    /// range, cgroup, mount or process.
    pub fn assert_nothing_left(&self, id: &str) {
        let root = self.root();
        assert!(
            !root.join("containers").join(id).exists(),
            "state of {id} left behind"
        );
        assert!(
            !root.join("bundles").join(id).exists(),
            "bundle of {id} left behind"
        );
        assert!(!self.holds_id_range(id), "id range of {id} left behind");
        for ctrl in ["memory", "pids", "cpu", "devices", "freezer"] {
            let cg = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("berth")
                .join(id);
            assert!(!cg.exists(), "cgroup {} left behind", cg.display());
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(
            !mounts.contains(&*root.to_string_lossy()),
            "a mount under {} left behind",
            root.display()
        );
        let root_arg = root.to_string_lossy().into_owned();
        let left: Vec<String> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
            .map(|c| {
                c.split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|args| args.contains(&root_arg) && args.iter().any(|a| a == id))
            .map(|args| args.join(" "))
            .collect();
        assert!(left.is_empty(), "processes of {id} are left: {left:?}");
    }
}

/// The value of `key=` in probe output (first occurrence).
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Skips a test that needs root, saying so.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root (run tests/run.sh as root)");
            return;
        }
    };
}
