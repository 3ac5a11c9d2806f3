//! InfraPilot: a declarative reconciler for the infrastructure around Docker hosts.
//!
//! The resource types, the reconcilers and the two runtimes (Kubernetes and standalone) land
//! with the operator runtime issue; this crate currently only carries the build identity that
//! the binary and the end-to-end tests share.

/// The version of this build, as `infrapilot --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
