//! The `fogswarm` command's library: engine access, the lab, and the
//! operator commands, reused by the end-to-end tests.

/// Engine access lives with the other clients; re-exported for the lab.
pub use fogswarm_client::engine;
pub mod agent;
/// Compose files are a crate of their own (the server reads pasted ones).
pub use fogswarm_compose as compose;
pub mod files;
pub mod fleet;
pub mod image;
/// The lab is a crate of its own; the CLI keeps only its `lab` commands.
pub use fogswarm_lab as lab;
pub mod logs;
pub mod service;
pub mod supply;
pub mod table;
pub mod trust;
