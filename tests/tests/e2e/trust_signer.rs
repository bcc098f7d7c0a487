//! Trust: `berth repo` output consumed by python-tuf ngclient.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_tests::tuf::{ngclient, ok, refused, Client, HttpServer};
use berth_tests::{bin, run, text};

fn berth(args: &[&str]) -> Output {
    run(Command::new(bin("berth")).args(args))
}

fn keygen(dir: &Path, name: &str, kind: &str) -> String {
    let p = dir.join(name);
    let o = berth(&[
        "key",
        "generate",
        "--type",
        kind,
        "--out",
        p.to_str().unwrap(),
    ]);
    ok(&o);
    p.to_str().unwrap().to_string()
}

struct Keys {
    root: String,
    root2: String,
    online: String,
    online2: String,
    targets: String,
    team: String,
}

fn setup(tmp: &Path) -> (PathBuf, Keys) {
    let k = Keys {
        root: keygen(tmp, "root", "ed25519"),
        root2: keygen(tmp, "root2", "p256"),
        online: keygen(tmp, "online", "p256"),
        online2: keygen(tmp, "online2", "ed25519"),
        targets: keygen(tmp, "targets", "ed25519"),
        team: keygen(tmp, "team", "p256"),
    };
    let repo = tmp.join("repo");
    let r = repo.to_str().unwrap();
    let o = berth(&[
        "repo",
        "init",
        r,
        "--root-key",
        &k.root,
        "--timestamp-key",
        &format!("{}.pub", k.online),
        "--snapshot-key",
        &format!("{}.pub", k.online),
        "--targets-key",
        &format!("{}.pub", k.targets),
    ]);
    ok(&o);
    assert!(
        text(&o).contains("signed root v1 with 1 key(s)"),
        "{}",
        text(&o)
    );
    let rel = tmp.join("fleet-a.json");
    fs::write(&rel, b"{\"workloads\": []}\n").unwrap();
    ok(&berth(&[
        "repo",
        "delegate",
        r,
        "--to",
        "fleets",
        "--key",
        &format!("{}.pub", k.team),
        "--path",
        "releases/*",
        "--terminating",
    ]));
    ok(&berth(&[
        "repo",
        "add-target",
        r,
        "--role",
        "fleets",
        "--path",
        "releases/fleet-a.json",
        "--file",
        rel.to_str().unwrap(),
    ]));
    ok(&berth(&[
        "repo",
        "add-target",
        r,
        "--path",
        "readme.txt",
        "--file",
        rel.to_str().unwrap(),
    ]));
    let o = berth(&[
        "repo", "publish", r, "--key", &k.online, "--key", &k.targets, "--key", &k.team,
    ]);
    ok(&o);
    for line in [
        "signed fleets v1",
        "signed targets v1",
        "signed snapshot v1",
        "signed timestamp v1",
    ] {
        assert!(text(&o).contains(line), "{line}: {}", text(&o));
    }
    (repo, k)
}

#[test]
fn ngclient_accepts_a_berth_repository_through_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, k) = setup(tmp.path());
    let r = repo.to_str().unwrap();
    let server = HttpServer::serve(&repo);
    let root1 = repo.join("metadata/1.root.json");
    let o = ngclient(
        tmp.path(),
        &root1,
        &server,
        &["releases/fleet-a.json", "readme.txt"],
    );
    ok(&o);
    assert!(text(&o).contains(r#""root": 1"#), "{}", text(&o));
    let got = fs::read(tmp.path().join("ng-targets/releases%2Ffleet-a.json")).unwrap();
    assert_eq!(got, b"{\"workloads\": []}\n");

    // Rotate the root key (P-256 now) and the online key, republish, refresh the timestamp.
    let o = berth(&[
        "repo",
        "rotate-root",
        r,
        "--root-key",
        &format!("{}.pub", k.root2),
        "--timestamp-key",
        &format!("{}.pub", k.online2),
        "--snapshot-key",
        &format!("{}.pub", k.online2),
        "--sign",
        &k.root,
        "--sign",
        &k.root2,
    ]);
    ok(&o);
    assert!(
        text(&o).contains("signed root v2 with 2 key(s)"),
        "{}",
        text(&o)
    );
    let rel = tmp.path().join("fleet-b.json");
    fs::write(&rel, b"{\"workloads\": [1]}\n").unwrap();
    ok(&berth(&[
        "repo",
        "add-target",
        r,
        "--role",
        "fleets",
        "--path",
        "releases/fleet-b.json",
        "--file",
        rel.to_str().unwrap(),
    ]));
    ok(&berth(&[
        "repo", "publish", r, "--key", &k.online2, "--key", &k.team,
    ]));
    let o = berth(&["repo", "refresh-timestamp", r, "--key", &k.online2]);
    ok(&o);
    assert!(text(&o).contains("signed timestamp v3"), "{}", text(&o));
    let o = ngclient(tmp.path(), &root1, &server, &["releases/fleet-b.json"]);
    ok(&o);
    assert!(
        text(&o).contains(r#""root": 2, "timestamp": 3, "snapshot": 2"#),
        "{}",
        text(&o)
    );

    // Our own client agrees.
    let client = Client::new();
    ok(&client.init(&root1));
    ok(&client.download(&server, &["releases/fleet-b.json", "readme.txt"]));
    assert_eq!(client.version("root"), 2);
}

#[test]
fn private_keys_are_private_and_signing_needs_the_right_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, k) = setup(tmp.path());
    let mode = fs::metadata(&k.root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let r = repo.to_str().unwrap();
    let o = berth(&["key", "generate", "--out", &k.root]);
    refused(&o, &["must not exist"]);
    // The targets key cannot sign the timestamp.
    let o = berth(&["repo", "refresh-timestamp", r, "--key", &k.targets]);
    refused(
        &o,
        &["timestamp: 0 of the given keys may sign it, threshold is 1"],
    );
    // A root rotation without the old root key is refused before anything is written.
    let o = berth(&[
        "repo",
        "rotate-root",
        r,
        "--root-key",
        &format!("{}.pub", k.root2),
        "--sign",
        &k.root2,
    ]);
    refused(&o, &["root (previous keys)"]);
    assert!(!repo.join("metadata/2.root.json").exists());
    // The repository directory works as an offline bundle for `berth tuf`.
    let client = Client::new();
    ok(&client.init(&repo.join("metadata/1.root.json")));
    let o = run(Command::new(bin("berth"))
        .arg("tuf")
        .arg("--metadata-dir")
        .arg(client.metadata_dir())
        .arg("--metadata-url")
        .arg(repo.join("metadata"))
        .args([
            "--target-name",
            "releases/fleet-a.json",
            "--target-base-url",
        ])
        .arg(repo.join("targets"))
        .arg("--target-dir")
        .arg(client.target_dir())
        .arg("download"));
    ok(&o);
    assert!(client.target_dir().join("releases%2Ffleet-a.json").exists());
    // Nothing staged: publish says so and signs nothing.
    let o = berth(&["repo", "publish", r, "--key", &k.online]);
    ok(&o);
    assert!(text(&o).contains("nothing changed"), "{}", text(&o));
}
