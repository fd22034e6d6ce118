//! The protocol version agents and servers speak, sent by each on every
//! request (`Fogswarm-Protocol: MAJOR.MINOR`). A server serves agents of
//! its major version down to one minor version older, and tells older
//! ones that they must be updated; a new minor version only adds fields
//! and endpoints (the types that travel accept fields they do not know).

/// This build's protocol version.
pub const PROTOCOL: &str = "1.1";

/// The header each side names its protocol version in.
pub const HEADER: &str = "fogswarm-protocol";
