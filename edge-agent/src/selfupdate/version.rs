//! Version ordering of agent builds: a device installs only a build newer
//! than the one it runs, unless the operator allowed a downgrade.
//!
//! `berth agent publish --version X.Y.Z` records the build's semantic
//! version in the TUF target's custom metadata (`{"version": "X.Y.Z"}`),
//! signed with the targets metadata; `--allow-downgrade` adds
//! `"allow_downgrade": true`, the operator's explicit, signed permission to
//! install it over a newer (or the same) version. The running agent's
//! version is the one recorded for its slot when the slot was installed
//! (the signed version it was published with), or, for the installed
//! binary (or a record without one), the version it was built as.
//! Versions compare by semantic-version precedence (build metadata after
//! `+` is ignored, pre-releases order before their release).

use std::cmp::Ordering;

use serde_json::Value;

use super::record::{Record, Slot};

/// This build's own version.
pub const BUILT: &str = env!("CARGO_PKG_VERSION");

/// What the target's signed custom metadata says of the build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offered {
    pub version: Option<String>,
    pub allow_downgrade: bool,
}

impl Offered {
    pub fn from_custom(custom: Option<&Value>) -> Offered {
        Offered {
            version: custom
                .and_then(|c| c["version"].as_str())
                .map(str::to_string),
            allow_downgrade: custom.is_some_and(|c| c["allow_downgrade"] == Value::Bool(true)),
        }
    }
}

/// The version of the agent running from `slot`: its recorded (signed)
/// version when it is a semantic version, else this build's.
pub fn running(record: &Record, slot: Slot) -> String {
    record
        .slots
        .get(&slot)
        .filter(|_| slot != Slot::Installed)
        .and_then(|i| i.version.clone())
        .filter(|v| semver::Version::parse(v).is_ok())
        .unwrap_or_else(|| BUILT.to_string())
}

/// Whether a build may replace the running agent (version `running`);
/// the reason, naming both versions, when not.
pub fn admit(offered: &Offered, running: &str) -> Result<(), String> {
    if offered.allow_downgrade {
        return Ok(());
    }
    let next = "publish a newer version, or allow this one explicitly with \
                `berth agent publish --allow-downgrade`";
    let Some(v) = &offered.version else {
        return Err(format!(
            "it carries no version, so it cannot be known to be newer than the running agent \
             {running}: {next}"
        ));
    };
    let new = semver::Version::parse(v).map_err(|e| {
        format!(
            "its version {v:?} is not a semantic version ({e}), so it cannot be ordered after \
             the running agent {running}: {next}"
        )
    })?;
    let Ok(cur) = semver::Version::parse(running) else {
        return Err(format!(
            "the running agent's version {running:?} is not a semantic version, so agent {v} \
             cannot be ordered after it: {next}"
        ));
    };
    match new.cmp_precedence(&cur) {
        Ordering::Greater => Ok(()),
        Ordering::Equal => Err(format!(
            "agent {v} is not newer than the running agent {running} (the same version): {next}"
        )),
        Ordering::Less => Err(format!(
            "agent {v} is older than the running agent {running}: {next}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selfupdate::record::SlotInfo;

    fn offered(v: Option<&str>, allow: bool) -> Offered {
        Offered {
            version: v.map(str::to_string),
            allow_downgrade: allow,
        }
    }

    #[test]
    fn only_newer_builds_are_admitted_unless_a_downgrade_is_allowed() {
        assert!(admit(&offered(Some("0.2.0"), false), "0.1.0").is_ok());
        assert!(admit(&offered(Some("1.0.0"), false), "1.0.0-rc.1").is_ok());
        let e = admit(&offered(Some("0.0.9"), false), "0.1.0").unwrap_err();
        assert!(
            e.starts_with("agent 0.0.9 is older than the running agent 0.1.0")
                && e.contains("--allow-downgrade"),
            "{e}"
        );
        let e = admit(&offered(Some("0.1.0+other"), false), "0.1.0").unwrap_err();
        assert!(e.contains("not newer") && e.contains("same version"), "{e}");
        let e = admit(&offered(Some("1.0.0-rc.1"), false), "1.0.0").unwrap_err();
        assert!(e.contains("older"), "{e}");
        let e = admit(&offered(None, false), "0.1.0").unwrap_err();
        assert!(
            e.contains("carries no version") && e.contains("0.1.0"),
            "{e}"
        );
        let e = admit(&offered(Some("test"), false), "0.1.0").unwrap_err();
        assert!(e.contains("\"test\" is not a semantic version"), "{e}");
        for v in [Some("0.0.1"), Some("0.1.0"), None, Some("x")] {
            assert!(admit(&offered(v, true), "0.1.0").is_ok());
        }
    }

    #[test]
    fn the_running_version_is_the_slots_signed_one_or_the_build_own() {
        let mut r = Record::default();
        assert_eq!(running(&r, Slot::Installed), BUILT);
        let info = |v: &str| SlotInfo {
            sha256: "00".into(),
            version: Some(v.into()),
            installed_ms: 0,
        };
        r.slots.insert(Slot::A, info("2.1.0"));
        r.slots.insert(Slot::B, info("test"));
        assert_eq!(running(&r, Slot::A), "2.1.0");
        assert_eq!(running(&r, Slot::B), BUILT);
        assert_eq!(running(&r, Slot::Installed), BUILT);
        let custom = serde_json::json!({"version": "1.2.3", "allow_downgrade": true});
        assert_eq!(
            Offered::from_custom(Some(&custom)),
            offered(Some("1.2.3"), true)
        );
        assert_eq!(Offered::from_custom(None), Offered::default());
    }
}
