//! Trust: our TUF client against python-tuf repositories and the attack list.

use std::fs;
use std::time::Duration;

use berth_tests::text;
use berth_tests::tuf::{drip_server, ok, refused, Client, HttpServer, PyRepo};
use berth_trust::chrono::Duration as Days;
use berth_trust::transport::{FetchLimits, HttpTransport};
use berth_trust::updater::{self, Config, UpdateError, Updater};
use berth_trust::{DirStore, DirTransport, StateStore};

/// A python-tuf repository, served, and a client initialised with its first root.
fn setup(args: &[&str]) -> (PyRepo, HttpServer, Client) {
    let repo = PyRepo::init(args);
    let server = HttpServer::serve(&repo.dir());
    let client = Client::new();
    ok(&client.init(&repo.metadata().join("1.root.json")));
    (repo, server, client)
}

#[test]
fn refresh_and_download_with_delegations_and_cache() {
    let (repo, server, client) =
        setup(&["--delegations", "3", "--targets", "2", "--keytype", "ecdsa"]);
    ok(&client.refresh(&server));
    for role in ["root", "timestamp", "snapshot", "targets"] {
        assert_eq!(client.version(role), 1, "{role}");
    }
    let o = client.download(&server, &["files/file-1.txt", "team-2/release.json"]);
    ok(&o);
    let got = fs::read(client.target_dir().join("team-2%2Frelease.json")).unwrap();
    assert_eq!(got, b"{\"team\": 2}\n");
    assert_eq!(client.version("team-2"), 1, "delegated role kept by name");
    assert!(
        !client.metadata_dir().join("team-0.json").exists(),
        "only the roles searched"
    );
    // Present with matching hashes: not fetched again (the served copy is gone).
    fs::remove_file(repo.target_file("files/file-1.txt")).unwrap();
    ok(&client.download(&server, &["files/file-1.txt"]));
    // Targets are downloaded in order and the first failure stops with exit 1.
    let o = client.download(&server, &["team-1/missing.json", "team-0/release.json"]);
    refused(
        &o,
        &["team-1/missing.json", "no trusted targets role lists it"],
    );
    assert!(!client.target_dir().join("team-0%2Frelease.json").exists());
}

#[test]
fn init_rejects_a_root_not_signed_by_its_own_keys() {
    let repo = PyRepo::init(&[]);
    let mut v: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.metadata().join("1.root.json")).unwrap()).unwrap();
    v["signed"]["version"] = 7.into();
    let forged = repo.tmp.path().join("forged.json");
    fs::write(&forged, v.to_string()).unwrap();
    let client = Client::new();
    refused(&client.init(&forged), &["root", "threshold is 1"]);
    assert!(!client.metadata_dir().join("root.json").exists());
}

#[test]
fn follows_root_rotations_including_timestamp_key_rotation() {
    let (repo, server, client) = setup(&["--delegations", "1"]);
    ok(&client.refresh(&server));
    repo.run(&["rotate-root", "--rotate", "root"]);
    repo.run(&["rotate-root", "--rotate", "timestamp", "snapshot"]);
    ok(&client.download(&server, &["team-0/release.json"]));
    assert_eq!(client.version("root"), 3);
    assert_eq!(client.version("snapshot"), 2);
}

#[test]
fn arbitrary_installation_is_refused() {
    let (repo, server, client) = setup(&[]);
    let served = repo.target_file("files/file-0.txt");
    fs::write(&served, b"content 0\nevil").unwrap();
    refused(
        &client.download(&server, &["files/file-0.txt"]),
        &["files/file-0.txt", "larger than"],
    );
    fs::write(&served, b"content X\n").unwrap();
    refused(
        &client.download(&server, &["files/file-0.txt"]),
        &["sha256", "signed metadata says"],
    );
    assert!(!client.target_dir().join("files%2Ffile-0.txt").exists());
}

#[test]
fn rollback_is_refused_also_after_restoring_an_old_state_store() {
    let (repo, server, client) = setup(&[]);
    let ts1 = fs::read(repo.metadata().join("timestamp.json")).unwrap();
    repo.run(&["publish", "targets"]);
    ok(&client.refresh(&server));
    assert_eq!(client.version("timestamp"), 2);
    let saved = repo.tmp.path().join("saved-state");
    fs::create_dir_all(&saved).unwrap();
    for e in fs::read_dir(client.metadata_dir()).unwrap().flatten() {
        fs::copy(e.path(), saved.join(e.file_name())).unwrap();
    }
    repo.run(&["publish", "targets"]);
    ok(&client.refresh(&server));
    assert_eq!(client.version("timestamp"), 3);
    let ts3 = fs::read(repo.metadata().join("timestamp.json")).unwrap();

    fs::write(repo.metadata().join("timestamp.json"), &ts1).unwrap();
    refused(
        &client.refresh(&server),
        &["timestamp", "version 1 is older than the trusted version 3"],
    );
    assert_eq!(client.version("timestamp"), 3, "trusted state unchanged");

    // The device's state store is restored from an old backup (timestamp 2): a replay
    // older than that backup is still refused, the current metadata accepted.
    for e in fs::read_dir(&saved).unwrap().flatten() {
        fs::copy(e.path(), client.metadata_dir().join(e.file_name())).unwrap();
    }
    refused(
        &client.refresh(&server),
        &["version 1 is older than the trusted version 2"],
    );
    fs::write(repo.metadata().join("timestamp.json"), &ts3).unwrap();
    ok(&client.refresh(&server));
    assert_eq!(client.version("timestamp"), 3);
}

#[test]
fn fast_forward_attack_is_recovered_by_rotating_the_timestamp_key() {
    let (repo, server, client) = setup(&[]);
    // The attacker holds the timestamp key and pushes version 1000.
    repo.run(&["timestamp", "--version", "1000"]);
    ok(&client.refresh(&server));
    assert_eq!(client.version("timestamp"), 1000);
    // The repository rotates the timestamp key; its timestamp versions continue low.
    repo.run(&["rotate-root", "--rotate", "timestamp"]);
    repo.run(&["timestamp", "--version", "2"]);
    ok(&client.refresh(&server));
    assert_eq!(client.version("timestamp"), 2);
}

#[test]
fn freeze_expired_metadata_is_refused() {
    let (repo, server, client) = setup(&[]);
    ok(&client.refresh(&server));
    repo.run(&["timestamp", "--expires-days", "-1"]);
    refused(&client.refresh(&server), &["timestamp version 2 expired"]);
    assert_eq!(client.version("timestamp"), 1);
}

#[test]
fn freeze_with_the_clock_set_back_is_refused_by_the_time_floor() {
    let repo = PyRepo::init(&[]);
    let state = tempfile::tempdir().unwrap();
    let store = DirStore::open(state.path()).unwrap();
    updater::init(
        &store,
        &fs::read(repo.metadata().join("1.root.json")).unwrap(),
    )
    .unwrap();
    let mt = DirTransport::new(&repo.metadata());
    let now = updater::now();
    Updater::new(&store, &mt, None, Config::default(), now)
        .unwrap()
        .refresh()
        .unwrap();
    // New metadata that expired an hour ago; the device clock is then set back 10 days.
    repo.run(&["timestamp", "--expires-days", "-0.04"]);
    let back = now - Days::days(10);
    let err = Updater::new(&store, &mt, None, Config::default(), back)
        .unwrap()
        .refresh()
        .unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(msg.contains("timestamp version 2 expired"), "{msg}");
    // Without the floor (a fresh store) the set-back clock would have accepted it.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = DirStore::open(fresh_dir.path()).unwrap();
    updater::init(
        &fresh,
        &fs::read(repo.metadata().join("1.root.json")).unwrap(),
    )
    .unwrap();
    Updater::new(&fresh, &mt, None, Config::default(), back)
        .unwrap()
        .refresh()
        .unwrap();
}

#[test]
fn endless_data_is_cut_at_the_cap() {
    let (repo, server, client) = setup(&[]);
    // Valid JSON padded with whitespace beyond the 16 KiB timestamp cap.
    let ts = repo.metadata().join("timestamp.json");
    let mut padded = fs::read(&ts).unwrap();
    padded.extend(std::iter::repeat_n(b' ', 20_000));
    fs::write(&ts, padded).unwrap();
    refused(
        &client.refresh(&server),
        &["timestamp.json", "cap (endless data refused)"],
    );
    repo.run(&["timestamp"]);
    ok(&client.refresh(&server));
    // A target longer than its signed length is cut at that length.
    let f = repo.target_file("files/file-0.txt");
    fs::write(&f, vec![b'x'; 1 << 20]).unwrap();
    refused(
        &client.download(&server, &["files/file-0.txt"]),
        &["10-byte cap"],
    );
}

#[test]
fn slow_retrieval_is_refused() {
    let repo = PyRepo::init(&[]);
    let state = tempfile::tempdir().unwrap();
    let store = DirStore::open(state.path()).unwrap();
    updater::init(
        &store,
        &fs::read(repo.metadata().join("1.root.json")).unwrap(),
    )
    .unwrap();
    let body = fs::read(repo.metadata().join("timestamp.json")).unwrap();
    let port = drip_server(body, Duration::from_millis(50));
    let t = HttpTransport::new(&format!("http://127.0.0.1:{port}"), None, true).unwrap();
    let config = Config {
        limits: FetchLimits {
            max_len: 0,
            deadline: Duration::from_secs(30),
            min_rate: 100,
            grace: Duration::from_millis(500),
        },
        ..Config::default()
    };
    let err = Updater::new(&store, &t, None, config, updater::now())
        .unwrap()
        .refresh()
        .unwrap_err();
    let msg = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        matches!(err, UpdateError::Transport(_)) && msg.contains("slow retrieval refused"),
        "{err}: {msg}"
    );
    assert!(
        store.load("timestamp").unwrap().is_none(),
        "nothing trusted"
    );
}

#[test]
fn extraneous_targets_outside_a_delegation_are_ignored() {
    let (repo, server, client) = setup(&["--delegations", "2"]);
    let f = repo.tmp.path().join("extra");
    fs::write(&f, b"not delegated to team-0").unwrap();
    repo.run(&[
        "add-target",
        "files/extra.txt",
        f.to_str().unwrap(),
        "--role",
        "team-0",
    ]);
    repo.run(&[
        "add-target",
        "team-1/evil.json",
        f.to_str().unwrap(),
        "--role",
        "team-0",
    ]);
    refused(
        &client.download(&server, &["files/extra.txt"]),
        &["files/extra.txt", "no trusted targets role lists it"],
    );
    refused(
        &client.download(&server, &["team-1/evil.json"]),
        &["team-1/evil.json", "no trusted targets role lists it"],
    );
    ok(&client.download(&server, &["team-1/release.json"]));
}

#[test]
fn mix_and_match_is_refused() {
    let (repo, server, client) = setup(&[]);
    repo.run(&["publish", "targets"]);
    fs::copy(
        repo.metadata().join("1.targets.json"),
        repo.metadata().join("2.targets.json"),
    )
    .unwrap();
    refused(
        &client.refresh(&server),
        &[
            "2.targets.json",
            "version 1 differs from version 2 listed in snapshot",
        ],
    );
    assert!(!client.metadata_dir().join("targets.json").exists());
}

#[test]
fn wrong_software_signed_by_an_unauthorized_key_is_refused() {
    let (repo, server, client) = setup(&[]);
    let keys = repo.dir().join("keys");
    fs::copy(keys.join("snapshot-0.pem"), keys.join("targets-0.pem")).unwrap();
    repo.run(&["publish", "targets"]);
    refused(
        &client.refresh(&server),
        &["targets version 2: 0 valid signature(s)", "threshold is 1"],
    );
}

#[test]
fn threshold_and_key_compromise() {
    // 1 of 2 root signatures where 2 are needed.
    let (repo, server, client) = setup(&["--root-keys", "2", "--root-threshold", "2"]);
    repo.run(&["rotate-root", "--sign-with", "1"]);
    let o = client.refresh(&server);
    refused(
        &o,
        &["2.root.json", "1 valid signature(s)", "threshold is 2"],
    );
    assert_eq!(client.version("root"), 1);
    // The same signature twice still counts once.
    let p = repo.metadata().join("2.root.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    let sig = v["signatures"][0].clone();
    v["signatures"] = serde_json::json!([sig.clone(), sig]);
    fs::write(&p, v.to_string()).unwrap();
    refused(
        &client.refresh(&server),
        &["1 valid signature(s)", "threshold is 2"],
    );
    let (repo, server, client) = setup(&[]);
    // A rotation signed only by the new keys (the old root's signature missing).
    repo.run(&["rotate-root", "--rotate", "root", "--no-old-sig"]);
    let o = client.refresh(&server);
    refused(
        &o,
        &[
            "2.root.json",
            "by the trusted root's keys",
            "threshold is 1",
        ],
    );
    assert_eq!(client.version("root"), 1, "{}", text(&o));
}

#[test]
fn https_with_a_custom_ca() {
    let repo = PyRepo::init(&["--delegations", "1"]);
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = berth_tests::tuf::test_pki(pki.path());
    let server = HttpServer::serve_tls(&repo.dir(), &cert, &key);
    let client = Client::new();
    ok(&client.init(&repo.metadata().join("1.root.json")));
    let tuf = |extra: &[&std::ffi::OsStr]| {
        berth_tests::run(
            std::process::Command::new(berth_tests::bin("berth"))
                .arg("tuf")
                .arg("--metadata-dir")
                .arg(client.metadata_dir())
                .args(["--metadata-url", &server.url("metadata")])
                .args(["--target-name", "team-0/release.json"])
                .args(["--target-base-url", &server.url("targets")])
                .arg("--target-dir")
                .arg(client.target_dir())
                .args(extra)
                .arg("download"),
        )
    };
    // The built-in roots do not know the test CA.
    refused(&tuf(&[]), &["2.root.json", "https://localhost"]);
    ok(&tuf(&["--ca-file".as_ref(), ca.as_os_str()]));
    assert!(client.target_dir().join("team-0%2Frelease.json").exists());
    // Plain http to a non-loopback host needs --allow-http.
    let o = berth_tests::run(
        std::process::Command::new(berth_tests::bin("berth"))
            .arg("tuf")
            .arg("--metadata-dir")
            .arg(client.metadata_dir())
            .args([
                "--metadata-url",
                "http://example.invalid/metadata",
                "refresh",
            ]),
    );
    refused(&o, &["plain http is refused"]);
}

#[test]
fn succinct_hash_bin_delegations() {
    let (_repo, server, client) = setup(&["--succinct", "3"]);
    ok(&client.download(&server, &["succinct/a.txt"]));
    assert_eq!(
        fs::read(client.target_dir().join("succinct%2Fa.txt")).unwrap(),
        b"binned\n"
    );
    refused(
        &client.download(&server, &["succinct/b.txt"]),
        &["succinct/b.txt", "no trusted targets role lists it"],
    );
}
