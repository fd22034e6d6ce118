//! Wire types and validation shared by the fogswarm server, agent and CLI.
//!
//! One rule set, no I/O: the server, the agent and the CLI all validate with
//! the same code, so a value the CLI accepts is a value the server accepts.

pub mod api;
pub mod constraint;
pub mod device_id;
pub mod hardware;
pub mod identity;
pub mod logs;
pub mod secret;
pub mod service;
pub mod telemetry;
pub mod time;
pub mod validate;
pub mod version;

pub use device_id::{DeviceId, DeviceIdError, MacAddress};
pub use validate::{AutoEnrol, Labels, Role, ValidationError};
