//! What a run found: per-cycle results, fault counts, bad states, volume
//! data lost and recovery times; printed as a summary and written as a
//! JUnit XML report for CI systems.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// One JUnit test case: the setup or one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    pub time: Duration,
    pub failure: Option<String>,
}

impl Case {
    pub fn new(name: &str, time: Duration, failure: Option<String>) -> Self {
        Self {
            name: name.into(),
            time,
            failure,
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub cycles: u64,
    pub failed_cycles: u64,
    pub faults: BTreeMap<String, u64>,
    /// Devices found in anything but exactly the old or the new generation
    /// with all its workloads.
    pub bad_states: u64,
    pub volume_bytes_checked: u64,
    pub volume_bytes_lost: u64,
    /// From power restored (or a partition healed, a blob repaired, disk
    /// freed) to settled.
    pub recoveries: Vec<Duration>,
    /// Settlements while a newer generation was pending: on it, or on the
    /// old one (the update refused, or cut off before the switch).
    pub landed_new: u64,
    pub landed_old: u64,
}

impl Metrics {
    pub fn fault(&mut self, kind: &str, n: usize) {
        *self.faults.entry(kind.into()).or_default() += n as u64;
    }

    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }

    /// (median, 95th percentile, max) of the recovery times.
    pub fn recovery(&self) -> Option<(Duration, Duration, Duration)> {
        let mut v = self.recoveries.clone();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.95), v[v.len() - 1]))
    }

    /// Key/value pairs for the summary and the JUnit properties.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut p = vec![
            ("cycles".to_string(), self.cycles.to_string()),
            ("failed cycles".into(), self.failed_cycles.to_string()),
            ("faults injected".into(), self.faults_total().to_string()),
        ];
        for (k, v) in &self.faults {
            p.push((format!("  {k}"), v.to_string()));
        }
        p.push(("bad states".into(), self.bad_states.to_string()));
        p.push((
            "volume data lost".into(),
            format!(
                "{} of {} bytes checked",
                self.volume_bytes_lost, self.volume_bytes_checked
            ),
        ));
        p.push((
            "landed on new / old".into(),
            format!("{} / {}", self.landed_new, self.landed_old),
        ));
        if let Some((m, p95, max)) = self.recovery() {
            p.push((
                "time to recover".into(),
                format!(
                    "median {:.2} s, p95 {:.2} s, max {:.2} s ({} recoveries)",
                    m.as_secs_f64(),
                    p95.as_secs_f64(),
                    max.as_secs_f64(),
                    self.recoveries.len()
                ),
            ));
        }
        p
    }
}

/// The readable summary.
pub fn summary(name: &str, seed: u64, m: &Metrics, cases: &[Case], wall: Duration) -> String {
    let failed = cases.iter().filter(|c| c.failure.is_some()).count();
    let mut s = format!(
        "scenario {name}: {} ({} of {} cases passed, {:.1} s, seed {seed})\n",
        if failed == 0 { "PASS" } else { "FAIL" },
        cases.len() - failed,
        cases.len(),
        wall.as_secs_f64()
    );
    for (k, v) in m.pairs() {
        let _ = writeln!(s, "  {k:<22} {v}");
    }
    for c in cases.iter().filter(|c| c.failure.is_some()) {
        let first = c
            .failure
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        let _ = writeln!(s, "  FAILED {}: {first}", c.name);
    }
    s
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => o.push(c),
        }
    }
    o
}

/// The JUnit XML report (one test suite; the metrics as properties).
pub fn junit(name: &str, seed: u64, m: &Metrics, cases: &[Case]) -> String {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let total: f64 = cases.iter().map(|c| c.time.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"berth-hil\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">",
        esc(name),
        cases.len()
    );
    x.push_str("    <properties>\n");
    let _ = writeln!(x, "      <property name=\"seed\" value=\"{seed}\"/>");
    for (k, v) in m.pairs() {
        let _ = writeln!(
            x,
            "      <property name=\"{}\" value=\"{}\"/>",
            esc(k.trim()),
            esc(&v)
        );
    }
    x.push_str("    </properties>\n");
    for c in cases {
        let _ = write!(
            x,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            esc(name),
            esc(&c.name),
            c.time.as_secs_f64()
        );
        match &c.failure {
            None => x.push_str("/>\n"),
            Some(f) => {
                let first = f.lines().next().unwrap_or("");
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    esc(first),
                    esc(f)
                );
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_counts_and_escapes() {
        let mut m = Metrics::default();
        m.fault("power cut", 2);
        m.recoveries = vec![Duration::from_secs(1), Duration::from_secs(3)];
        let cases = vec![
            Case::new("setup", Duration::from_millis(1500), None),
            Case::new(
                "cycle 1",
                Duration::from_secs(2),
                Some("bad <state> & \"x\"\nlog".into()),
            ),
        ];
        let x = junit("power-cut", 7, &m, &cases);
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("message=\"bad &lt;state&gt; &amp; &quot;x&quot;\""));
        assert!(x.contains("<property name=\"power cut\" value=\"2\"/>"));
        assert!(x.contains("<testcase classname=\"power-cut\" name=\"setup\" time=\"1.500\"/>"));
        let s = summary("power-cut", 7, &m, &cases, Duration::from_secs(4));
        assert!(
            s.starts_with("scenario power-cut: FAIL (1 of 2 cases passed"),
            "{s}"
        );
        assert!(s.contains("FAILED cycle 1: bad <state>"));
        assert_eq!(
            m.recovery(),
            Some((
                Duration::from_secs(3),
                Duration::from_secs(3),
                Duration::from_secs(3)
            ))
        );
    }
}
