//! The `fogswarm` command's library: engine access, the lab, and the
//! operator commands, reused by the end-to-end tests.

/// Engine access lives with the other clients; re-exported for the lab.
pub use fogswarm_client::engine;
pub mod compose;
pub mod files;
pub mod fleet;
pub mod image;
pub mod lab;
pub mod service;
pub mod supply;
pub mod table;
