//! What every reconciler shares, whichever runtime drives it.
//!
//! A reconciler is a pipeline: validate → build the desired state (pure) → apply (the only
//! I/O, through the narrow traits in [`Context`]) → compute the status from what was applied.
//! It returns the new status rather than writing it: the Kubernetes runtime applies it with
//! server-side apply, the standalone runtime stores it, and both skip the write when nothing
//! changed.

pub mod alert_channel;
pub mod alert_rule;
pub mod backup;
pub mod proxy;
#[cfg(test)]
pub(crate) mod tests_support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;

use crate::audit::{Audit, ObjectRef};
use crate::delivery::Notifier;
pub use crate::retry::Category;
pub use crate::runtime::objects::Relation;
pub use crate::runtime::rbac::Rule;
use crate::secrets::SecretSource;

/// The outside world as reconcilers see it.
#[derive(Clone)]
pub struct Context {
    pub secrets: Arc<dyn SecretSource>,
    pub notifier: Arc<dyn Notifier>,
    pub audit: Arc<dyn Audit>,
    pub events: Arc<dyn Events>,
    /// The current time; tests fix it.
    pub now: fn() -> Timestamp,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Context")
    }
}

/// The audit and event reference of an object: kind, namespace, name, uid and generation.
pub fn object_ref<K: kube::Resource<DynamicType = ()>>(object: &K) -> ObjectRef {
    let meta = object.meta();
    ObjectRef {
        kind: K::kind(&()).into_owned(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        generation: meta.generation.unwrap_or_default(),
    }
}

/// Normal or Warning, as Kubernetes Events have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something worth telling the object's owner: a Kubernetes Event, or a row in standalone
/// mode's event table that `infrapilot describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    /// CamelCase, low cardinality: `Verified`, `DeliveryFailed`.
    pub reason: String,
    /// What was done: `Verify`, `Deliver`.
    pub action: String,
    /// A sentence; never a secret.
    pub note: String,
}

/// Publishes events about objects.
#[async_trait]
pub trait Events: Send + Sync {
    async fn publish(&self, object: &ObjectRef, event: Event);
}

/// When to look at the object again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Only when it changes.
    OnChange,
    After(Duration),
}

/// A reconcile's result: the status to store, when to come back, and, when it failed, why
/// (the runtime backs off per object and keys its metrics on the category).
#[derive(Clone, Debug, PartialEq)]
pub struct Applied<S> {
    pub status: S,
    pub requeue: Requeue,
    pub failure: Option<Failure>,
}

/// A failed reconcile, for backoff, metrics and events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What kind of cause: keys the backoff and the metrics.
    pub category: Category,
    pub message: String,
}

/// One kind's reconciler, as both runtimes drive it.
///
/// The runtimes own everything around the call: reading the object, finalizers, writing the
/// status only when it changed, backoff, metrics. The reconciler owns what the object means.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    type Object: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    type Status: serde::Serialize + PartialEq + Clone + Send + Sync + 'static;

    /// The controller's name: in audit records, metrics and the field manager
    /// `infrapilot.io/<controller>`.
    const CONTROLLER: &'static str;
    /// The finalizer that guards cleanup, for kinds that own something outside their object.
    /// `None` for kinds that own nothing: a finalizer would then only block deletion while the
    /// operator is down.
    const FINALIZER: Option<&'static str>;

    /// The status the object carries now.
    fn status(object: &Self::Object) -> Option<&Self::Status>;

    fn set_status(object: &mut Self::Object, status: Self::Status);

    /// Converges the world to the object and returns the status it should have.
    async fn reconcile(&self, object: &Self::Object, ctx: &Context) -> Applied<Self::Status>;

    /// Undoes what the object owns before it goes. Only called for kinds with a finalizer.
    async fn cleanup(&self, object: &Self::Object, ctx: &Context) -> Result<(), Failure>;

    /// Objects to reconcile again because something outside the API changed (a Docker
    /// event), as (namespace, name). Taken once by the runtime; `None` for kinds that only
    /// follow their objects.
    fn triggers(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>> {
        None
    }

    /// Other kinds whose changes concern objects of this kind ("reconcile a policy when one of
    /// its runs changes"). Both runtimes honour them.
    fn relations() -> Vec<Relation> {
        Vec::new()
    }

    /// The object with `uid` is gone (deleted, or no longer in the runtime's view): drop what
    /// the reconciler keeps in memory for it. Kinds without a finalizer are never reconciled
    /// on their way out, so this is where they hear of it.
    fn forget(&self, _uid: &str) {}

    /// The API requests this reconciler makes beyond reading its own kind and writing its
    /// status (and its finalizer, when it has one), which every controller is granted: they
    /// make the operator's ClusterRole (`infrapilot rbac`).
    const RBAC: &'static [Rule] = &[];
}
