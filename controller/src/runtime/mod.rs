//! What both runtimes (Kubernetes and standalone) share: the registry of controllers and the
//! services they are built from, the driver around every reconcile, the access to other
//! objects, and the ClusterRole the registry implies.

pub mod driver;
pub mod objects;
pub mod rbac;
pub mod registry;
pub mod services;
