//! One kube `Controller` per kind, around the kind's [`Reconciler`].
//!
//! Around each reconcile: objects that cannot be parsed are reported and wait for a change;
//! the finalizer guards cleanup for kinds that own something outside their object; the status
//! is applied only when it changed; failures back off per object, by error category; every
//! reconcile is counted in the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use tracing::{info, warn};

use super::status::{apply_status, field_manager};
use crate::api::common::Conditions;
use crate::audit::ObjectRef;
use crate::reconcile::{Applied, Context, Event, EventType, Events, Failure, Reconciler, Requeue};
use crate::status::{self, Observation};
use crate::telemetry::Metrics;

/// The Api of a kind (or of a wrapper with the kind's scope, such as `DeserializeGuard`),
/// whichever its scope: namespaced kinds are watched in one namespace or all, cluster-scoped
/// kinds everywhere.
pub trait ScopedApi: Resource<DynamicType = ()> + Sized {
    fn scoped_api<T>(client: kube::Client, namespace: Option<&str>) -> Api<T>
    where
        T: Resource<DynamicType = (), Scope = Self::Scope>;
}

macro_rules! namespaced_kinds {
    ($($kind:ty),*) => {$(
        impl ScopedApi for $kind {
            fn scoped_api<T>(client: kube::Client, namespace: Option<&str>) -> Api<T>
            where
                T: Resource<DynamicType = (), Scope = Self::Scope>,
            {
                match namespace {
                    Some(namespace) => Api::namespaced(client, namespace),
                    None => Api::all(client),
                }
            }
        }
    )*};
}

namespaced_kinds!(
    crate::api::proxy::Proxy,
    crate::api::alert::AlertChannel,
    crate::api::alert::AlertRule,
    crate::api::backup::BackupValidationPolicy,
    crate::api::backup::BackupValidationRun
);

impl ScopedApi for crate::api::tenant::Tenant {
    fn scoped_api<T>(client: kube::Client, _namespace: Option<&str>) -> Api<T>
    where
        T: Resource<DynamicType = (), Scope = Self::Scope>,
    {
        Api::all(client)
    }
}

/// What every reconcile of one controller shares.
pub struct Shared<R: Reconciler> {
    pub reconciler: R,
    pub ctx: Context,
    pub client: kube::Client,
    pub events: Arc<dyn Events>,
    pub metrics: Arc<Metrics>,
    /// How often an object is looked at again when nothing changed.
    pub resync: Duration,
    pub backoff: Backoff,
    /// The status last written per object (by uid). The watch cache may not have caught up
    /// with a write when the object is reconciled again; this is newer, and reconciling on it
    /// keeps a stale cache from repeating a finished side effect.
    pub written: Mutex<HashMap<String, R::Status>>,
}

impl<R: Reconciler> std::fmt::Debug for Shared<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("controller", &R::CONTROLLER)
            .finish_non_exhaustive()
    }
}

/// Why a reconcile did not finish; the category keys the backoff and the metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Kubernetes API failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Reconcile(Failure),
    #[error("the finalizer cannot be handled: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Reconcile(failure) => failure.category,
            Error::Finalizer(_) => "finalizer",
        }
    }

    fn from_finalizer(error: finalizer::Error<Error>) -> Self {
        match error {
            finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
            finalizer::Error::AddFinalizer(error) | finalizer::Error::RemoveFinalizer(error) => {
                Error::Kube(error)
            }
            other => Error::Finalizer(other.to_string()),
        }
    }
}

/// Per-object exponential backoff, keyed by uid. Forgets an object once it reconciles cleanly.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before the next attempt after one more failure of `category`.
    pub fn next(&self, uid: &str, category: &str) -> Duration {
        let failures = match self.failures.lock() {
            Ok(mut map) => {
                let count = map.entry(uid.to_owned()).or_default();
                *count = count.saturating_add(1);
                *count
            }
            Err(_) => 1,
        };
        backoff_delay(category, failures)
    }

    pub fn reset(&self, uid: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(uid);
        }
    }
}

/// The delay after `failures` failures in a row: it starts by what the category says about
/// the cause and doubles up to ten minutes. An API hiccup is retried within a second; an
/// unreachable endpoint after a few; a missing Secret or a rejected setting, which a person has
/// to fix, after longer.
pub fn backoff_delay(category: &str, failures: u32) -> Duration {
    let first: u64 = match category {
        "kubernetes" => 1,
        "unreachable" | "timeout" => 5,
        _ => 15,
    };
    let exponent = failures.saturating_sub(1).min(10);
    Duration::from_secs(first.saturating_mul(1 << exponent).min(600))
}

/// Reconciles one object; see the module's documentation for what happens around the call.
pub async fn reconcile<R>(
    guard: Arc<DeserializeGuard<R::Object>>,
    shared: Arc<Shared<R>>,
) -> Result<Action, Error>
where
    R: Reconciler,
    R::Object: ScopedApi,
{
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(object) => reconcile_object(object, &shared).await,
        Err(invalid) => {
            report_invalid::<R>(invalid, &shared).await;
            Ok((Action::await_change(), Some("invalid")))
        }
    };
    let category = match &result {
        Ok((_, category)) => *category,
        Err(error) => Some(error.category()),
    };
    shared
        .metrics
        .reconciled(R::CONTROLLER, started.elapsed(), category);
    result.map(|(action, _)| action)
}

fn guard_uid<K: Resource>(guard: &DeserializeGuard<K>) -> Option<String> {
    match &guard.0 {
        Ok(object) => object.meta().uid.clone(),
        Err(invalid) => invalid.metadata.uid.clone(),
    }
}

/// The action after a failed reconcile: back off by the error's category.
pub fn error_policy<R: Reconciler>(
    guard: Arc<DeserializeGuard<R::Object>>,
    error: &Error,
    shared: Arc<Shared<R>>,
) -> Action {
    let (uid, name) = match &guard.0 {
        Ok(object) => (object.uid(), object.name_any()),
        Err(invalid) => (
            invalid.metadata.uid.clone(),
            invalid.metadata.name.clone().unwrap_or_default(),
        ),
    };
    let delay = shared
        .backoff
        .next(uid.as_deref().unwrap_or(&name), error.category());
    warn!(controller = R::CONTROLLER, object = %name, category = error.category(), retry_in = ?delay, "{error}");
    Action::requeue(delay)
}

async fn reconcile_object<R>(
    object: &R::Object,
    shared: &Arc<Shared<R>>,
) -> Result<(Action, Option<&'static str>), Error>
where
    R: Reconciler,
    R::Object: ScopedApi,
{
    let api: Api<R::Object> =
        R::Object::scoped_api(shared.client.clone(), object.meta().namespace.as_deref());
    let outcome = std::sync::Mutex::new(None);
    let action = match R::FINALIZER {
        Some(name) => finalizer(&api, name, Arc::new(object.clone()), |event| async {
            match event {
                finalizer::Event::Apply(object) => {
                    let (action, category) = apply(&api, object.as_ref(), shared).await?;
                    if let Ok(mut slot) = outcome.lock() {
                        *slot = category;
                    }
                    Ok::<_, Error>(action)
                }
                finalizer::Event::Cleanup(object) => {
                    shared
                        .reconciler
                        .cleanup(&object, &shared.ctx)
                        .await
                        .map_err(Error::Reconcile)?;
                    if let Ok(mut written) = shared.written.lock() {
                        written.remove(&object.uid().unwrap_or_default());
                    }
                    info!(controller = R::CONTROLLER, object = %object.name_any(), "cleaned up; removing the finalizer");
                    Ok(Action::await_change())
                }
            }
        })
        .await
        .map_err(Error::from_finalizer)?,
        // Nothing to clean up: a deleted object is simply gone.
        None if object.meta().deletion_timestamp.is_some() => Action::await_change(),
        None => {
            let (action, category) = apply(&api, object, shared).await?;
            return Ok((action, category));
        }
    };
    let category = outcome.lock().ok().and_then(|slot| *slot);
    Ok((action, category))
}

/// Runs the reconciler and applies the status it returns.
async fn apply<R: Reconciler>(
    api: &Api<R::Object>,
    object: &R::Object,
    shared: &Shared<R>,
) -> Result<(Action, Option<&'static str>), Error> {
    let uid = object.uid().unwrap_or_default();
    let remembered = shared
        .written
        .lock()
        .ok()
        .and_then(|written| written.get(&uid).cloned());
    let current = match remembered {
        Some(status) if R::status(object) != Some(&status) => {
            let mut current = object.clone();
            R::set_status(&mut current, status);
            std::borrow::Cow::Owned(current)
        }
        _ => std::borrow::Cow::Borrowed(object),
    };
    let Applied {
        status,
        requeue,
        failure,
    } = shared.reconciler.reconcile(&current, &shared.ctx).await;
    if apply_status(api, &current, R::status(&current), &status, R::CONTROLLER).await? {
        info!(controller = R::CONTROLLER, object = %object.name_any(), namespace = ?object.namespace(), "status updated");
    }
    if let Some(failure) = &failure {
        warn!(controller = R::CONTROLLER, object = %object.name_any(), namespace = ?object.namespace(), category = failure.category, "{}", failure.message);
    }
    if let Ok(mut written) = shared.written.lock() {
        written.insert(uid.clone(), status);
    }
    let action = match (&failure, requeue) {
        (_, Requeue::After(delay)) => Action::requeue(delay),
        // A failure the reconciler leaves to a change (a missing Secret): Secrets are not
        // watched, so look again on the category's backoff.
        (Some(failure), Requeue::OnChange) => {
            Action::requeue(shared.backoff.next(&uid, failure.category))
        }
        (None, Requeue::OnChange) => Action::requeue(shared.resync),
    };
    if failure.is_none() {
        shared.backoff.reset(&uid);
    }
    Ok((action, failure.map(|f| f.category)))
}

/// An object whose spec this version cannot read: say so on the object (a `Ready=False`
/// condition, written only when it is not already there, and an Event), and wait for a change.
async fn report_invalid<R: Reconciler>(
    invalid: &kube::core::error_boundary::InvalidObject,
    shared: &Shared<R>,
) {
    let meta = &invalid.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let message = format!("the object cannot be read: {}", invalid.error);
    warn!(controller = R::CONTROLLER, object = %name, namespace = ?meta.namespace, "{message}");

    let resource = ApiResource::erase::<R::Object>(&());
    let api: Api<DynamicObject> = match meta.namespace.as_deref() {
        Some(namespace) => Api::namespaced_with(shared.client.clone(), namespace, &resource),
        None => Api::all_with(shared.client.clone(), &resource),
    };
    let current = match api.get_status(&name).await {
        Ok(object) => object
            .data
            .get("status")
            .and_then(|s| s.get("conditions"))
            .and_then(|c| serde_json::from_value::<Conditions>(c.clone()).ok())
            .unwrap_or_default(),
        Err(error) => {
            warn!(object = %name, "cannot read the status of an unreadable object: {error}");
            return;
        }
    };
    let already = current.get(status::READY).is_some_and(|c| {
        c.status == "False"
            && c.reason == "InvalidSpec"
            && c.message == message
            && c.observed_generation == meta.generation
    });
    if already {
        return;
    }
    let mut conditions = current;
    status::set(
        &mut conditions,
        Observation::ready(false, "InvalidSpec", &message),
        meta.generation,
        Timestamp::now(),
    );
    let patch = serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "status": {"observedGeneration": meta.generation, "conditions": conditions},
    });
    let params = PatchParams::apply(&field_manager(R::CONTROLLER)).force();
    if let Err(error) = api.patch_status(&name, &params, &Patch::Apply(patch)).await {
        warn!(object = %name, "cannot write the status of an unreadable object: {error}");
    }
    let object = ObjectRef {
        kind: resource.kind.clone(),
        namespace: meta.namespace.clone(),
        name,
        uid: meta.uid.clone().unwrap_or_default(),
        generation: meta.generation.unwrap_or_default(),
    };
    shared
        .events
        .publish(
            &object,
            Event {
                type_: EventType::Warning,
                reason: "InvalidSpec".to_owned(),
                action: "Reconcile".to_owned(),
                note: message,
            },
        )
        .await;
}

/// Builds the kind's Controller, watching `namespace` (or all), and runs it until `shutdown`
/// completes, letting running reconciles finish. `synced` is called once the watch cache holds
/// the first full list.
pub async fn run<R>(
    shared: Arc<Shared<R>>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send + 'static,
) where
    R: Reconciler,
    R::Object: ScopedApi,
{
    let api: Api<DeserializeGuard<R::Object>> =
        R::Object::scoped_api(shared.client.clone(), namespace);
    let mut controller = Controller::new(api, watcher::Config::default().any_semantic());
    if let Some(mut triggers) = shared.reconciler.triggers() {
        let objects =
            futures::stream::poll_fn(move |cx| triggers.poll_recv(cx)).map(|(namespace, name)| {
                kube::runtime::reflector::ObjectRef::<DeserializeGuard<R::Object>>::new(&name)
                    .within(&namespace)
            });
        controller = controller.reconcile_on(objects);
    }
    let store = controller.store();
    // Deleted objects without a finalizer are never reconciled again: forget their written
    // status once they have left the cache.
    let pruned = {
        let (store, shared) = (store.clone(), shared.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(shared.resync);
            loop {
                tick.tick().await;
                let present: std::collections::HashSet<String> =
                    store.state().iter().filter_map(|o| guard_uid(o)).collect();
                if let Ok(mut written) = shared.written.lock() {
                    written.retain(|uid, _| present.contains(uid));
                }
            }
        })
    };
    tokio::spawn(async move {
        // The store's readiness is a oneshot that wakes only its latest poller, and the
        // Controller polls it too: look again every so often rather than wait to be woken.
        loop {
            match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
                Ok(Ok(())) => break synced(),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<R>, error_policy::<R>, shared)
        .for_each(|result| async move {
            if let Err(error) = result {
                // Reconcile failures are logged by the error policy; these are the watch's
                // own troubles (the API unreachable, RBAC), which the watcher retries.
                match error {
                    kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                    other => warn!(controller = R::CONTROLLER, "{other}"),
                }
            }
        })
        .await;
    pruned.abort();
    info!(controller = R::CONTROLLER, "stopped");
}

#[cfg(test)]
mod tests;
