//! Topic names. Fleet and device ids are DNS labels (checked at
//! construction), so they can never inject `+`, `#` or `/` into a topic.

use crate::names::{NameError, WorkloadName};

/// The topics of one device in one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    fleet: String,
    device: String,
}

impl Topics {
    /// `prefix` is one or more `/`-separated labels; fleet and device are labels.
    pub fn new(prefix: &str, fleet: &str, device: &str) -> Result<Self, NameError> {
        for part in prefix.split('/') {
            WorkloadName::parse(part).map_err(|e| NameError {
                kind: "topic prefix",
                ..e
            })?;
        }
        let fleet = WorkloadName::parse(fleet).map_err(|e| NameError {
            kind: "fleet id",
            ..e
        })?;
        let device = WorkloadName::parse(device).map_err(|e| NameError {
            kind: "device id",
            ..e
        })?;
        Ok(Self {
            prefix: prefix.to_string(),
            fleet: fleet.to_string(),
            device: device.to_string(),
        })
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// The MQTT client id: unique per device.
    pub fn client_id(&self) -> String {
        format!("berth-{}", self.device)
    }

    pub fn fleet_timestamp(&self) -> String {
        format!("{}/fleets/{}/timestamp", self.prefix, self.fleet)
    }

    pub fn device_state(&self) -> String {
        format!("{}/devices/{}/state", self.prefix, self.device)
    }

    pub fn device_events(&self) -> String {
        format!("{}/devices/{}/events", self.prefix, self.device)
    }

    pub fn device_status(&self) -> String {
        format!("{}/devices/{}/status", self.prefix, self.device)
    }

    /// Wildcard for an operator watching every device's state.
    pub fn all_device_states(prefix: &str) -> String {
        format!("{prefix}/devices/+/state")
    }

    /// Wildcard for an operator (or a test rig) watching every device's events.
    pub fn all_device_events(prefix: &str) -> String {
        format!("{prefix}/devices/+/events")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_built_from_checked_labels() {
        let t = Topics::new("berth/prod", "pumps", "gw-1").unwrap();
        assert_eq!(t.fleet_timestamp(), "berth/prod/fleets/pumps/timestamp");
        assert_eq!(t.device_state(), "berth/prod/devices/gw-1/state");
        assert_eq!(t.device_status(), "berth/prod/devices/gw-1/status");
        assert_eq!(t.client_id(), "berth-gw-1");
    }

    #[test]
    fn wildcards_and_separators_are_refused() {
        for (p, f, d) in [
            ("berth", "pumps", "gw/1"),
            ("berth", "#", "gw-1"),
            ("berth", "pumps", "+"),
            ("", "pumps", "gw-1"),
            ("berth//x", "pumps", "gw-1"),
        ] {
            assert!(Topics::new(p, f, d).is_err(), "{p} {f} {d}");
        }
        let e = Topics::new("berth", "pumps", "GW").unwrap_err();
        assert_eq!(e.kind, "device id");
    }
}
