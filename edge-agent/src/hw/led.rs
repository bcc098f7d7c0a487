//! The status LED: a thread that plays the current [`Pattern`] on any
//! embedded-hal 1.0 `OutputPin`.
//!
//! Pins (`led.pin` in the agent's configuration):
//!
//! - `gpio:/dev/gpiochipN:LINE` — a GPIO character-device line (agent built
//!   with the cargo feature `gpio`; linux-embedded-hal's `CdevPin`);
//! - `sim:/path/to/file` — a simulated pin for tests and hardware-in-loop
//!   rigs, described next.
//!
//! ## The simulated pin's file
//!
//! Text, one line per event, appended and flushed as it happens:
//!
//! ```text
//! # pattern updating          a pattern starts (informational)
//! 1732350000123 1             MILLIS LEVEL: the pin was driven to LEVEL
//! 1732350000623 0
//! ```
//!
//! `MILLIS` is the wall-clock time in milliseconds since the Unix epoch,
//! `LEVEL` is `1` (lit) or `0` (dark); a level line is written only when the
//! level changes. Lines starting with `#` are annotations a reader may
//! ignore. The pin's level is that of the last level line (dark when there
//! is none), so a rig reads it as an `InputPin` by reading the file's last
//! level line. When the file passes 64 KiB it is renamed to `FILE.1`
//! (replacing the previous one) and a new file starts with the current
//! level; a reader that sees the file shrink reopens it. Put it on a tmpfs:
//! a blinking LED writes a few lines a second.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorType, OutputPin};

use super::Pattern;

/// Size at which the simulated pin's file is rotated.
pub const SIM_ROTATE: u64 = 64 * 1024;

/// A pin that cannot be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum LedError {
    #[error("led.pin {spec:?}: {reason}")]
    Spec { spec: String, reason: String },
    #[error("status LED {pin}: {reason}")]
    Pin { pin: String, reason: String },
}

/// Where the LED is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSpec {
    Sim(PathBuf),
    Gpio { chip: PathBuf, line: u32 },
}

impl PinSpec {
    pub fn parse(spec: &str) -> Result<PinSpec, LedError> {
        let bad = |reason: &str| LedError::Spec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = spec.strip_prefix("sim:") {
            if !path.starts_with('/') {
                return Err(bad("the simulated pin's file must be an absolute path"));
            }
            return Ok(PinSpec::Sim(path.into()));
        }
        if let Some(rest) = spec.strip_prefix("gpio:") {
            let (chip, line) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("use gpio:/dev/gpiochipN:LINE"))?;
            let line = line
                .parse()
                .map_err(|_| bad("the line must be a number (gpio:/dev/gpiochipN:LINE)"))?;
            if !chip.starts_with("/dev/") {
                return Err(bad("the chip must be a /dev/gpiochipN path"));
            }
            if !cfg!(feature = "gpio") {
                return Err(bad(
                    "this agent was built without GPIO support: build it with the cargo feature `gpio`",
                ));
            }
            return Ok(PinSpec::Gpio {
                chip: chip.into(),
                line,
            });
        }
        Err(bad("use gpio:/dev/gpiochipN:LINE or sim:/path/to/file"))
    }
}

/// The simulated pin: level changes appended to a file (format above).
#[derive(Debug)]
pub struct SimPin {
    path: PathBuf,
    file: std::fs::File,
    level: Option<bool>,
}

/// A simulated pin's I/O failure.
#[derive(Debug)]
pub struct SimPinError(pub std::io::Error);

impl embedded_hal::digital::Error for SimPinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl SimPin {
    pub fn open(path: &Path) -> std::io::Result<SimPin> {
        Ok(SimPin {
            path: path.to_path_buf(),
            file: Self::append(path)?,
            level: None,
        })
    }

    fn append(path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// Writes an annotation line (`# TEXT`).
    pub fn note(&mut self, text: &str) -> std::io::Result<()> {
        self.rotate()?;
        writeln!(self.file, "# {text}")
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.file.metadata()?.len() < SIM_ROTATE {
            return Ok(());
        }
        let mut old = self.path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = Self::append(&self.path)?;
        if let Some(l) = self.level {
            writeln!(
                self.file,
                "{} {}",
                crate::reconcile::engine::wall_ms(),
                u8::from(l)
            )?;
        }
        Ok(())
    }

    fn set(&mut self, level: bool) -> Result<(), SimPinError> {
        if self.level == Some(level) {
            return Ok(());
        }
        self.rotate().map_err(SimPinError)?;
        writeln!(
            self.file,
            "{} {}",
            crate::reconcile::engine::wall_ms(),
            u8::from(level)
        )
        .map_err(SimPinError)?;
        self.level = Some(level);
        Ok(())
    }
}

impl ErrorType for SimPin {
    type Error = SimPinError;
}

impl OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.set(false)
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.set(true)
    }
}

/// Something that can show annotations (the simulated pin); real pins
/// ignore them.
pub trait Annotate {
    fn annotate(&mut self, _text: &str) {}
}

impl Annotate for SimPin {
    fn annotate(&mut self, text: &str) {
        let _ = self.note(text);
    }
}

/// A GPIO character-device line as an `OutputPin`.
#[cfg(feature = "gpio")]
pub fn gpio_pin(chip: &Path, line: u32) -> Result<linux_embedded_hal::CdevPin, LedError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let err = |reason: String| LedError::Pin {
        pin: format!("{}:{line}", chip.display()),
        reason,
    };
    let mut c = Chip::new(chip).map_err(|e| err(format!("cannot open: {e}")))?;
    let handle = c
        .get_line(line)
        .and_then(|l| l.request(LineRequestFlags::OUTPUT, 0, "berth-agent status"))
        .map_err(|e| err(format!("cannot request the line as an output: {e}")))?;
    linux_embedded_hal::CdevPin::new(handle).map_err(|e| err(e.to_string()))
}

#[cfg(feature = "gpio")]
impl Annotate for linux_embedded_hal::CdevPin {}

/// Plays patterns on a pin from its own thread.
#[derive(Debug)]
pub struct Led {
    tx: mpsc::Sender<Option<Pattern>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Led {
    /// Starts the LED thread, dark until the first [`Led::show`].
    pub fn start<P>(mut pin: P, name: String) -> Led
    where
        P: OutputPin + Annotate + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Option<Pattern>>();
        let thread = std::thread::Builder::new()
            .name("berth-led".into())
            .spawn(move || {
                let mut current: Option<Pattern> = None;
                let mut step = 0usize;
                let mut next = Instant::now();
                let mut failed = false;
                loop {
                    let wait = next.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(if current.is_some() {
                        wait
                    } else {
                        Duration::from_secs(3600)
                    }) {
                        Ok(Some(p)) if Some(p) != current => {
                            pin.annotate(&format!("pattern {}", p.name()));
                            current = Some(p);
                            step = 0;
                            next = Instant::now();
                            continue;
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                            let _ = pin.set_low();
                            return;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                    let Some(p) = current else { continue };
                    let (lit, ms) = p.steps()[step % p.steps().len()];
                    let r = if lit { pin.set_high() } else { pin.set_low() };
                    if let Err(e) = r {
                        if !failed {
                            tracing::warn!(pin = %name, error = ?e, "cannot drive the status LED");
                            failed = true;
                        }
                    }
                    step += 1;
                    next += Duration::from_millis(ms);
                }
            })
            .expect("spawn the LED thread");
        Led {
            tx,
            thread: Some(thread),
        }
    }

    /// Shows `p` (a pattern already showing keeps its rhythm).
    pub fn show(&self, p: Pattern) {
        let _ = self.tx.send(Some(p));
    }
}

impl Drop for Led {
    /// Turns the LED off and ends the thread.
    fn drop(&mut self) {
        let _ = self.tx.send(None);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the LED described by `spec`.
pub fn open(spec: &PinSpec) -> Result<Led, LedError> {
    match spec {
        PinSpec::Sim(path) => {
            let pin = SimPin::open(path).map_err(|e| LedError::Pin {
                pin: path.display().to_string(),
                reason: format!("cannot open the simulated pin's file: {e}"),
            })?;
            Ok(Led::start(pin, path.display().to_string()))
        }
        #[cfg(feature = "gpio")]
        PinSpec::Gpio { chip, line } => Ok(Led::start(
            gpio_pin(chip, *line)?,
            format!("{}:{line}", chip.display()),
        )),
        #[cfg(not(feature = "gpio"))]
        PinSpec::Gpio { chip, line } => Err(LedError::Pin {
            pin: format!("{}:{line}", chip.display()),
            reason: "this agent was built without GPIO support (cargo feature `gpio`)".into(),
        }),
    }
}

/// The level lines of a simulated pin's file: (millis, lit).
pub fn read_sim(text: &str) -> Vec<(u64, bool)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (t, v) = l.split_once(' ')?;
            Some((t.parse().ok()?, v == "1"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_specs_parse_or_say_what_to_write() {
        assert_eq!(
            PinSpec::parse("sim:/run/berth/led").unwrap(),
            PinSpec::Sim("/run/berth/led".into())
        );
        for bad in [
            "sim:led",
            "gpio:/dev/gpiochip0",
            "gpio:/dev/gpiochip0:x",
            "led17",
        ] {
            let e = PinSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_simulated_pin_records_timed_transitions_of_each_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("led");
        let led = open(&PinSpec::Sim(f.clone())).unwrap();
        led.show(Pattern::Error);
        std::thread::sleep(Duration::from_millis(650));
        led.show(Pattern::Updating);
        std::thread::sleep(Duration::from_millis(1100));
        drop(led);
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.starts_with("# pattern error\n"), "{text}");
        let (error, updating) = text.split_once("# pattern updating\n").unwrap();
        let e = read_sim(error);
        let u = read_sim(updating);
        // Levels alternate; error toggles faster than updating (medians,
        // so a loaded machine's late wake-ups do not matter).
        assert!(e.len() >= 4 && u.len() >= 3, "{text}");
        assert!(e.windows(2).all(|w| w[0].1 != w[1].1), "{text}");
        let median = |v: &[(u64, bool)]| {
            let mut g: Vec<u64> = v.windows(2).map(|w| w[1].0 - w[0].0).collect();
            g.sort_unstable();
            g[g.len() / 2]
        };
        assert!(median(&e) < median(&u[..u.len() - 1]), "{text}");
        // Dropping the LED leaves it dark.
        assert!(!u.last().unwrap().1, "{text}");
    }
}
