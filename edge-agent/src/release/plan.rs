//! `plan(desired, actual)`: the pure heart of reconciliation.
//!
//! No I/O: given the workloads a release wants on this device and what runs
//! now, it returns the ordered actions that move one to the other, touching
//! only what changed. A workload's identity is its *fingerprint*: a digest
//! over its whole definition as resolved for this device's architecture, so
//! any change to image, args, env, limits, volumes, devices, network, health
//! restart policy or the sealed text of a secret it uses restarts it, and
//! nothing else does.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::document::{Arch, Release, Secret, Workload};
use super::validate::start_order;
use crate::names::{Digest, WorkloadName};

/// A workload as one device runs it: the definition with one image digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub workload: Workload,
    pub image: Digest,
    pub fingerprint: String,
    /// The release's secrets this workload uses (sealed), in its order.
    pub secrets: Vec<Secret>,
}

/// The workloads of a release for one architecture, in start order. `None`
/// when a workload has no image for `arch` (check `validate::applies` first).
pub fn resolve(r: &Release, arch: Arch) -> Option<Vec<Resolved>> {
    let order = start_order(r).ok()?;
    let by_name: BTreeMap<&WorkloadName, &Workload> =
        r.workloads.iter().map(|w| (&w.name, w)).collect();
    order
        .iter()
        .map(|name| {
            let w = by_name.get(name)?;
            let image = w.image.digests.get(&arch)?.clone();
            let secrets: Vec<Secret> = w
                .secrets
                .iter()
                .map(|s| r.secrets.iter().find(|d| d.name == s.name).cloned())
                .collect::<Option<_>>()?;
            let digests: Vec<&Digest> = secrets.iter().map(|s| &s.digest).collect();
            Some(Resolved {
                fingerprint: fingerprint(w, arch, &image, &digests),
                workload: (*w).clone(),
                image,
                secrets,
            })
        })
        .collect()
}

/// `sha256:` over the canonical JSON of the definition, with the image
/// reduced to this architecture's digest (so pinning a new arm64 image does
/// not restart amd64 devices) and the digests of the secrets it uses (absent
/// when it uses none, so older fingerprints stay the same).
pub fn fingerprint(w: &Workload, arch: Arch, image: &Digest, secrets: &[&Digest]) -> String {
    #[derive(Serialize)]
    struct View<'a> {
        workload: &'a Workload,
        arch: Arch,
        image: &'a Digest,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        secrets: &'a [&'a Digest],
    }
    let mut w = w.clone();
    w.image.digests.clear();
    let view = View {
        workload: &w,
        arch,
        image,
        secrets,
    };
    let json = serde_json::to_vec(&view).expect("a workload always serializes");
    format!("sha256:{}", hex::encode(Sha256::digest(json)))
}

/// What runs now, per workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    pub fingerprint: String,
    pub running: bool,
}

/// One step of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop and delete the container (its volumes stay).
    Stop { name: WorkloadName, why: StopWhy },
    /// Create and start the container for this definition.
    Start {
        name: WorkloadName,
        fingerprint: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhy {
    /// Not in the desired release.
    Removed,
    /// Its definition changed; a start of the new one follows.
    Changed,
    /// Present with the right definition but not running; restarted fresh.
    NotRunning,
}

/// The actions that turn `actual` into `desired` (in start order): first
/// every stop (removed workloads, then changed ones in reverse start order),
/// then every start in start order. Unchanged running workloads are absent.
pub fn plan(desired: &[Resolved], actual: &BTreeMap<WorkloadName, Actual>) -> Vec<Action> {
    let wanted: BTreeSet<&WorkloadName> = desired.iter().map(|d| &d.workload.name).collect();
    let mut actions = Vec::new();
    for name in actual.keys().rev() {
        if !wanted.contains(name) {
            actions.push(Action::Stop {
                name: name.clone(),
                why: StopWhy::Removed,
            });
        }
    }
    let mut starts = Vec::new();
    for d in desired.iter().rev() {
        let name = &d.workload.name;
        match actual.get(name) {
            Some(a) if a.fingerprint == d.fingerprint && a.running => continue,
            Some(a) => actions.push(Action::Stop {
                name: name.clone(),
                why: if a.fingerprint == d.fingerprint {
                    StopWhy::NotRunning
                } else {
                    StopWhy::Changed
                },
            }),
            None => {}
        }
        starts.push(Action::Start {
            name: name.clone(),
            fingerprint: d.fingerprint.clone(),
        });
    }
    starts.reverse();
    actions.extend(starts);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::document::{Network, SCHEMA};
    use crate::release::validate::from_toml;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn release(extra: &str) -> Release {
        let text = format!(
            r#"
schema = {SCHEMA}
fleet = "pumps"
generation = 1
[[workloads]]
name = "db"
image = {{ registry = "r:5000", repository = "a/db", digests = {{ amd64 = "{D1}", arm64 = "{D2}" }} }}
[[workloads]]
name = "web"
image = {{ registry = "r:5000", repository = "a/web", digests = {{ amd64 = "{D1}" }} }}
after = ["db"]
{extra}
"#
        );
        from_toml("test.toml", &text).unwrap()
    }

    fn running(r: &[Resolved]) -> BTreeMap<WorkloadName, Actual> {
        r.iter()
            .map(|d| {
                (
                    d.workload.name.clone(),
                    Actual {
                        fingerprint: d.fingerprint.clone(),
                        running: true,
                    },
                )
            })
            .collect()
    }

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Stop { name, why } => format!("stop {name} {why:?}"),
                Action::Start { name, .. } => format!("start {name}"),
            })
            .collect()
    }

    #[test]
    fn fresh_device_starts_everything_in_dependency_order() {
        let r = release("");
        let d = resolve(&r, Arch::Amd64).unwrap();
        assert_eq!(
            names(&plan(&d, &BTreeMap::new())),
            ["start db", "start web"]
        );
    }

    #[test]
    fn a_new_sealed_secret_restarts_only_the_workloads_that_use_it() {
        let base = release("");
        let before = resolve(&base, Arch::Amd64).unwrap();
        let with = |digest: &str| {
            let mut r = base.clone();
            r.schema = 2;
            r.secrets = vec![crate::release::document::Secret {
                name: WorkloadName::parse("pw").unwrap(),
                digest: Digest::parse(digest).unwrap(),
                sealed: String::new(),
            }];
            r.workloads[1].secrets = vec![crate::release::document::SecretRef {
                name: WorkloadName::parse("pw").unwrap(),
                env: None,
            }];
            resolve(&r, Arch::Amd64).unwrap()
        };
        let v1 = with(D1);
        // A workload that uses no secret keeps its fingerprint.
        assert_eq!(v1[0].fingerprint, before[0].fingerprint);
        assert_ne!(v1[1].fingerprint, before[1].fingerprint);
        assert_eq!(v1[1].secrets.len(), 1);
        let v2 = with(D2);
        assert_eq!(
            names(&plan(&v2, &running(&v1))),
            ["stop web Changed", "start web"]
        );
    }

    #[test]
    fn an_identical_release_plans_nothing() {
        let d = resolve(&release(""), Arch::Amd64).unwrap();
        assert!(plan(&d, &running(&d)).is_empty());
    }

    #[test]
    fn only_the_changed_workload_restarts() {
        let old = resolve(&release(""), Arch::Amd64).unwrap();
        let mut r = release("");
        r.workloads[1].env.insert("LEVEL".into(), "debug".into());
        let new = resolve(&r, Arch::Amd64).unwrap();
        assert_eq!(
            names(&plan(&new, &running(&old))),
            ["stop web Changed", "start web"]
        );
    }

    #[test]
    fn every_field_of_a_definition_counts() {
        let base = release("");
        let f0 = resolve(&base, Arch::Amd64).unwrap()[0].fingerprint.clone();
        let edits: [fn(&mut Workload); 8] = [
            (|w| w.args = Some(vec!["/x".into()])),
            (|w| w.user = Some("1".into())),
            (|w| w.resources.memory_mb = Some(65)),
            (|w| w.network = Network::Host),
            (|w| w.devices.push("/dev/ttyUSB0".into())),
            (|w| w.health.deadline_s = 31),
            (|w| w.restart.backoff_max_ms = 1000),
            (|w| w.image.repository = "a/other".into()),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut r = base.clone();
            edit(&mut r.workloads[0]);
            let f = resolve(&r, Arch::Amd64).unwrap()[0].fingerprint.clone();
            assert_ne!(f, f0, "edit {i} did not change the fingerprint");
        }
    }

    #[test]
    fn another_architectures_digest_does_not_restart() {
        let old = resolve(&release(""), Arch::Amd64).unwrap();
        let mut r = release("");
        r.workloads[0]
            .image
            .digests
            .insert(Arch::Arm64, Digest::parse(D1).unwrap());
        let new = resolve(&r, Arch::Amd64).unwrap();
        assert!(plan(&new, &running(&old)).is_empty());
        let arm_old = resolve(&release(""), Arch::Arm64);
        assert!(arm_old.is_none(), "web has no arm64 image");
    }

    #[test]
    fn removed_workloads_stop_first_and_changed_stop_in_reverse_order() {
        let old = resolve(&release(""), Arch::Amd64).unwrap();
        let mut actual = running(&old);
        actual.insert(
            WorkloadName::parse("legacy").unwrap(),
            Actual {
                fingerprint: "sha256:0".into(),
                running: true,
            },
        );
        let mut r = release("");
        for w in &mut r.workloads {
            w.env.insert("V".into(), "2".into());
        }
        let new = resolve(&r, Arch::Amd64).unwrap();
        assert_eq!(
            names(&plan(&new, &actual)),
            [
                "stop legacy Removed",
                "stop web Changed",
                "stop db Changed",
                "start db",
                "start web"
            ]
        );
    }

    #[test]
    fn a_stopped_workload_with_the_right_definition_is_restarted() {
        let d = resolve(&release(""), Arch::Amd64).unwrap();
        let mut actual = running(&d);
        actual.get_mut(&d[0].workload.name).unwrap().running = false;
        assert_eq!(
            names(&plan(&d, &actual)),
            ["stop db NotRunning", "start db"]
        );
    }

    #[test]
    fn an_empty_release_stops_everything() {
        let d = resolve(&release(""), Arch::Amd64).unwrap();
        let mut r = release("");
        r.workloads.clear();
        let empty = resolve(&r, Arch::Amd64).unwrap();
        assert_eq!(
            names(&plan(&empty, &running(&d))),
            ["stop web Removed", "stop db Removed"]
        );
    }

    #[test]
    fn plan_then_apply_converges_for_every_subset() {
        // Exhaustive over which of 4 workloads run, which changed and which are
        // stopped: applying the plan yields exactly the desired set, and a
        // second plan is empty.
        let mut text = format!("schema = {SCHEMA}\nfleet = \"f\"\ngeneration = 1\n");
        for n in ["a", "b", "c", "d"] {
            text.push_str(&format!(
                "[[workloads]]\nname = \"{n}\"\nimage = {{ registry = \"r\", repository = \"x\", digests = {{ amd64 = \"{D1}\" }} }}\n"
            ));
        }
        let r = from_toml("t", &text).unwrap();
        let desired = resolve(&r, Arch::Amd64).unwrap();
        for mask in 0..(3u32.pow(4) * 2) {
            let mut actual = BTreeMap::new();
            let mut m = mask;
            for d in &desired {
                match m % 3 {
                    0 => {}
                    1 => {
                        actual.insert(
                            d.workload.name.clone(),
                            Actual {
                                fingerprint: d.fingerprint.clone(),
                                running: true,
                            },
                        );
                    }
                    _ => {
                        actual.insert(
                            d.workload.name.clone(),
                            Actual {
                                fingerprint: "sha256:old".into(),
                                running: m % 2 == 0,
                            },
                        );
                    }
                }
                m /= 3;
            }
            if mask >= 81 {
                actual.insert(
                    WorkloadName::parse("gone").unwrap(),
                    Actual {
                        fingerprint: "sha256:x".into(),
                        running: true,
                    },
                );
            }
            let actions = plan(&desired, &actual);
            let mut state = actual.clone();
            let mut started = false;
            for a in &actions {
                match a {
                    Action::Stop { name, .. } => {
                        assert!(!started, "a stop after a start in {actions:?}");
                        assert!(state.remove(name).is_some(), "stop of absent {name}");
                    }
                    Action::Start { name, fingerprint } => {
                        started = true;
                        assert!(!state.contains_key(name), "start over a running {name}");
                        state.insert(
                            name.clone(),
                            Actual {
                                fingerprint: fingerprint.clone(),
                                running: true,
                            },
                        );
                    }
                }
            }
            assert_eq!(state, running(&desired), "mask {mask}");
            assert!(plan(&desired, &state).is_empty());
        }
    }
}
