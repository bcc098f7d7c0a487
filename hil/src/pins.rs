//! Simulated embedded-hal pins for the simulated backend: an output line
//! whose level changes act on a simulated device (power on = start the
//! agent, power off = cut it), and an LED input that reads the level the
//! device's agent drives on its simulated pin.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_agent::hw::led::{read_sim, SimPinError};
use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

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

/// A simulated device's status LED, read from the agent's simulated pin
/// (`led.pin = "sim:FILE"`, format in `berth_agent::hw::led`): lit when
/// the file's last complete level line says `1`, dark when it says `0`,
/// when it has none, or when the file is absent (the device is off). The
/// file is read incrementally; a rotated, replaced or truncated file is
/// read again from its start.
#[derive(Debug)]
pub struct SimLed {
    path: PathBuf,
    open: Option<Opened>,
    level: bool,
}

#[derive(Debug)]
struct Opened {
    file: std::fs::File,
    ino: u64,
    /// Bytes consumed so far.
    offset: u64,
    /// An incomplete last line, kept until its newline arrives.
    partial: Vec<u8>,
}

impl SimLed {
    /// The LED whose agent writes `path`.
    pub fn file(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            open: None,
            level: false,
        }
    }

    fn lit(&mut self) -> std::io::Result<bool> {
        let meta = match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.open = None;
                self.level = false;
                return Ok(false);
            }
            r => r?,
        };
        let same = matches!(&self.open, Some(o) if o.ino == meta.ino() && meta.len() >= o.offset);
        if !same {
            self.level = false;
            self.open = Some(Opened {
                file: std::fs::File::open(&self.path)?,
                ino: meta.ino(),
                offset: 0,
                partial: Vec::new(),
            });
        }
        let o = self.open.as_mut().expect("opened above");
        let n = o.file.read_to_end(&mut o.partial)?;
        o.offset += n as u64;
        if let Some(end) = o.partial.iter().rposition(|&b| b == b'\n') {
            let complete: Vec<u8> = o.partial.drain(..=end).collect();
            if let Some(&(_, lit)) = read_sim(&String::from_utf8_lossy(&complete)).last() {
                self.level = lit;
            }
        }
        Ok(self.level)
    }
}

impl ErrorType for SimLed {
    type Error = SimPinError;
}

impl InputPin for SimLed {
    fn is_high(&mut self) -> Result<bool, SimPinError> {
        self.lit().map_err(SimPinError)
    }
    fn is_low(&mut self) -> Result<bool, SimPinError> {
        self.lit().map(|l| !l).map_err(SimPinError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::led::{LedMonitor, PatternTable};
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

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
    fn led_reads_the_agents_pin_through_rotation_and_power_off() {
        use berth_agent::hw::led::{open, PinSpec};
        use berth_agent::hw::Pattern as Agent;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("led");
        let mut pin = SimLed::file(&f);
        assert!(!pin.is_high().unwrap(), "no file: dark");
        // A line written in two pieces counts only once complete.
        std::fs::write(&f, "# pattern idle\n1732350000123 ").unwrap();
        assert!(!pin.is_high().unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .unwrap()
            .write_all(b"1\n")
            .unwrap();
        assert!(pin.is_high().unwrap());
        // Rotated: a new file holding the current level.
        std::fs::rename(&f, dir.path().join("led.1")).unwrap();
        std::fs::write(&f, "1732350000999 0\n").unwrap();
        assert!(pin.is_low().unwrap());
        std::fs::remove_file(&f).unwrap();
        assert!(!pin.is_high().unwrap(), "device off: dark");
        // The agent's own LED thread, decoded by the monitor.
        let table = crate::scenario::LedSpec::default();
        let table = PatternTable::new(table.patterns, table.tolerance).unwrap();
        let led = open(&PinSpec::Sim(f.clone())).unwrap();
        let mut m = LedMonitor::new("dut", SimLed::file(&f), Duration::from_millis(5));
        let t = Duration::from_secs(10);
        for p in [Agent::Error, Agent::Updating, Agent::Idle] {
            led.show(p);
            let (ok, seen) = m.wait_for(&table, p.name(), t).unwrap();
            assert!(ok, "{}: {seen:?}", p.name());
        }
        drop(led);
        let (ok, seen) = m.wait_for(&table, "dark", t).unwrap();
        assert!(ok, "a stopped agent leaves it dark: {seen:?}");
    }
}
