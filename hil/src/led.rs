//! The device's status LED as an embedded-hal `InputPin`: sample the pin,
//! turn the samples into on/off runs, and classify the runs into a named
//! pattern from a table the rig configuration gives (the agent's patterns
//! are data, not code, so a new firmware's table is a config change).
//!
//! A pattern is either a steady level or a cycle of durations starting with
//! an on-time: `[on, off]` is a plain blink, `[100, 100, 100, 700]` a
//! double blink. A cycle matches when the observed complete runs, aligned on
//! an on-run, follow it within a tolerance.

use std::time::{Duration, Instant};

use embedded_hal::digital::InputPin;
use serde::Deserialize;

/// One named pattern of the table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    pub name: String,
    /// A steady level: `true` = lit, `false` = dark.
    #[serde(default)]
    pub steady: Option<bool>,
    /// Alternating on/off durations in milliseconds, starting with on.
    #[serde(default)]
    pub cycle_ms: Vec<u64>,
}

/// What went wrong with a pattern table or a pin.
#[derive(Debug, thiserror::Error)]
pub enum LedError {
    #[error("LED pattern '{name}': {why}; give either `steady = true|false` or `cycle_ms = [on, off, …]` with an even number of non-zero durations")]
    BadPattern { name: String, why: &'static str },
    #[error("LED pattern table: '{0}' is defined twice; pattern names must be unique")]
    Duplicate(String),
    #[error("cannot read the LED pin of device '{device}': {detail}")]
    Pin { device: String, detail: String },
}

/// The table of named patterns, checked once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatternTable {
    patterns: Vec<Pattern>,
    /// Relative tolerance of each duration (0.3 = ±30 %).
    tolerance: f64,
}

/// A run of one level, as sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub lit: bool,
    pub ms: u64,
}

/// Slack added to every tolerance window, for the sampling period.
const SLACK_MS: u64 = 40;

impl PatternTable {
    /// Checks every pattern; `tolerance` is relative (e.g. 0.3).
    pub fn new(patterns: Vec<Pattern>, tolerance: f64) -> Result<Self, LedError> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &patterns {
            if !seen.insert(p.name.clone()) {
                return Err(LedError::Duplicate(p.name.clone()));
            }
            let bad = |why| LedError::BadPattern {
                name: p.name.clone(),
                why,
            };
            match (p.steady, p.cycle_ms.is_empty()) {
                (Some(_), false) => return Err(bad("both steady and cycle_ms are set")),
                (None, true) => return Err(bad("neither steady nor cycle_ms is set")),
                (None, false) if p.cycle_ms.len() % 2 != 0 => {
                    return Err(bad("cycle_ms has an odd number of durations"))
                }
                (None, false) if p.cycle_ms.contains(&0) => {
                    return Err(bad("cycle_ms holds a zero duration"))
                }
                _ => {}
            }
        }
        Ok(Self {
            patterns,
            tolerance,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.name.as_str())
    }

    /// The longest cycle of the table: how long to sample to see one whole.
    pub fn longest_cycle(&self) -> Duration {
        let ms = self
            .patterns
            .iter()
            .map(|p| p.cycle_ms.iter().sum::<u64>())
            .max()
            .unwrap_or(0);
        Duration::from_millis(ms.max(200))
    }

    fn close(&self, want: u64, got: u64) -> bool {
        let slack = (want as f64 * self.tolerance) as u64 + SLACK_MS;
        got + slack >= want && got <= want + slack
    }

    /// The pattern the runs show: `runs` holds every level change of a
    /// sampling window (the first and last runs are partial). `None` when
    /// nothing in the table fits.
    pub fn classify(&self, runs: &[Run]) -> Option<&str> {
        if runs.len() <= 1 {
            let lit = runs.first()?.lit;
            return self
                .patterns
                .iter()
                .find(|p| p.steady == Some(lit))
                .map(|p| p.name.as_str());
        }
        // Only complete runs count: drop the first and the last.
        let inner = &runs[1..runs.len() - 1];
        self.patterns
            .iter()
            .filter(|p| !p.cycle_ms.is_empty())
            .find(|p| self.cycle_fits(&p.cycle_ms, inner))
            .map(|p| p.name.as_str())
    }

    /// Whether the complete runs follow `cycle` for at least one period.
    fn cycle_fits(&self, cycle: &[u64], inner: &[Run]) -> bool {
        let Some(start) = inner.iter().position(|r| r.lit) else {
            return false;
        };
        let runs = &inner[start..];
        if runs.len() < cycle.len() {
            return false;
        }
        // Try every on-run of the cycle as the alignment point.
        (0..cycle.len()).step_by(2).any(|offset| {
            runs.iter()
                .enumerate()
                .all(|(i, r)| self.close(cycle[(offset + i) % cycle.len()], r.ms))
        })
    }
}

/// Turns samples `(time since start, lit)` into runs.
pub fn runs(samples: &[(Duration, bool)]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let mut start = Duration::ZERO;
    for (i, &(t, lit)) in samples.iter().enumerate() {
        if i == 0 {
            start = t;
            continue;
        }
        let prev = samples[i - 1].1;
        if lit != prev {
            out.push(Run {
                lit: prev,
                ms: (t - start).as_millis() as u64,
            });
            start = t;
        }
    }
    if let Some(&(t, lit)) = samples.last() {
        out.push(Run {
            lit,
            ms: (t - start).as_millis() as u64,
        });
    }
    out
}

/// Samples an LED pin and names what it shows.
#[derive(Debug)]
pub struct LedMonitor<P> {
    device: String,
    pin: P,
    period: Duration,
}

impl<P: InputPin> LedMonitor<P>
where
    P::Error: core::fmt::Debug,
{
    /// Samples every `period` (10 ms resolves patterns of 100 ms and up).
    pub fn new(device: &str, pin: P, period: Duration) -> Self {
        Self {
            device: device.to_string(),
            pin,
            period,
        }
    }

    /// Samples for `window` and returns the runs seen.
    pub fn sample(&mut self, window: Duration) -> Result<Vec<Run>, LedError> {
        let t0 = Instant::now();
        let mut samples = Vec::new();
        loop {
            let t = t0.elapsed();
            let lit = self.pin.is_high().map_err(|e| LedError::Pin {
                device: self.device.clone(),
                detail: format!("{e:?}"),
            })?;
            samples.push((t, lit));
            if t >= window {
                return Ok(runs(&samples));
            }
            std::thread::sleep(self.period);
        }
    }

    /// Samples windows of two longest cycles until the LED shows `want`,
    /// or `timeout` passes; returns the last pattern seen.
    pub fn wait_for(
        &mut self,
        table: &PatternTable,
        want: &str,
        timeout: Duration,
    ) -> Result<(bool, Option<String>), LedError> {
        let deadline = Instant::now() + timeout;
        let window = table.longest_cycle() * 2 + self.period * 4;
        let mut last = None;
        while Instant::now() < deadline {
            let runs = self.sample(window)?;
            last = table.classify(&runs).map(str::to_string);
            if last.as_deref() == Some(want) {
                return Ok((true, last));
            }
        }
        Ok((false, last))
    }

    pub fn release(self) -> P {
        self.pin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level a pattern shows at `t` since it began.
    fn level_at(p: &Pattern, t: Duration) -> bool {
        if let Some(lit) = p.steady {
            return lit;
        }
        let period: u64 = p.cycle_ms.iter().sum();
        let mut at = (t.as_millis() as u64) % period.max(1);
        for (i, d) in p.cycle_ms.iter().enumerate() {
            if at < *d {
                return i % 2 == 0;
            }
            at -= d;
        }
        false
    }

    fn table() -> PatternTable {
        let p = |name: &str, steady: Option<bool>, cycle: &[u64]| Pattern {
            name: name.into(),
            steady,
            cycle_ms: cycle.to_vec(),
        };
        PatternTable::new(
            vec![
                p("on", Some(true), &[]),
                p("off", Some(false), &[]),
                p("slow", None, &[500, 500]),
                p("fast", None, &[100, 100]),
                p("double", None, &[100, 100, 100, 700]),
            ],
            0.3,
        )
        .unwrap()
    }

    /// Samples a pattern every 10 ms for `ms`, starting `phase` ms into it.
    fn trace(p: &str, phase: u64, ms: u64) -> Vec<Run> {
        let t = table();
        let pat = t.get(p).unwrap();
        let s: Vec<_> = (0..ms / 10)
            .map(|i| {
                let d = Duration::from_millis(i * 10);
                (d, level_at(pat, d + Duration::from_millis(phase)))
            })
            .collect();
        runs(&s)
    }

    #[test]
    fn every_pattern_is_recognised_at_any_phase() {
        let t = table();
        for name in ["on", "off", "slow", "fast", "double"] {
            for phase in [0, 50, 130, 420, 777] {
                let r = trace(name, phase, 2500);
                assert_eq!(t.classify(&r), Some(name), "{name} at {phase}: {r:?}");
            }
        }
    }

    #[test]
    fn unknown_rhythm_and_short_windows_are_not_guessed() {
        let t = table();
        let odd = Pattern {
            name: "odd".into(),
            steady: None,
            cycle_ms: vec![300, 1200],
        };
        let s: Vec<_> = (0..400)
            .map(|i| {
                let d = Duration::from_millis(i * 10);
                (d, level_at(&odd, d))
            })
            .collect();
        assert_eq!(t.classify(&runs(&s)), None);
        // Less than one whole double-blink cycle: not a double blink.
        assert_eq!(t.classify(&trace("double", 0, 700)), None);
        assert_eq!(t.classify(&[]), None);
    }

    #[test]
    fn bad_tables_are_refused_with_the_pattern_name() {
        let p = |c: Vec<u64>, s| Pattern {
            name: "x".into(),
            steady: s,
            cycle_ms: c,
        };
        for bad in [
            p(vec![], None),
            p(vec![100], None),
            p(vec![100, 0], None),
            p(vec![100, 100], Some(true)),
        ] {
            let e = PatternTable::new(vec![bad], 0.3).unwrap_err();
            assert!(e.to_string().contains("'x'"), "{e}");
        }
        let e = PatternTable::new(vec![p(vec![1, 1], None), p(vec![2, 2], None)], 0.3);
        assert!(matches!(e, Err(LedError::Duplicate(_))));
    }

    /// A pin showing one pattern from its creation.
    struct Showing(Pattern, Instant);

    impl embedded_hal::digital::ErrorType for Showing {
        type Error = core::convert::Infallible;
    }

    impl InputPin for Showing {
        fn is_high(&mut self) -> Result<bool, Self::Error> {
            Ok(level_at(&self.0, self.1.elapsed()))
        }
        fn is_low(&mut self) -> Result<bool, Self::Error> {
            self.is_high().map(|l| !l)
        }
    }

    #[test]
    fn monitor_samples_a_pin() {
        let t = table();
        let pin = Showing(t.get("fast").unwrap().clone(), Instant::now());
        let mut m = LedMonitor::new("dut", pin, Duration::from_millis(5));
        let (ok, seen) = m.wait_for(&t, "fast", Duration::from_secs(5)).unwrap();
        assert!(ok, "{seen:?}");
    }
}
