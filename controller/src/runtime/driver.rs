//! What happens around every reconcile, in both runtimes: the reconciler runs, its status is
//! written only when it changed, failures are logged with their category and retried on the
//! category's backoff, and every reconcile is counted in the metrics.
//!
//! The runtimes keep only what differs between them: how an object is read, where the status
//! goes ([`StatusWriter`]), and how deletion is guarded (a finalizer in a cluster, a flag in
//! the state database).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::Resource;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::reconcile::{Applied, Context, Failure, Reconciler, Requeue};
use crate::retry::{Backoff, Category};
use crate::telemetry::Metrics;

/// Where a runtime keeps an object's status.
#[async_trait]
pub trait StatusWriter<R: Reconciler>: Send + Sync {
    /// Writes `status` to `object` unless `current` is already exactly that; says whether it
    /// wrote.
    async fn write(
        &self,
        object: &R::Object,
        current: Option<&R::Status>,
        status: &R::Status,
    ) -> Result<bool, Failure>;
}

/// One kind's reconciler with what every reconcile of it shares.
pub struct Driver<R: Reconciler> {
    pub reconciler: R,
    pub ctx: Context,
    pub metrics: Arc<Metrics>,
    /// Failures in a row per object.
    pub backoff: Backoff,
    /// The identities of the objects reconciled so far and not yet forgotten: what
    /// [`Self::forget_absent`] checks, so that an object that came and went between two of
    /// its looks is forgotten too.
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl<R: Reconciler> std::fmt::Debug for Driver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("controller", &R::CONTROLLER)
            .finish_non_exhaustive()
    }
}

/// When to look at an object again after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// After this long (a retry, or a time the reconciler asked for).
    After(Duration),
    /// When it changes, or at the next resync.
    OnChange,
}

impl<R: Reconciler> Driver<R> {
    pub fn new(reconciler: R, ctx: Context, metrics: Arc<Metrics>) -> Self {
        Self {
            reconciler,
            ctx,
            metrics,
            backoff: Backoff::default(),
            seen: std::sync::Mutex::default(),
        }
    }

    /// Reconciles `object` (whose status is `current`: the runtime may know a newer one than
    /// the object carries) and writes the status it should have.
    pub async fn reconcile(
        &self,
        object: &R::Object,
        current: Option<&R::Status>,
        writer: &dyn StatusWriter<R>,
    ) -> Reconciled<R::Status> {
        let started = Instant::now();
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(uid(object));
        }
        let Applied {
            status,
            requeue,
            failure,
        } = self.reconciler.reconcile(object, &self.ctx).await;
        let written = writer.write(object, current, &status).await;
        let stored = written.is_ok();
        let failure = match written {
            Ok(true) => {
                log_status::<R>(object, &status);
                failure
            }
            Ok(false) => failure,
            // The reconcile's own failure is the better explanation; the write is retried with
            // it anyway.
            Err(write) => failure.or(Some(write)),
        };
        let next = self.next(object, requeue, failure.as_ref());
        self.metrics.reconciled(
            R::CONTROLLER,
            started.elapsed(),
            failure.as_ref().map(|f| f.category),
        );
        Reconciled {
            status,
            stored,
            next,
        }
    }

    /// The object with `uid` is gone: its backoff and whatever the reconciler keeps for it go
    /// too.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(uid);
        }
        self.backoff.reset(uid);
        self.reconciler.forget(uid);
    }

    /// Forgets every object reconciled so far whose identity `present` does not hold: for a
    /// runtime that learns of deletions only by what is still there.
    pub fn forget_absent(&self, present: &std::collections::HashSet<String>) {
        let gone: Vec<String> = match self.seen.lock() {
            Ok(seen) => seen.difference(present).cloned().collect(),
            Err(_) => return,
        };
        for uid in gone {
            debug!(controller = R::CONTROLLER, %uid, "gone; forgotten");
            self.forget(&uid);
        }
    }

    /// Undoes what `object` owns before it goes. A failure is logged and counted; the runtime
    /// retries it after [`Self::retry_in`].
    pub async fn cleanup(&self, object: &R::Object) -> Result<(), Failure> {
        let started = Instant::now();
        let result = self.reconciler.cleanup(object, &self.ctx).await;
        self.metrics.reconciled(
            R::CONTROLLER,
            started.elapsed(),
            result.as_ref().err().map(|f| f.category),
        );
        match &result {
            Ok(()) => self.backoff.reset(&uid(object)),
            Err(failure) => {
                warn!(controller = R::CONTROLLER, object = %name(object), category = %failure.category, "cleanup failed: {}", failure.message);
            }
        }
        result
    }

    /// When to try again after one more failure of the object with `uid`.
    pub fn retry_in(&self, uid: &str, category: Category) -> Duration {
        self.backoff.next(uid, category)
    }

    /// Counts a failure outside the reconciler (a finalizer patch) and returns when to try
    /// again.
    pub fn failed(&self, uid: &str, category: Category) -> Duration {
        self.metrics
            .reconciled(R::CONTROLLER, Duration::ZERO, Some(category));
        self.retry_in(uid, category)
    }

    /// The reconciler's own requeue wins (a renewal date, a retry it counts in the status); a
    /// failure that leaves it to a change is retried on its category's backoff anyway, since
    /// what it waits for (a Secret, a container) is not always an object that is watched.
    fn next(&self, object: &R::Object, requeue: Requeue, failure: Option<&Failure>) -> Next {
        let uid = uid(object);
        if let Some(failure) = failure {
            warn!(controller = R::CONTROLLER, object = %name(object), category = %failure.category, "{}", failure.message);
        } else {
            self.backoff.reset(&uid);
        }
        match (failure, requeue) {
            (_, Requeue::After(delay)) => Next::After(delay),
            (Some(failure), Requeue::OnChange) => {
                Next::After(self.backoff.next(&uid, failure.category))
            }
            (None, Requeue::OnChange) => Next::OnChange,
        }
    }
}

/// What a reconcile left: the status the object now has, and when to come back.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconciled<S> {
    pub status: S,
    /// Whether the object now carries `status` (written, or already there). A status that
    /// could not be written must not be taken for the object's.
    pub stored: bool,
    pub next: Next,
}

fn uid<K: Resource>(object: &K) -> String {
    identity(object.meta())
}

/// Who an object is to the runtimes' memory of it (backoff, the status last written, what a
/// reconciler keeps): its uid, or, where an API gives none (the Kubernetes emulator of the
/// tests), its namespace and name.
pub fn identity(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match &meta.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    }
}

fn name<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    match &meta.namespace {
        Some(namespace) => format!("{namespace}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// Logs a status change with its Ready condition, the line people follow in the log.
fn log_status<R: Reconciler>(object: &R::Object, status: &R::Status) {
    let value = serde_json::to_value(status).unwrap_or_default();
    let ready = value["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == crate::status::READY));
    info!(
        controller = R::CONTROLLER,
        object = %name(object),
        ready = ready.and_then(|c| c["status"].as_str()).unwrap_or("Unknown"),
        reason = ready.and_then(|c| c["reason"].as_str()).unwrap_or(""),
        "status updated"
    );
}
