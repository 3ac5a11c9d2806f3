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
use kube::runtime::reflector::{self, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{PredicateConfig, WatchStreamExt};
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use tracing::{info, warn};

use super::objects;
use super::status::{apply_status, field_manager};
use crate::api::common::Conditions;
use crate::audit::ObjectRef;
use crate::reconcile::{Event, EventType, Events, Failure, Reconciler};
use crate::retry::Category;
use crate::runtime::driver::{Driver, Next, Reconciled, StatusWriter, identity};
use crate::status::{self, Observation};

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
    pub driver: Driver<R>,
    pub client: kube::Client,
    pub events: Arc<dyn Events>,
    /// How often an object is looked at again when nothing changed.
    pub resync: Duration,
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
    pub fn category(&self) -> Category {
        match self {
            Error::Kube(_) => Category::Kubernetes,
            Error::Reconcile(failure) => failure.category,
            Error::Finalizer(_) => Category::Finalizer,
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

/// Reconciles one object; see the module's documentation for what happens around the call.
pub async fn reconcile<R>(
    guard: Arc<DeserializeGuard<R::Object>>,
    shared: Arc<Shared<R>>,
) -> Result<Action, Error>
where
    R: Reconciler,
    R::Object: ScopedApi,
{
    match &guard.0 {
        Ok(object) => reconcile_object(object, &shared).await,
        Err(invalid) => {
            let started = Instant::now();
            report_invalid::<R>(invalid, &shared).await;
            shared.driver.metrics.reconciled(
                R::CONTROLLER,
                started.elapsed(),
                Some(Category::Invalid),
            );
            Ok(Action::await_change())
        }
    }
}

/// What a reconcile answers to: the spec (its generation), deletion, finalizers, labels and
/// annotations. Not the status, nor the resourceVersion a status write moves.
pub fn spec_or_lifecycle<K: Resource>(object: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    Some(hasher.finish())
}

fn guard_meta<K: Resource>(
    guard: &DeserializeGuard<K>,
) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    match &guard.0 {
        Ok(object) => object.meta(),
        Err(invalid) => &invalid.metadata,
    }
}

fn guard_identity<K: Resource>(guard: &DeserializeGuard<K>) -> String {
    identity(guard_meta(guard))
}

/// The action after a failed reconcile: back off by the error's category.
pub fn error_policy<R: Reconciler>(
    guard: Arc<DeserializeGuard<R::Object>>,
    error: &Error,
    shared: Arc<Shared<R>>,
) -> Action {
    let uid = guard_identity(&guard);
    let name = guard_meta(&guard).name.clone().unwrap_or_default();
    let delay = match error {
        // Counted and logged where the reconciler failed.
        Error::Reconcile(failure) => shared.driver.retry_in(&uid, failure.category),
        _ => shared.driver.failed(&uid, error.category()),
    };
    warn!(controller = R::CONTROLLER, object = %name, category = %error.category(), retry_in = ?delay, "{error}");
    Action::requeue(delay)
}

async fn reconcile_object<R>(object: &R::Object, shared: &Arc<Shared<R>>) -> Result<Action, Error>
where
    R: Reconciler,
    R::Object: ScopedApi,
{
    let api: Api<R::Object> =
        R::Object::scoped_api(shared.client.clone(), object.meta().namespace.as_deref());
    match R::FINALIZER {
        Some(name) => finalizer(&api, name, Arc::new(object.clone()), |event| async {
            match event {
                finalizer::Event::Apply(object) => Ok(apply(&api, object.as_ref(), shared).await),
                finalizer::Event::Cleanup(object) => {
                    shared
                        .driver
                        .cleanup(&object)
                        .await
                        .map_err(Error::Reconcile)?;
                    if let Ok(mut written) = shared.written.lock() {
                        written.remove(&identity(object.meta()));
                    }
                    info!(controller = R::CONTROLLER, object = %object.name_any(), "cleaned up; removing the finalizer");
                    Ok(Action::await_change())
                }
            }
        })
        .await
        .map_err(Error::from_finalizer),
        // Nothing to clean up: a deleted object is simply gone.
        None if object.meta().deletion_timestamp.is_some() => Ok(Action::await_change()),
        None => Ok(apply(&api, object, shared).await),
    }
}

/// Runs the reconciler through the driver, which applies the status it returns.
async fn apply<R: Reconciler>(
    api: &Api<R::Object>,
    object: &R::Object,
    shared: &Shared<R>,
) -> Action {
    let uid = identity(object.meta());
    let remembered = shared
        .written
        .lock()
        .ok()
        .and_then(|written| written.get(&uid).cloned());
    // Reconcile on the newer status, so that a stale cache cannot repeat a finished side
    // effect.
    let current = match remembered {
        Some(status) if R::status(object) != Some(&status) => {
            let mut current = object.clone();
            R::set_status(&mut current, status);
            std::borrow::Cow::Owned(current)
        }
        _ => std::borrow::Cow::Borrowed(object),
    };
    let writer = ApplyStatus::<R> { api };
    let Reconciled {
        status,
        stored,
        next,
    } = shared
        .driver
        .reconcile(&current, R::status(&current), &writer)
        .await;
    if stored && let Ok(mut written) = shared.written.lock() {
        written.insert(uid, status);
    }
    match next {
        Next::After(delay) => Action::requeue(delay),
        Next::OnChange => Action::requeue(shared.resync),
    }
}

/// Status by server-side apply.
struct ApplyStatus<'a, R: Reconciler> {
    api: &'a Api<R::Object>,
}

#[async_trait::async_trait]
impl<R: Reconciler> StatusWriter<R> for ApplyStatus<'_, R> {
    async fn write(
        &self,
        object: &R::Object,
        current: Option<&R::Status>,
        status: &R::Status,
    ) -> Result<bool, Failure> {
        apply_status(self.api, object, current, status, R::CONTROLLER)
            .await
            .map_err(|error| Failure {
                category: Category::Kubernetes,
                message: format!("cannot write the status: {error}"),
            })
    }
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
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send + 'static,
) where
    R: Reconciler,
    R::Object: ScopedApi,
{
    let api: Api<DeserializeGuard<R::Object>> =
        R::Object::scoped_api(shared.client.clone(), namespace.as_deref());
    // The cache sees every change; a reconcile is triggered only by a change a person (or
    // another controller) made. An object's own status write comes back as a watch event, and
    // reconciling on it would override the backoff of a failing object with an immediate retry.
    let (reader, writer) = reflector::store();
    let changes = reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).default_backoff(),
    )
    .applied_objects()
    .predicate_filter(spec_or_lifecycle, PredicateConfig::default());
    let mut controller = Controller::for_stream(changes, reader.clone());
    for relation in R::relations() {
        let reader = reader.clone();
        let resource = objects::resource(relation.from);
        let api: Api<DynamicObject> = match namespace.as_deref() {
            Some(namespace) if relation.from.namespaced() => {
                Api::namespaced_with(shared.client.clone(), namespace, &resource)
            }
            _ => Api::all_with(shared.client.clone(), &resource),
        };
        let config = watcher::Config::default().any_semantic();
        controller = controller.watches_with(api, resource, config, move |object| {
            let value = serde_json::to_value(&object).unwrap_or_default();
            let mut names = Vec::new();
            for (namespace, name) in (relation.map)(&value) {
                if name == crate::runtime::objects::EVERY {
                    let wanted =
                        |guard: &DeserializeGuard<R::Object>| match (&guard.0, relation.every) {
                            (Ok(object), Some(every)) => {
                                every(&serde_json::to_value(object).unwrap_or_default())
                            }
                            // One that cannot be read is reconciled to say so.
                            _ => true,
                        };
                    names.extend(
                        reader
                            .state()
                            .iter()
                            .filter(|o| guard_meta(o).namespace.as_deref() == Some(&namespace))
                            .filter(|o| wanted(o))
                            .filter_map(|o| guard_meta(o).name.clone())
                            .map(|name| (namespace.clone(), name)),
                    );
                } else {
                    names.push((namespace, name));
                }
            }
            names.into_iter().map(|(namespace, name)| {
                kube::runtime::reflector::ObjectRef::<DeserializeGuard<R::Object>>::new(&name)
                    .within(&namespace)
            })
        });
    }
    if let Some(mut triggers) = shared.driver.reconciler.triggers() {
        let objects =
            futures::stream::poll_fn(move |cx| triggers.poll_recv(cx)).map(|(namespace, name)| {
                kube::runtime::reflector::ObjectRef::<DeserializeGuard<R::Object>>::new(&name)
                    .within(&namespace)
            });
        controller = controller.reconcile_on(objects);
    }
    let store = controller.store();
    // Deleted objects without a finalizer are never reconciled again: forget their written
    // status, and tell the driver, once they have left the cache.
    let pruned = {
        let (store, shared) = (store.clone(), shared.clone());
        tokio::spawn(async move {
            // Often enough that a deleted rule's alerts leave /metrics soon.
            let mut tick = tokio::time::interval(shared.resync.min(Duration::from_secs(10)));
            loop {
                tick.tick().await;
                let present: std::collections::HashSet<String> =
                    store.state().iter().map(|o| guard_identity(o)).collect();
                if let Ok(mut written) = shared.written.lock() {
                    written.retain(|uid, _| present.contains(uid));
                }
                shared.driver.forget_absent(&present);
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
