use super::document::Arch;
use super::validate::{applies, from_json, from_toml, Applies, DeviceIdentity, ReleaseError};

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn doc(workload_extra: &str) -> String {
    format!(
        r#"schema = 1
fleet = "pumps"
generation = 3
[[workloads]]
name = "sensor"
image = {{ registry = "r.example:5000", repository = "berth/sensor", digests = {{ amd64 = "{D}" }} }}
{workload_extra}
"#
    )
}

fn problems(text: &str) -> Vec<String> {
    match from_toml("release.toml", text) {
        Ok(_) => vec![],
        Err(ReleaseError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(ReleaseError::Syntax { problem, .. }) => vec![format!("syntax {problem}")],
    }
}

#[test]
fn a_minimal_document_parses_with_defaults() {
    let r = from_toml("release.toml", &doc("")).unwrap();
    let w = &r.workloads[0];
    assert_eq!(w.resources.memory_mb(), 64);
    assert_eq!(w.health.deadline_s, 30);
    let json = serde_json::to_vec(&r).unwrap();
    assert_eq!(from_json("releases/pumps.json", &json).unwrap(), r);
}

#[test]
fn syntax_errors_name_the_field_path() {
    let p = problems(&doc(r#"resources = { memory_mb = "lots" }"#));
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("syntax workloads[0].resources.memory_mb:"),
        "{p:?}"
    );
    let p = problems(&doc("colour = \"blue\""));
    assert!(
        p[0].contains("workloads[0]") && p[0].contains("colour"),
        "{p:?}"
    );
    let p = problems(&doc(
        r#"health = { check = "uptime", seconds = 3, colour = 1 }"#,
    ));
    assert!(
        p[0].contains("workloads[0].health") && p[0].contains("colour"),
        "{p:?}"
    );
    let bad_digest = doc("").replace(D, "sha256:ABC");
    let p = problems(&bad_digest);
    assert!(
        p[0].contains("workloads[0].image.digests") && p[0].contains("64 hex"),
        "{p:?}"
    );
    let json = br#"{"schema":1,"fleet":"f","generation":1,"workloads":[{"name":"../x"}]}"#;
    let e = from_json("releases/f.json", json).unwrap_err().to_string();
    assert!(
        e.contains("releases/f.json") && e.contains("workloads[0].name"),
        "{e}"
    );
}

#[test]
fn semantic_errors_are_all_listed_with_paths() {
    let text = doc(r#"user = "root"
volumes = [{ name = "v", path = "/data/../etc" }]
devices = ["/etc/passwd"]
health = { check = "tcp", port = 8080 }
after = ["nobody"]"#)
    .replace("generation = 3", "generation = 0");
    let p = problems(&text);
    for want in [
        "generation:",
        "workloads[0].user:",
        "workloads[0].volumes[0].path:",
        "workloads[0].devices[0]:",
        "workloads[0].health: tcp and http checks probe the host network",
        "workloads[0].after[0]: no workload named \"nobody\"",
    ] {
        assert!(
            p.iter().any(|x| x.starts_with(want)),
            "missing {want} in {p:#?}"
        );
    }
}

#[test]
fn duplicate_names_and_cycles_are_refused() {
    let mut text = doc("after = [\"relay\"]");
    text.push_str(&format!(
        "[[workloads]]\nname = \"relay\"\nimage = {{ registry = \"r\", repository = \"x\", digests = {{ amd64 = \"{D}\" }} }}\nafter = [\"sensor\"]\n"
    ));
    let p = problems(&text);
    assert!(p.iter().any(|x| x.contains("cycle through")), "{p:?}");
    let mut text = doc("");
    text.push_str(&format!(
        "[[workloads]]\nname = \"sensor\"\nimage = {{ registry = \"r\", repository = \"x\", digests = {{ amd64 = \"{D}\" }} }}\n"
    ));
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|x| x.starts_with("workloads[1].name: workload \"sensor\" is defined twice")),
        "{p:?}"
    );
}

#[test]
fn unsupported_schema_says_what_to_do() {
    let p = problems(&doc("").replace("schema = 1", "schema = 3"));
    assert!(p[0].contains("upgrade the agent"), "{p:?}");
}

fn sealed() -> String {
    let k = age::x25519::Identity::generate();
    crate::secrets::seal(b"pw", &[k.to_public()]).unwrap()
}

fn with_secret(workload_extra: &str, sealed: &str, digest: &str) -> String {
    format!(
        "{}\n[[secrets]]\nname = \"db-password\"\ndigest = \"{digest}\"\nsealed = \"\"\"{sealed}\"\"\"\n",
        doc(workload_extra).replace("schema = 1", "schema = 2")
    )
}

#[test]
fn secrets_need_schema_2_a_matching_digest_and_a_definition() {
    let s = sealed();
    let d = crate::secrets::digest(&s);
    let uses = r#"secrets = [{ name = "db-password" }]"#;
    let r = from_toml("release.toml", &with_secret(uses, &s, &d)).unwrap();
    assert_eq!(r.workloads[0].secrets[0].name.as_str(), "db-password");
    // The JSON form round-trips.
    let json = serde_json::to_vec(&r).unwrap();
    assert_eq!(from_json("releases/pumps.json", &json).unwrap(), r);

    let p = problems(&with_secret(uses, &s, &d).replace("schema = 2", "schema = 1"));
    assert!(
        p.iter()
            .any(|x| x.starts_with("schema: sealed secrets need schema = 2")),
        "{p:?}"
    );
    let other = format!("sha256:{}", "0".repeat(64));
    let p = problems(&with_secret(uses, &s, &other));
    assert!(
        p.iter()
            .any(|x| x.starts_with("secrets[0].digest: is not the digest of `sealed`")),
        "{p:?}"
    );
    let p = problems(&with_secret(
        r#"secrets = [{ name = "api-token" }]"#,
        &s,
        &d,
    ));
    assert!(
        p.iter()
            .any(|x| x.starts_with("workloads[0].secrets[0].name: no secret named \"api-token\"")),
        "{p:?}"
    );
    let p = problems(&with_secret(
        r#"secrets = [{ name = "db-password" }]
volumes = [{ name = "x", path = "/run/secrets" }]"#,
        &s,
        &d,
    ));
    assert!(
        p.iter()
            .any(|x| x.starts_with("workloads[0].volumes: /run/secrets")),
        "{p:?}"
    );
    let p = problems(&with_secret(
        uses,
        "plain text",
        &crate::secrets::digest("plain text"),
    ));
    assert!(
        p.iter()
            .any(|x| x.starts_with("secrets[0].sealed: must be an ASCII-armoured age file")),
        "{p:?}"
    );
}

#[test]
fn a_release_applies_only_to_its_fleet_devices_and_architectures() {
    let r = from_toml("release.toml", &doc("")).unwrap();
    let me = DeviceIdentity {
        fleet: "pumps".into(),
        device: "gw-1".into(),
        arch: Arch::Amd64,
    };
    assert_eq!(applies(&r, &me), Applies::Yes);
    let other = DeviceIdentity {
        fleet: "fans".into(),
        ..me.clone()
    };
    assert_eq!(applies(&r, &other), Applies::OtherFleet("pumps".into()));
    let arm = DeviceIdentity {
        arch: Arch::Arm64,
        ..me.clone()
    };
    assert!(matches!(
        applies(&r, &arm),
        Applies::NoImageFor(Arch::Arm64, _)
    ));
    let mut only = r.clone();
    only.devices = vec!["gw-2".into()];
    assert_eq!(applies(&only, &me), Applies::OtherDevices);
}

#[test]
fn a_secret_as_a_variable_is_opt_in_and_checked_with_its_path() {
    let s = sealed();
    let d = crate::secrets::digest(&s);
    let ok = r#"secrets = [{ name = "db-password", env = "DB_PASSWORD" }]"#;
    let r = from_toml("release.toml", &with_secret(ok, &s, &d)).unwrap();
    assert_eq!(
        r.workloads[0].secrets[0].env.as_deref(),
        Some("DB_PASSWORD")
    );
    let json = serde_json::to_vec(&r).unwrap();
    assert_eq!(from_json("releases/pumps.json", &json).unwrap(), r);
    // Without `env` the JSON form is what it was (older agents read it).
    let plain = from_toml(
        "release.toml",
        &with_secret(r#"secrets = [{ name = "db-password" }]"#, &s, &d),
    )
    .unwrap();
    let text = String::from_utf8(serde_json::to_vec(&plain).unwrap()).unwrap();
    assert!(
        text.contains(r#""secrets":[{"name":"db-password"}]"#),
        "{text}"
    );
    for (extra, want) in [
        (
            r#"secrets = [{ name = "db-password", env = "1PASS" }]"#,
            "workloads[0].secrets[0].env: \"1PASS\" is not a variable name",
        ),
        (
            r#"secrets = [{ name = "db-password", env = "DB-PASS" }]"#,
            "workloads[0].secrets[0].env: \"DB-PASS\" is not a variable name",
        ),
        (
            r#"secrets = [{ name = "db-password", env = "LEVEL" }]
env = { LEVEL = "info" }"#,
            "workloads[0].secrets[0].env: LEVEL is also set in workloads[0].env",
        ),
        (
            r#"secrets = [{ name = "db-password", env = "PW" }, { name = "other", env = "PW" }]"#,
            "workloads[0].secrets[1].env: PW receives two secrets",
        ),
        (
            r#"secrets = [{ name = "api-token", env = "TOKEN" }]"#,
            "workloads[0].secrets[0].name: no secret named \"api-token\"",
        ),
    ] {
        let p = problems(&with_secret(extra, &s, &d));
        assert!(p.iter().any(|x| x.starts_with(want)), "{want}: {p:?}");
    }
    let e = from_toml(
        "release.toml",
        &with_secret(r#"secrets = [{ name = "db-password", var = "X" }]"#, &s, &d),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("workloads[0].secrets[0]") && e.contains("var"),
        "{e}"
    );
}
