//! The `fogswarm` command's library: engine access and the lab, reused by
//! the end-to-end tests.

pub mod engine;
pub mod lab;
