//! The lab's fleet: which devices the config server knows, with which role
//! and labels. Read from a JSON file (`lab up --fleet FILE`) or made up for N
//! devices, and declared on the server by the MACs the lab assigns.

use super::BadInput;
use anyhow::{Context, Result};
use fogswarm_protocol::validate::{self, AutoEnrol, Labels, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A fleet file:
///
/// ```json
/// {"swarm": "fog", "auto_enrol": "off",
///  "devices": {"dev1": {"role": "leader", "labels": {"location": "hall-a"}},
///              "dev4": {"labels": {"temperature_sensor": "1"}, "discover": true}}}
/// ```
///
/// Devices the file does not list boot like the others but are unknown to
/// the server (to try auto-enrolment). `"other_servers": [URL, ...]` are
/// given to the agents before the lab server's own URL, as replicas of a
/// fleet would be: ones that are down show the agents failing over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default = "default_swarm")]
    pub swarm: String,
    #[serde(default)]
    pub auto_enrol: AutoEnrol,
    pub devices: BTreeMap<String, FleetDevice>,
    /// Server URLs the agents try before the lab's own server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetDevice {
    #[serde(default = "default_role")]
    pub role: Role,
    #[serde(default)]
    pub labels: Labels,
    /// Start this device's agent without a server URL: it finds the server
    /// over mDNS.
    #[serde(default)]
    pub discover: bool,
    /// Do not start the agent at boot; `fogswarm lab agent start` does.
    #[serde(default)]
    pub hold: bool,
    /// Register the agent as the engine's runtime at boot (`false`: a
    /// device that cannot be granted hardware until `sh /lab/install.sh`).
    #[serde(default = "yes")]
    pub runtime: bool,
    /// Character devices the device has, made at boot as
    /// `[PATH, MAJOR, MINOR]` (a sensor on /dev/ttyACM0, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<(String, u32, u32)>,
    /// Give the device a TPM 2.0 (a software one, swtpm) that keeps its
    /// identity key across re-images; others keep theirs in a file.
    #[serde(default)]
    pub tpm: bool,
}

fn yes() -> bool {
    true
}

fn default_swarm() -> String {
    "fog".into()
}

fn default_role() -> Role {
    Role::Worker
}

impl Fleet {
    /// The default fleet: dev1 leader, dev2 and dev3 managers, the rest
    /// workers; every device has a location (hall-a, hall-b alternating),
    /// the even ones a temperature sensor.
    pub fn default_for(devices: u32) -> Fleet {
        let devices = (1..=devices)
            .map(|i| {
                let role = match i {
                    1 => Role::Leader,
                    2 | 3 => Role::Manager,
                    _ => Role::Worker,
                };
                let mut labels = Labels::from([(
                    "location".to_string(),
                    if i % 2 == 1 { "hall-a" } else { "hall-b" }.to_string(),
                )]);
                if i % 2 == 0 {
                    labels.insert("temperature_sensor".into(), "1".into());
                }
                (
                    format!("dev{i}"),
                    FleetDevice {
                        role,
                        labels,
                        discover: false,
                        hold: false,
                        runtime: true,
                        device_nodes: vec![],
                        tpm: false,
                    },
                )
            })
            .collect();
        Fleet {
            swarm: "fog".into(),
            auto_enrol: AutoEnrol::Off,
            devices,
            other_servers: Vec::new(),
        }
    }

    /// Reads and checks a fleet file against a lab of `devices` devices.
    pub fn load(path: &std::path::Path, devices: u32) -> Result<Fleet> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the fleet file {}", path.display()))?;
        let fleet: Fleet = serde_json::from_slice(&bytes)
            .map_err(|e| BadInput(format!("fleet file {}: {e}", path.display())))?;
        fleet
            .check(devices)
            .map_err(|e| BadInput(format!("fleet file {}: {e}", path.display())))?;
        Ok(fleet)
    }

    fn check(&self, devices: u32) -> std::result::Result<(), String> {
        validate::validate_swarm_name(&self.swarm).map_err(|e| e.to_string())?;
        for url in &self.other_servers {
            if !url.starts_with("https://") || url.contains(',') {
                return Err(format!(
                    "other_servers: {url:?} is not one https:// URL (the lab's CA is pinned)"
                ));
            }
        }
        let mut leaders = 0;
        for (name, device) in &self.devices {
            let index: u32 = name
                .strip_prefix("dev")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    format!("device {name:?} is not a lab device name (dev1, dev2, ...)")
                })?;
            if index == 0 || index > devices {
                return Err(format!(
                    "device {name} is not in a lab of {devices} devices"
                ));
            }
            validate::validate_operator_labels(&device.labels)
                .map_err(|e| format!("{name}: {e}"))?;
            if device.role == Role::Leader {
                leaders += 1;
            }
        }
        if leaders > 1 {
            return Err(format!(
                "{leaders} devices are declared leader; a swarm has at most one"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fleet_of_five() {
        let f = Fleet::default_for(5);
        let roles: Vec<Role> = f.devices.values().map(|d| d.role).collect();
        assert_eq!(
            roles,
            [
                Role::Leader,
                Role::Manager,
                Role::Manager,
                Role::Worker,
                Role::Worker
            ]
        );
        assert_eq!(
            f.devices["dev2"]
                .labels
                .get("temperature_sensor")
                .map(String::as_str),
            Some("1")
        );
        assert!(!f.devices["dev3"].labels.contains_key("temperature_sensor"));
        assert!(f.check(5).is_ok());
    }

    #[test]
    fn fleet_files_are_checked() {
        let two_leaders: Fleet = serde_json::from_str(
            r#"{"devices": {"dev1": {"role": "leader"}, "dev2": {"role": "leader"}}}"#,
        )
        .expect("parse");
        assert!(two_leaders
            .check(2)
            .expect_err("two")
            .contains("2 devices are declared leader"));
        let outside: Fleet = serde_json::from_str(r#"{"devices": {"dev9": {}}}"#).expect("parse");
        assert!(outside.check(3).is_err());
        let bad_name: Fleet =
            serde_json::from_str(r#"{"devices": {"gateway": {}}}"#).expect("parse");
        assert!(bad_name.check(3).is_err());
        assert!(serde_json::from_str::<Fleet>(r#"{"devices": {}, "swram": "x"}"#).is_err());
    }
}
