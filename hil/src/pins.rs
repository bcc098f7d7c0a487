//! Simulated embedded-hal pins for the simulated backend: an output line
//! whose level changes act on a simulated device (power on = start the
//! agent, power off = cut it), and an LED input that shows a pattern chosen
//! from the device's reported update phase.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use crate::led::{level_at, Pattern, PatternTable};

/// What a simulated output line does when driven: receives the level
/// (`true` = high) and reports a failure as text.
pub type LineAction = Box<dyn FnMut(bool) -> Result<(), String> + Send>;

/// A simulated output line: every level change runs its action.
pub struct SimLine {
    action: LineAction,
    level: Option<bool>,
}

impl std::fmt::Debug for SimLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLine")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl SimLine {
    pub fn new(action: LineAction) -> Self {
        Self {
            action,
            level: None,
        }
    }

    /// A line that only remembers its level (an unconnected reset line).
    pub fn idle() -> Self {
        Self::new(Box::new(|_| Ok(())))
    }

    fn drive(&mut self, high: bool) -> Result<(), LineError> {
        if self.level == Some(high) {
            return Ok(());
        }
        (self.action)(high).map_err(LineError)?;
        self.level = Some(high);
        Ok(())
    }
}

/// The failure of a simulated line's action.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LineError(pub String);

impl embedded_hal::digital::Error for LineError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl ErrorType for SimLine {
    type Error = LineError;
}

impl OutputPin for SimLine {
    fn set_low(&mut self) -> Result<(), LineError> {
        self.drive(false)
    }
    fn set_high(&mut self) -> Result<(), LineError> {
        self.drive(true)
    }
}

/// Where a simulated LED learns what to show: the device's current update
/// phase (`None` while the device is off or silent).
pub type PhaseSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// A simulated status LED. It shows the pattern mapped to the device's
/// reported phase (`phases`: phase name → pattern name), dark while the
/// device reports nothing; or one fixed pattern.
pub struct SimLed {
    source: Option<PhaseSource>,
    phases: BTreeMap<String, String>,
    table: PatternTable,
    fixed: Option<Pattern>,
    /// The pattern shown and since when (each restarts its cycle).
    shown: Mutex<(Option<String>, Instant)>,
}

impl std::fmt::Debug for SimLed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLed")
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}

impl SimLed {
    /// An LED that always shows `p`.
    pub fn fixed(p: Pattern) -> Self {
        Self {
            source: None,
            phases: BTreeMap::new(),
            table: PatternTable::default(),
            fixed: Some(p),
            shown: Mutex::new((None, Instant::now())),
        }
    }

    /// An LED driven by the device's phase.
    pub fn from_phase(
        source: PhaseSource,
        phases: BTreeMap<String, String>,
        table: PatternTable,
    ) -> Self {
        Self {
            source: Some(source),
            phases,
            table,
            fixed: None,
            shown: Mutex::new((None, Instant::now())),
        }
    }

    fn lit(&self) -> bool {
        if let Some(p) = &self.fixed {
            let t0 = self.shown.lock().unwrap_or_else(|p| p.into_inner()).1;
            return level_at(p, t0.elapsed());
        }
        let phase = self.source.as_ref().and_then(|s| s());
        let name = phase.and_then(|ph| self.phases.get(&ph).cloned());
        let Some(pattern) = name.as_deref().and_then(|n| self.table.get(n)) else {
            return false;
        };
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        if shown.0 != name {
            *shown = (name.clone(), Instant::now());
        }
        level_at(pattern, shown.1.elapsed())
    }
}

impl ErrorType for SimLed {
    type Error = Infallible;
}

impl InputPin for SimLed {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.lit())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.lit())
    }
}

/// How long a simulated LED needs to settle after a phase change before a
/// window shows only the new pattern.
pub const SETTLE: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::led::{LedMonitor, Pattern};

    #[test]
    fn line_runs_its_action_once_per_level_change() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut l = SimLine::new(Box::new(move |h| {
            s.lock().unwrap().push(h);
            if h {
                Ok(())
            } else {
                Err("relay stuck".into())
            }
        }));
        l.set_high().unwrap();
        l.set_high().unwrap();
        let e = l.set_low().unwrap_err();
        assert_eq!(e.to_string(), "relay stuck");
        assert_eq!(*seen.lock().unwrap(), [true, false]);
    }

    #[test]
    fn led_follows_the_phase() {
        let table = PatternTable::new(
            vec![
                Pattern {
                    name: "solid".into(),
                    steady: Some(true),
                    cycle_ms: vec![],
                },
                Pattern {
                    name: "blink".into(),
                    steady: None,
                    cycle_ms: vec![100, 100],
                },
            ],
            0.3,
        )
        .unwrap();
        let phase = Arc::new(Mutex::new(Some("idle".to_string())));
        let p = phase.clone();
        let led = SimLed::from_phase(
            Arc::new(move || p.lock().unwrap().clone()),
            [("idle", "solid"), ("fetching", "blink")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            table.clone(),
        );
        let mut m = LedMonitor::new("dut", led, Duration::from_millis(5));
        let t = Duration::from_secs(3);
        assert!(m.wait_for(&table, "solid", t).unwrap().0);
        *phase.lock().unwrap() = Some("fetching".into());
        assert!(m.wait_for(&table, "blink", t).unwrap().0);
        *phase.lock().unwrap() = None;
        let (ok, seen) = m
            .wait_for(&table, "solid", Duration::from_millis(600))
            .unwrap();
        assert!(!ok && seen.is_none(), "a silent device is dark: {seen:?}");
    }
}
