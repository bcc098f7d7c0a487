//! Power relay and reset line of a device under test, over any embedded-hal
//! `OutputPin` (a GPIO line on a real rig, a simulated pin in tests).

use embedded_hal::digital::{ErrorType, OutputPin, PinState};

/// Which electrical level switches the relay (or asserts reset) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    ActiveHigh,
    ActiveLow,
}

impl Polarity {
    fn level(self, on: bool) -> PinState {
        PinState::from(on == (self == Polarity::ActiveHigh))
    }
}

/// A pin failure, with the line it happened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot drive the {line} line of device '{device}': {detail}")]
pub struct PinError {
    pub device: String,
    pub line: &'static str,
    pub detail: String,
}

/// Power and reset control of one device under test.
#[derive(Debug)]
pub struct PowerControl<P, R> {
    device: String,
    power: P,
    reset: R,
    polarity: Polarity,
    powered: bool,
}

impl<P: OutputPin, R: OutputPin> PowerControl<P, R> {
    /// Takes the pins and drives the device off and out of reset, so the rig
    /// starts from a known state.
    pub fn new(device: &str, power: P, reset: R, polarity: Polarity) -> Result<Self, PinError> {
        let mut c = Self {
            device: device.to_string(),
            power,
            reset,
            polarity,
            powered: true,
        };
        c.set_power(false)?;
        c.set_reset(false)?;
        Ok(c)
    }

    fn fail<E: core::fmt::Debug>(&self, line: &'static str) -> impl FnOnce(E) -> PinError + '_ {
        move |e| PinError {
            device: self.device.clone(),
            line,
            detail: format!("{e:?}"),
        }
    }

    /// Switches power on or off.
    pub fn set_power(&mut self, on: bool) -> Result<(), PinError>
    where
        <P as ErrorType>::Error: core::fmt::Debug,
    {
        let level = self.polarity.level(on);
        let r = self.power.set_state(level);
        r.map_err(self.fail("power"))?;
        self.powered = on;
        Ok(())
    }

    /// Asserts or releases the reset line.
    pub fn set_reset(&mut self, asserted: bool) -> Result<(), PinError>
    where
        <R as ErrorType>::Error: core::fmt::Debug,
    {
        let level = self.polarity.level(asserted);
        let r = self.reset.set_state(level);
        r.map_err(self.fail("reset"))
    }

    /// Whether the rig last switched the device on.
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// Gives the pins back.
    pub fn release(self) -> (P, R) {
        (self.power, self.reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;

    /// A simulated pin that records every level it was driven to.
    #[derive(Debug, Default)]
    struct Recorder(Vec<bool>);

    impl ErrorType for Recorder {
        type Error = Infallible;
    }

    impl OutputPin for Recorder {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.push(true);
            Ok(())
        }
    }

    #[test]
    fn active_low_relay_levels() {
        let mut c = PowerControl::new(
            "dut1",
            Recorder::default(),
            Recorder::default(),
            Polarity::ActiveLow,
        )
        .unwrap();
        assert!(!c.is_powered());
        c.set_power(true).unwrap();
        c.set_reset(true).unwrap();
        assert!(c.is_powered());
        let (p, r) = c.release();
        assert_eq!(p.0, [true, false], "off = high, then on = low");
        assert_eq!(r.0, [true, false]);
    }

    #[test]
    fn active_high_relay_levels() {
        let mut c = PowerControl::new(
            "dut2",
            Recorder::default(),
            Recorder::default(),
            Polarity::ActiveHigh,
        )
        .unwrap();
        c.set_power(true).unwrap();
        c.set_power(false).unwrap();
        let (p, _) = c.release();
        assert_eq!(p.0, [false, true, false]);
    }
}
