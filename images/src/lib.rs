//! fogswarm-images: a daemonless multi-arch image builder and registry
//! client.
//!
//! Takes one static binary per platform, wraps each in a one-layer scratch
//! image (deterministic: the same inputs give the same digests), assembles
//! an OCI index or a Docker manifest list, and pushes it through the
//! distribution API or writes an OCI layout or a `docker load` archive.

pub mod auth;
pub mod build;
pub mod elf;
pub mod layout;
pub mod platform;
pub mod registry;
pub mod sbom;
pub mod sign;

pub use build::{build, BuiltImage, Format, ImageSpec};
pub use platform::Platform;
pub use registry::{Reference, RegistryClient};
