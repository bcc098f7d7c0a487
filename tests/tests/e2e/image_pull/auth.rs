//! Bearer-token auth end to end: a Distribution registry with `auth: token:`
//! that only accepts ES256 JWTs its token service signs (x5c chain checked
//! against the registry's rootcertbundle), and that token service as a real
//! HTTPS server granting each user its own actions.

use std::fs;
use std::path::Path;
use std::process::Command;

use berth_tests::agent::{sensor_workload, Device, Fleet};
use berth_tests::registry::{Proxy, Registry, USER};
use berth_tests::token::{READER, READER_PASSWORD};
use berth_tests::{bin, open_tempdir, run, text};

use super::*;

fn token_env() -> Env {
    let dir = open_tempdir();
    let reg = Registry::start_token(&dir.path().join("registry"));
    Env { dir, reg }
}

impl Env {
    fn tokens(&self) -> &berth_tests::token::TokenService {
        self.reg.token.as_ref().expect("a token registry")
    }

    /// Tokens issued so far whose scopes name `repo`, for `user`.
    fn issued_for(&self, user: &str, repo: &str) -> Vec<serde_json::Value> {
        self.tokens()
            .issued()
            .into_iter()
            .filter(|t| t["user"] == user && t["scope"].to_string().contains(repo))
            .collect()
    }
}

#[test]
fn push_and_pull_through_the_token_service() {
    berth_tests::require_root!();
    let e = token_env();
    let lay = umoci_image(
        &e.p("layout"),
        &[
            noise_layer(e.dir.path(), "a", 61, 1),
            noise_layer(e.dir.path(), "b", 62, 1),
            noise_layer(e.dir.path(), "c", 63, 1),
        ],
    );
    let digest = layout_digest(Path::new(&lay));
    let out = ok(&run(&mut e.push(
        &e.reg.host(),
        Path::new(&lay),
        "tok/app:v1",
    )));
    assert!(out.contains(&format!("digest={digest}")), "{out}");
    assert_eq!(kv(&out, "uploaded_blobs"), 4, "config and 3 layers: {out}");
    let pushed = e.issued_for(USER, "tok/app");
    assert_eq!(
        pushed.len(),
        1,
        "one token for the whole push (cached per scope): {pushed:?}"
    );
    assert!(
        pushed[0]["scope"]
            .to_string()
            .contains("repository:tok/app:pull,push")
            && pushed[0]["access"][0]["actions"] == serde_json::json!(["pull", "push"]),
        "{pushed:?}"
    );

    // The pull answers the registry's challenge once: three layers fetched
    // in parallel share the token of their scope.
    let store = e.p("store");
    let dest = e.p("image");
    let out = ok(&run(e
        .pull(&e.reg.host(), "tok/app", &digest, &store)
        .arg("--unpack")
        .arg(&dest)));
    assert_eq!(kv(&out, "fetched_blobs"), 4, "{out}");
    assert!(out.contains("measurement=blake3:"), "{out}");
    assert!(dest.join("rootfs/data/c").is_file());
    let all = e.issued_for(USER, "tok/app");
    assert_eq!(all.len(), 2, "one token for the pull: {all:?}");
    assert!(
        all[1]["scope"] == serde_json::json!(["repository:tok/app:pull"]),
        "{all:?}"
    );
    assert_consistent(&store);

    // skopeo pulls back through the same token service what berth pushed.
    let back = e.p("back");
    ok(&e.reg.skopeo_src(
        "copy",
        &[
            "--preserve-digests",
            &format!("docker://{}/tok/app:v1", e.reg.host()),
            &format!("oci:{}:x", back.display()),
        ],
    ));
    assert_eq!(layout_digest(&back), digest);
}

#[test]
fn pull_only_user_cannot_push_and_a_wrong_password_names_the_realm() {
    berth_tests::require_root!();
    let e = token_env();
    let lay = umoci_image(&e.p("layout"), &[noise_layer(e.dir.path(), "a", 64, 1)]);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "tok/ro");
    let host = e.reg.host();
    let realm = e.tokens().realm();

    // The reader may pull…
    let store = e.p("store");
    let out = ok(&run(&mut e.pull_as(
        (READER, READER_PASSWORD),
        &host,
        "tok/ro",
        &digest,
        &store,
    )));
    assert_eq!(kv(&out, "fetched_blobs"), 2, "{out}");
    // …but not push: the error names the repository, the action and scope.
    let o = run(&mut e.push_as(
        (READER, READER_PASSWORD),
        &host,
        Path::new(&lay),
        "tok/ro:other",
    ));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("user 'reader' has no push access to repository tok/ro")
            && t.contains("scope repository:tok/ro:pull,push")
            && t.contains(&realm)
            && t.contains("ask the registry's administrator"),
        "{t}"
    );

    // A wrong password: the token service refuses it, and says so.
    let store2 = e.p("store2");
    let o = run(e
        .pull(&host, "tok/ro", &digest, &store2)
        .env("BERTH_REGISTRY_PASSWORD", "wrong"));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "the token service {realm} refused the credentials of user '{USER}' (401)"
        )) && t.contains("check the user and its password"),
        "{t}"
    );
    // No credentials at all: the token service wants them.
    let o = run(Command::new(bin("berth"))
        .args(["image", "pull", "--ca"])
        .arg(e.reg.ca())
        .arg("--store")
        .arg(&store2)
        .arg(format!("{host}/tok/ro@{digest}")));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("the token service {realm} asks for credentials"))
            && t.contains("pass --user and set BERTH_REGISTRY_PASSWORD"),
        "{t}"
    );
    let s = assert_consistent(&store2);
    assert!(
        !s.has(&digest.parse().unwrap()),
        "nothing entered the store"
    );
}

#[test]
fn tokens_that_expire_mid_pull_are_replaced() {
    berth_tests::require_root!();
    let mut e = token_env();
    let layers: Vec<_> = (0..3)
        .map(|i| noise_layer(e.dir.path(), &format!("l{i}"), 70 + i, 2))
        .collect();
    let lay = umoci_image(&e.p("layout"), &layers);
    let digest = e.reg.skopeo_push(Path::new(&lay), "t", "tok/slow");
    // One layer at a time at 1 MiB/s: about 2 s per layer, 6 s in all.
    let proxy = Proxy::start(e.reg.port);
    proxy.throttle(Some(1 << 20));
    let pull = |e: &Env, store: &Path| {
        let mut c = e.pull(&proxy.host(), "tok/slow", &digest, store);
        c.args(["--jobs", "1"]);
        ok(&run(&mut c))
    };

    // The registry stops accepting each token about 3 s after it is issued
    // (60 s of leeway after an `exp` 57 s in the past) although the client
    // is told 300 s: later requests meet a 401 and fetch a new token.
    let before = e.issued_for(USER, "tok/slow").len();
    e.reg.token.as_mut().unwrap().set_lifetime(300, -57);
    let out = pull(&e, &e.p("store1"));
    assert_eq!(kv(&out, "fetched_blobs"), 4, "{out}");
    let refreshed = e.issued_for(USER, "tok/slow").len() - before;
    assert!(
        refreshed >= 2,
        "a token refused mid-pull was replaced: {refreshed} token(s)\n{out}"
    );
    assert_consistent(&e.p("store1"));

    // The service says its tokens last 1 s: the client replaces them before
    // use. The registry would accept each for a minute, so every token after
    // the first is a replacement the client made on its own.
    let before = e.issued_for(USER, "tok/slow").len();
    e.reg.token.as_mut().unwrap().set_lifetime(1, 1);
    let out = pull(&e, &e.p("store2"));
    let refreshed = e.issued_for(USER, "tok/slow").len() - before;
    assert!(
        refreshed >= 3,
        "short-lived tokens were replaced before they expired: {refreshed} token(s)\n{out}"
    );
    assert_eq!(kv(&out, "fetched_blobs"), 4, "{out}");
    assert_eq!(kv(&out, "refetched_bytes"), 0, "{out}");
}

#[test]
fn agent_pulls_a_release_through_token_auth_with_a_pull_only_account() {
    berth_tests::require_root!();
    let d = open_tempdir();
    let mut fleet = Fleet::start(d.path(), "tokens");
    fleet.registry = Registry::start_token(&d.path().join("token-registry"));
    let mut dev = fleet.device("gw-t");
    // The device holds a pull-only account.
    let cfg = fs::read_to_string(&dev.config).unwrap();
    fs::write(
        &dev.config,
        cfg.replace(
            &format!("user = \"{USER}\""),
            &format!("user = \"{READER}\""),
        ),
    )
    .unwrap();
    fs::write(dev.dir.join("registry-password"), READER_PASSWORD).unwrap();
    dev.start();
    let o = fleet.publish(&fleet.release(1, &sensor_workload("s", "1", 200)));
    assert!(o.status.success(), "publish: {}", text(&o));
    let s = dev.wait_generation(1);
    assert!(Device::pid(&s, "s").is_some(), "{s}");
    let tokens = fleet.registry.token.as_ref().unwrap().issued();
    assert!(
        tokens
            .iter()
            .any(|t| t["user"] == READER && t["scope"].to_string().contains("samples/sensor:pull")),
        "the device pulled with its own token: {tokens:?}"
    );
}
