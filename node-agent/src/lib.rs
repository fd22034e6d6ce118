//! fogswarm-agent: the small static program on every device that turns a
//! generic image into an active, labelled swarm node, and keeps it so.

pub mod backoff;
pub mod config;
pub mod discovery;
pub mod facts;
pub mod flow;
pub mod identity;
pub mod install;
pub mod logs;
pub mod manager;
pub mod quorum;
pub mod runtime;
pub mod services;
pub mod state;
pub mod swarm;
