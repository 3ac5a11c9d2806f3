//! InfraPilot: a declarative reconciler for the infrastructure around Docker hosts.
//!
//! `api` holds the resource types; the reconcilers and the two runtimes (Kubernetes and
//! standalone) build on them.

pub mod alert;
pub mod api;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod delivery;
pub mod docker;
pub mod edge;
pub mod kubernetes;
pub mod manifest;
pub mod proxy;
pub mod reconcile;
pub mod retry;
pub mod runtime;
pub mod secrets;
pub mod standalone;
pub mod state;
pub mod status;
pub mod telemetry;

/// The version of this build, as `infrapilot --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
