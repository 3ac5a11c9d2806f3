//! The Kubernetes side of the runtime: how objects, secrets and status reach the API server.
//! Kept thin on purpose: validation, desired state and side effects live in the reconcilers,
//! which both modes share.

pub mod controller;
pub mod crd;
pub mod events;
pub mod leader;
pub mod objects;
pub mod runtime;
pub mod secrets;
pub mod status;

#[cfg(test)]
mod mock;
