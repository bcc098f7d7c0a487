//! The real-rig backend: power relays, reset lines and LED inputs on Linux
//! GPIO character devices (`/dev/gpiochipN`, line offsets), through
//! linux-embedded-hal's `CdevPin`. Built with the `gpio` feature.

use std::path::{Path, PathBuf};

use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::CdevPin;
use serde::Deserialize;

use crate::led::LedMonitor;
use crate::power::{Polarity, PowerControl};

/// The lines of one device under test on a real rig.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioLines {
    /// The GPIO chip, e.g. `/dev/gpiochip0`.
    pub chip: PathBuf,
    pub power: u32,
    pub reset: u32,
    pub led: u32,
    /// Whether the relay and reset lines are active-low.
    #[serde(default)]
    pub active_low: bool,
}

/// A GPIO line that could not be requested.
#[derive(Debug, thiserror::Error)]
#[error("cannot request line {offset} ({what}) of {chip} for device '{device}': {source}; check the chip path, the offset (`gpioinfo`) and that no other program holds the line")]
pub struct GpioError {
    pub device: String,
    pub chip: PathBuf,
    pub offset: u32,
    pub what: &'static str,
    #[source]
    pub source: linux_embedded_hal::gpio_cdev::Error,
}

fn line(
    device: &str,
    chip: &Path,
    offset: u32,
    what: &'static str,
    flags: LineRequestFlags,
) -> Result<CdevPin, GpioError> {
    let err = |source| GpioError {
        device: device.to_string(),
        chip: chip.to_path_buf(),
        offset,
        what,
        source,
    };
    let mut c = Chip::new(chip).map_err(err)?;
    let handle = c
        .get_line(offset)
        .and_then(|l| l.request(flags, 0, "berth-hil"))
        .map_err(err)?;
    CdevPin::new(handle).map_err(err)
}

/// Requests the power, reset and LED lines of `device`.
#[allow(clippy::type_complexity)]
pub fn open(
    device: &str,
    lines: &GpioLines,
) -> Result<(PowerControl<CdevPin, CdevPin>, LedMonitor<CdevPin>), String> {
    let power = line(
        device,
        &lines.chip,
        lines.power,
        "power",
        LineRequestFlags::OUTPUT,
    )
    .map_err(|e| e.to_string())?;
    let reset = line(
        device,
        &lines.chip,
        lines.reset,
        "reset",
        LineRequestFlags::OUTPUT,
    )
    .map_err(|e| e.to_string())?;
    let led = line(
        device,
        &lines.chip,
        lines.led,
        "led",
        LineRequestFlags::INPUT,
    )
    .map_err(|e| e.to_string())?;
    let polarity = if lines.active_low {
        Polarity::ActiveLow
    } else {
        Polarity::ActiveHigh
    };
    let pc = PowerControl::new(device, power, reset, polarity).map_err(|e| e.to_string())?;
    Ok((
        pc,
        LedMonitor::new(device, led, std::time::Duration::from_millis(10)),
    ))
}
