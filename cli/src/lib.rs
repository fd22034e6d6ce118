//! The `fogswarm` command's library: engine access, the lab, and the
//! operator commands, reused by the end-to-end tests.

pub mod engine;
pub mod fleet;
pub mod lab;
pub mod table;
