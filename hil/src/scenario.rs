//! Scenarios in TOML: the releases a scenario publishes, the devices it
//! drives, steps run once (`setup`) and steps run every cycle (`steps`),
//! checked into a typed form once, with errors naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::led::Pattern;

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How many times `steps` run (`berth-hil run --cycles` overrides).
    #[serde(default = "one")]
    pub cycles: u64,
    /// Seed of the random delays (0: from the clock; printed for replays).
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many failed cycles.
    #[serde(default = "five")]
    pub max_failures: u64,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub led: LedSpec,
    /// Release templates by name; each publish makes the next generation.
    pub releases: BTreeMap<String, ReleaseSpec>,
    #[serde(default)]
    pub setup: Vec<Step>,
    pub steps: Vec<Step>,
}

fn one() -> u64 {
    1
}
fn five() -> u64 {
    5
}

/// The simulated devices of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSpec {
    pub count: u32,
    /// The agent's periodic refresh (a failed fetch is retried then).
    pub refresh_s: u64,
    /// State directory on a tmpfs of this size (for disk-full faults).
    pub tmpfs_state_mib: Option<u64>,
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self {
            count: 1,
            refresh_s: 10,
            tmpfs_state_mib: None,
        }
    }
}

/// The status LED's pattern table. The default is the agent's own
/// (`berth_agent::hw::Pattern`: idle, updating, rolled-back, error) plus
/// `dark`; a rig for other firmware names its patterns here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedSpec {
    pub tolerance: f64,
    pub patterns: Vec<Pattern>,
}

impl Default for LedSpec {
    fn default() -> Self {
        use berth_agent::hw::Pattern as Agent;
        let mut patterns: Vec<Pattern> = [
            Agent::Idle,
            Agent::Updating,
            Agent::RolledBack,
            Agent::Error,
        ]
        .into_iter()
        .map(|a| Pattern {
            name: a.name().into(),
            steady: None,
            cycle_ms: a.steps().iter().map(|s| s.1).collect(),
        })
        .collect();
        patterns.push(Pattern {
            name: "dark".into(),
            steady: Some(false),
            cycle_ms: vec![],
        });
        Self {
            tolerance: 0.3,
            patterns,
        }
    }
}

/// A release template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    pub workloads: Vec<WorkloadSpec>,
    /// An incompressible payload in the image (KiB): every publish of
    /// this release then carries a new image to pull. 0: the shared base.
    #[serde(default)]
    pub payload_kib: u64,
}

/// One sensor workload of a release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    /// Changes with every generation (its environment holds the number).
    #[serde(default)]
    pub changes: bool,
    /// Milliseconds between the sensor's readings.
    #[serde(default = "interval")]
    pub interval_ms: u64,
}

fn interval() -> u64 {
    200
}

/// A delay: fixed, or drawn uniformly from `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Millis {
    Fixed(u64),
    Range([u64; 2]),
}

/// What an `expect` step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Settled {
    /// Exactly the previous or the newest generation, all its workloads.
    OldOrNew,
    /// The newest generation, all its workloads.
    New,
    /// Still the previous generation, all its workloads.
    Old,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Publish the next generation from a template (`releases` cycles
    /// through the list, one per cycle).
    Publish {
        releases: Vec<String>,
        #[serde(default = "yes")]
        notify: bool,
        /// Push the images first and corrupt the largest blob in the
        /// registry's storage (same length, flipped bytes).
        #[serde(default)]
        corrupt_blob: bool,
    },
    /// Put the corrupted blob back.
    RepairBlob,
    WaitPhase {
        phase: String,
        #[serde(default = "sixty")]
        timeout_s: u64,
    },
    WaitLed {
        pattern: String,
        #[serde(default = "sixty")]
        timeout_s: u64,
    },
    /// Cut power after a delay, or the instant the device's update state
    /// enters `at_phase`.
    CutPower {
        #[serde(default)]
        after_ms: Option<Millis>,
        #[serde(default)]
        at_phase: Option<String>,
        #[serde(default = "sixty")]
        timeout_s: u64,
    },
    RestorePower,
    Partition,
    Heal,
    Throttle {
        kib_per_s: Option<u64>,
    },
    /// The device's clock from its next boot on, relative to the host's.
    SetClock {
        offset_s: i64,
    },
    FillDisk {
        #[serde(default)]
        keep_kib: u64,
    },
    FreeDisk,
    Expect {
        state: Settled,
        #[serde(default = "ninety")]
        timeout_s: u64,
        /// The state must then hold this long.
        #[serde(default)]
        hold_s: u64,
    },
    /// The volume holds at least every byte it held at the last cut.
    CheckVolume {
        workload: String,
        #[serde(default = "data")]
        volume: String,
    },
    Sleep {
        ms: Millis,
    },
}

fn yes() -> bool {
    true
}
fn sixty() -> u64 {
    60
}
fn ninety() -> u64 {
    90
}
fn data() -> String {
    "data".into()
}

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read the scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path}: {detail}")]
    Invalid { path: String, detail: String },
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&name, &text)
    }

    /// Parses and checks scenario text (`name` is used in errors).
    pub fn parse(name: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |detail: String| ScenarioError::Invalid {
            path: name.to_string(),
            detail,
        };
        let de = toml::Deserializer::new(text);
        let s: Scenario = serde_path_to_error::deserialize(de)
            .map_err(|e| invalid(format!("at `{}`: {}", e.path(), e.inner().message())))?;
        crate::led::PatternTable::new(s.led.patterns.clone(), s.led.tolerance)
            .map_err(|e| invalid(e.to_string()))?;
        for (n, r) in &s.releases {
            berth_agent::names::WorkloadName::parse(n)
                .map_err(|e| invalid(format!("releases.{n}: {e}")))?;
            if r.workloads.is_empty() {
                return Err(invalid(format!("releases.{n} has no workloads")));
            }
            for w in &r.workloads {
                berth_agent::names::WorkloadName::parse(&w.name)
                    .map_err(|e| invalid(format!("releases.{n}.workloads: {e}")))?;
            }
        }
        for (i, st) in s.setup.iter().chain(&s.steps).enumerate() {
            match st {
                Step::Publish { releases, .. } => {
                    if releases.is_empty() {
                        return Err(invalid(format!("step {}: publish names no release", i + 1)));
                    }
                    if let Some(r) = releases.iter().find(|r| !s.releases.contains_key(*r)) {
                        return Err(invalid(format!(
                            "step {}: publish names the release '{r}', which `releases` does not define",
                            i + 1
                        )));
                    }
                }
                Step::CutPower {
                    after_ms, at_phase, ..
                } if after_ms.is_some() == at_phase.is_some() => {
                    return Err(invalid(format!(
                        "step {}: cut_power needs exactly one of after_ms and at_phase",
                        i + 1
                    )))
                }
                Step::CutPower {
                    after_ms: Some(Millis::Range([a, b])),
                    ..
                }
                | Step::Sleep {
                    ms: Millis::Range([a, b]),
                } if a > b => {
                    return Err(invalid(format!(
                        "step {}: the range [{a}, {b}] is empty",
                        i + 1
                    )))
                }
                Step::WaitLed { pattern, .. }
                    if !s.led.patterns.iter().any(|p| &p.name == pattern) =>
                {
                    let known: Vec<&str> = s.led.patterns.iter().map(|p| p.name.as_str()).collect();
                    return Err(invalid(format!(
                        "step {}: wait_led names the pattern '{pattern}', which the LED table does not define; use one of {} or add it to led.patterns",
                        i + 1,
                        known.join(", ")
                    )));
                }
                Step::FillDisk { .. } if s.device.tmpfs_state_mib.is_none() => {
                    return Err(invalid(format!(
                        "step {}: fill_disk needs device.tmpfs_state_mib",
                        i + 1
                    )))
                }
                _ => {}
            }
        }
        if s.device.count == 0 {
            return Err(invalid("device.count must be at least 1".into()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
cycles = 3
[releases.base]
workloads = [{ name = "a" }, { name = "b", changes = true }]
[[setup]]
action = "publish"
releases = ["base"]
[[steps]]
action = "cut_power"
after_ms = [0, 2500]
[[steps]]
action = "expect"
state = "old-or-new"
"#;

    #[test]
    fn a_scenario_parses_with_defaults() {
        let s = Scenario::parse("t.toml", OK).unwrap();
        assert_eq!(s.cycles, 3);
        assert_eq!(s.device, DeviceSpec::default());
        assert_eq!(
            s.steps[0],
            Step::CutPower {
                after_ms: Some(Millis::Range([0, 2500])),
                at_phase: None,
                timeout_s: 60
            }
        );
        let names: Vec<&str> = s.led.patterns.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["idle", "updating", "rolled-back", "error", "dark"]);
        assert_eq!(s.led.patterns[0].cycle_ms, [100, 1900]);
    }

    #[test]
    fn mistakes_are_named() {
        for (bad, want) in [
            (OK.replace("[0, 2500]", "[3, 1]"), "range [3, 1] is empty"),
            (OK.replace("\"base\"]", "\"nope\"]"), "release 'nope'"),
            (
                OK.replace("old-or-new", "sideways"),
                "at `steps[1]`: unknown variant `sideways`",
            ),
            (OK.replace("cycles = 3", "cycles = 3\nwat = 1"), "wat"),
            (
                OK.replace(
                    "after_ms = [0, 2500]",
                    "after_ms = 5\nat_phase = \"staged\"",
                ),
                "exactly one of",
            ),
            (
                OK.replace(
                    "action = \"expect\"\nstate = \"old-or-new\"",
                    "action = \"fill_disk\"",
                ),
                "tmpfs_state_mib",
            ),
            (
                OK.replace(
                    "action = \"expect\"\nstate = \"old-or-new\"",
                    "action = \"wait_led\"\npattern = \"steady\"",
                ),
                "'steady', which the LED table does not define; use one of idle, updating",
            ),
        ] {
            let e = Scenario::parse("t.toml", &bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
            assert!(e.starts_with("scenario t.toml"), "{e}");
        }
    }
}
