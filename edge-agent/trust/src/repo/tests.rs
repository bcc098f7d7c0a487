use super::*;
use crate::keys::KeyType;
use crate::store::DirStore;
use crate::transport::DirTransport;
use crate::updater::{Config, Updater};

fn spec(k: &PrivateKey) -> RoleSpec {
    RoleSpec {
        keys: vec![k.public()],
        threshold: 1,
    }
}

#[test]
fn init_publish_delegate_and_our_client_accepts_it() {
    let d = tempfile::tempdir().unwrap();
    let root = PrivateKey::generate(KeyType::Ed25519);
    let online = PrivateKey::generate(KeyType::EcdsaP256);
    let targets = PrivateKey::generate(KeyType::Ed25519);
    let team = PrivateKey::generate(KeyType::EcdsaP256);
    let mut roles = BTreeMap::new();
    roles.insert("root".to_string(), spec(&root));
    roles.insert("timestamp".to_string(), spec(&online));
    roles.insert("snapshot".to_string(), spec(&online));
    roles.insert("targets".to_string(), spec(&targets));
    let (repo, rec) = Repo::init(&d.path().join("repo"), &roles, &[root], 365).unwrap();
    assert_eq!(rec.version, 1);
    repo.delegate(
        "targets",
        "team",
        &spec(&team),
        &["releases/*".into()],
        true,
    )
    .unwrap();
    let f = d.path().join("a.json");
    std::fs::write(&f, b"{\"release\":1}").unwrap();
    repo.add_target("team", "releases/a.json", &f, None)
        .unwrap();
    let signers = vec![online, targets, team];
    let recs = publish(&repo, &signers, Default::default()).unwrap();
    let names: Vec<&str> = recs.iter().map(|r| r.role.as_str()).collect();
    assert_eq!(names, ["targets", "team", "snapshot", "timestamp"]);
    assert!(publish(&repo, &signers, Default::default())
        .unwrap()
        .is_empty());
    let ts = refresh_timestamp(&repo, &signers, 1).unwrap();
    assert_eq!(ts.version, 2);

    let state = DirStore::open(&d.path().join("state")).unwrap();
    crate::updater::init(
        &state,
        &std::fs::read(repo.metadata_dir().join("1.root.json")).unwrap(),
    )
    .unwrap();
    let mt = DirTransport::new(&repo.metadata_dir());
    let tt = DirTransport::new(&repo.targets_dir());
    let mut up = Updater::new(&state, &mt, Some(&tt), Config::default(), Utc::now()).unwrap();
    up.refresh().unwrap();
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let p = up.download("releases/a.json", &out).unwrap();
    assert_eq!(std::fs::read(p).unwrap(), b"{\"release\":1}");
    assert!(matches!(
        up.target_info("releases/b.json"),
        Err(crate::updater::UpdateError::TargetNotFound { .. })
    ));
}

#[test]
fn rotation_needs_old_and_new_root_keys() {
    let d = tempfile::tempdir().unwrap();
    let old = PrivateKey::generate(KeyType::Ed25519);
    let new = PrivateKey::generate(KeyType::Ed25519);
    let mut roles = BTreeMap::new();
    for r in ["root", "timestamp", "snapshot", "targets"] {
        roles.insert(r.to_string(), spec(&old));
    }
    let (repo, _) = Repo::init(d.path(), &roles, std::slice::from_ref(&old), 365).unwrap();
    let mut changes = BTreeMap::new();
    changes.insert("root".to_string(), spec(&new));
    let err = rotate_root(&repo, &changes, std::slice::from_ref(&new), 365).unwrap_err();
    assert!(err.to_string().contains("previous keys"), "{err}");
    let rec = rotate_root(&repo, &changes, &[old, new], 365).unwrap();
    assert_eq!((rec.version, rec.keyids.len()), (2, 2));
    assert!(repo.metadata_dir().join("2.root.json").exists());
}

/// A repository in `dir/repo` whose four roles share one key.
fn one_key_repo(dir: &std::path::Path) -> (Repo, PrivateKey) {
    let k = PrivateKey::generate(KeyType::Ed25519);
    let mut roles = BTreeMap::new();
    for r in ["root", "timestamp", "snapshot", "targets"] {
        roles.insert(r.to_string(), spec(&k));
    }
    let (repo, _) = Repo::init(&dir.join("repo"), &roles, std::slice::from_ref(&k), 365).unwrap();
    (repo, k)
}

/// A client's state store in `dir/state` that trusts `repo`'s first root.
fn client_state(dir: &std::path::Path, repo: &Repo) -> DirStore {
    let state = DirStore::open(&dir.join("state")).unwrap();
    let root = std::fs::read(repo.metadata_dir().join("1.root.json")).unwrap();
    crate::updater::init(&state, &root).unwrap();
    state
}

/// targets delegates `releases/*` to `first` (which does not list the target), then to
/// `second` (which does). Returns the lookup result with the given settings.
fn search(terminating: bool, max_delegations: usize) -> Result<(), crate::updater::UpdateError> {
    let d = tempfile::tempdir().unwrap();
    let (repo, k) = one_key_repo(d.path());
    let f = d.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    repo.delegate(
        "targets",
        "first",
        &spec(&k),
        &["releases/*".into()],
        terminating,
    )
    .unwrap();
    repo.add_target("first", "releases/other.json", &f, None)
        .unwrap();
    repo.delegate(
        "targets",
        "second",
        &spec(&k),
        &["releases/*".into()],
        false,
    )
    .unwrap();
    repo.add_target("second", "releases/a.json", &f, None)
        .unwrap();
    publish(&repo, std::slice::from_ref(&k), Default::default()).unwrap();
    let state = client_state(d.path(), &repo);
    let mt = DirTransport::new(&repo.metadata_dir());
    let config = Config {
        max_delegations,
        ..Config::default()
    };
    let mut up = Updater::new(&state, &mt, None, config, Utc::now()).unwrap();
    up.target_info("releases/a.json").map(|_| ())
}

#[test]
fn delegation_search_is_preorder_with_terminating_roles_and_a_cap() {
    search(false, 32).unwrap();
    assert!(
        search(true, 32).is_err(),
        "a terminating delegation ends the search"
    );
    assert!(search(false, 2).is_err(), "targets and first only");
    search(false, 3).unwrap();
}

/// Every file below `dir` whose name ends with `suffix`.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_ending(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_streamed_target_replaces_its_destination_only_when_length_and_hashes_match() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let (repo, k) = one_key_repo(d.path());
    let good: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let src = d.path().join("agent");
    std::fs::write(&src, &good).unwrap();
    repo.add_target("targets", "agent/berth-agent-amd64", &src, None)
        .unwrap();
    publish(&repo, std::slice::from_ref(&k), Default::default()).unwrap();
    let state = client_state(d.path(), &repo);
    let mt = DirTransport::new(&repo.metadata_dir());
    let tt = DirTransport::new(&repo.targets_dir());
    let mut up = Updater::new(&state, &mt, Some(&tt), Config::default(), Utc::now()).unwrap();
    up.refresh().unwrap();
    let served = files_ending(&repo.targets_dir(), "berth-agent-amd64");
    assert_eq!(served.len(), 1, "{served:?}");
    let served = &served[0];
    let slots = d.path().join("slots");
    std::fs::create_dir_all(&slots).unwrap();
    let dest = slots.join("a");
    std::fs::write(&dest, b"the agent before").unwrap();
    let untouched = |why: &str| {
        assert_eq!(std::fs::read(&dest).unwrap(), b"the agent before", "{why}");
        let left: Vec<_> = std::fs::read_dir(&slots)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["a"], "{why}: a temporary file was left");
    };
    let chain = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s += &format!(": {c}");
            cur = c.source();
        }
        s
    };

    // Same length, other bytes: the hash differs.
    let mut other = good.clone();
    other[150_000] ^= 0xff;
    std::fs::write(served, &other).unwrap();
    let e = up
        .download_to("agent/berth-agent-amd64", &dest, 0o755)
        .unwrap_err();
    let msg = chain(&e);
    assert!(
        matches!(e, crate::updater::UpdateError::TargetHash { .. })
            && msg.contains("sha256 is")
            && msg.contains("the signed metadata says"),
        "{msg}"
    );
    untouched("hash mismatch");
    // Longer than signed: refused as soon as the extra bytes arrive.
    let mut longer = good.clone();
    longer.extend_from_slice(b"trailer");
    std::fs::write(served, &longer).unwrap();
    let e = up
        .download_to("agent/berth-agent-amd64", &dest, 0o755)
        .unwrap_err();
    let msg = chain(&e);
    assert!(msg.contains("larger than the 200000-byte cap"), "{msg}");
    untouched("too long");
    // Shorter than signed.
    std::fs::write(served, &good[..100_000]).unwrap();
    let e = up
        .download_to("agent/berth-agent-amd64", &dest, 0o755)
        .unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.contains("length 100000 differs from the declared 200000"),
        "{msg}"
    );
    untouched("too short");
    // A destination directory that cannot be written: nothing changes.
    let e = up
        .download_to("agent/berth-agent-amd64", &d.path().join("absent/a"), 0o755)
        .unwrap_err();
    assert!(chain(&e).contains("cannot write"), "{}", chain(&e));
    untouched("unwritable");

    // The signed bytes: installed, executable.
    std::fs::write(served, &good).unwrap();
    let info = up
        .download_to("agent/berth-agent-amd64", &dest, 0o755)
        .unwrap();
    assert_eq!(info.length, good.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), good);
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    let left: Vec<_> = std::fs::read_dir(&slots)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["a"]);
}
