//! Standalone mode: the same reconcilers without a cluster. Manifests in directories play the
//! API server's objects, and a state database keeps what the API server would (uid,
//! generation, status, finalizer state, events).

mod dispatch;
pub mod objects;
mod queue;
pub mod runtime;
pub mod scan;
pub mod store;
pub mod sync;
