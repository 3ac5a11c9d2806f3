//! The standalone runtime: keeps the store in step with the manifests and runs the
//! reconcilers, until asked to stop.
//!
//! Manifests are scanned ([`super::scan`]) at start, whenever a file below a manifest path
//! changes, when a deletion waits for a second scan to confirm it, and at every resync. Each
//! object a scan changed is queued. Up to [`CONCURRENCY`] objects are reconciled at once, each
//! object at most once at a time; a reconciler's requeue and backoff put the object back in the
//! queue for later. At start every stored object is queued once: reconcilers are idempotent, so
//! a restart repeats no finished side effect.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::time::Instant;
use tracing::{error, info, warn};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::objects::StoreObjects;
use super::scan::Scanner;
use super::store::{Store, StoredObject};
use super::sync::{Change, Key};
use crate::api::Kind;
use crate::audit::{AuditKey, AuditLog, ObjectRef};
use crate::kubernetes::controller::ScopedApi;
use crate::reconcile::{Event, Events, Failure, Reconciler, Relation};
use crate::retry::{Backoff, Category};
use crate::runtime::driver::{Driver, Next, StatusWriter};
use crate::runtime::objects::Objects;
use crate::runtime::registry::{self, Build, Register};
use crate::runtime::services::{RuntimeParts, ServiceOptions, Services};
use crate::secrets::SecretMap;
use crate::state::Database;
use crate::telemetry::{self, Health, Metrics};

/// How the runtime is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Manifest files and directories.
    pub manifests: Vec<PathBuf>,
    /// The state database URL.
    pub state_url: String,
    /// The audit log's HMAC key file (created if missing).
    pub audit_key: PathBuf,
    /// How often every object is reconciled even when nothing changed.
    pub resync: Duration,
    /// Where to serve /livez, /readyz and /metrics, if anywhere.
    pub probe_address: Option<std::net::SocketAddr>,
    /// The edge, reports, deliveries.
    pub services: ServiceOptions,
}

/// How long a burst of file events may settle before the scan it calls for.
const SETTLE: Duration = Duration::from_millis(20);

/// How many objects are reconciled at once. Proxies wait on the edge, which batches what
/// arrives together: running many at once is what lets it coalesce a burst into one reload.
const CONCURRENCY: usize = 64;

/// Runs until `shutdown` completes.
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    for path in &options.manifests {
        anyhow::ensure!(
            path.exists(),
            "the manifest path {} does not exist",
            path.display()
        );
    }
    let state = Database::open(&options.state_url).await?;
    let store = Store::open(state.pool()).await?;
    let key = AuditKey::load_or_create(&options.audit_key)?;
    let audit = AuditLog::open(state.pool(), key).await?;
    let secrets = Arc::new(SecretMap::default());
    // Objects to reconcile because something other than the manifests changed them: a
    // reconciler created or deleted an object, an object they relate to changed, or an
    // outside system (Docker, a finished restore) has news about one.
    let (keys_tx, mut keys_rx) = unbounded_channel::<Key>();
    let parts = RuntimeParts {
        secrets: secrets.clone(),
        events: Arc::new(StoreEvents {
            store: store.clone(),
        }),
        audit: Arc::new(audit),
        objects: Objects(Arc::new(StoreObjects {
            store: store.clone(),
            changed: keys_tx.clone(),
        })),
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new("reading the manifests"));
    let (stop_probes, probes_stopped) = tokio::sync::oneshot::channel::<()>();
    let probes = match options.probe_address {
        Some(address) => {
            let stopped = async {
                let _ = probes_stopped.await;
            };
            let (bound, task) =
                telemetry::serve(address, health.clone(), metrics.clone(), stopped).await?;
            info!("serving /livez, /readyz and /metrics on http://{bound}");
            Some(task)
        }
        None => None,
    };
    let services = Services::connect(&options.services, parts)?;
    let mut controllers = Controllers {
        services: &services,
        metrics: metrics.clone(),
        store: store.clone(),
        keys: keys_tx.clone(),
        kinds: BTreeMap::new(),
        relations: Vec::new(),
    };
    registry::register(&mut controllers);
    let workers = Arc::new(Workers {
        store: store.clone(),
        kinds: controllers.kinds,
        relations: controllers.relations,
        keys: keys_tx.clone(),
        state_backoff: Backoff::default(),
    });
    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let scanner = Scanner::new(
        options.manifests.clone(),
        store.clone(),
        secrets,
        changed_tx,
    )?;
    let mut runtime = Runtime {
        workers,
        running: BTreeSet::new(),
        tasks: tokio::task::JoinSet::new(),
        store,
        scanner,
        queue: Queue::default(),
    };

    runtime.scan().await?;
    runtime.queue_everything().await?;
    health.set(true, "the manifests have been read");
    info!(manifests = ?options.manifests, "standalone mode started");

    tokio::pin!(shutdown);
    let mut resync = tokio::time::interval_at(Instant::now() + options.resync, options.resync);
    loop {
        let next = runtime
            .queue
            .next_due(|k| !runtime.running.contains(k))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let recheck = runtime.scanner.recheck_at().map(Instant::from_std);
        tokio::select! {
            () = &mut shutdown => break,
            Some(key) = keys_rx.recv() => runtime.queue.at(key, Instant::now()),
            Some(()) = changed_rx.recv() => {
                // Editors write in several steps: let a burst settle, then scan once. Short, since
                // it adds to every change's latency: a file caught half-written is read again on
                // its next event, and deletions wait for a second scan anyway.
                tokio::time::sleep(SETTLE).await;
                while changed_rx.try_recv().is_ok() {}
                if let Err(error) = runtime.scan().await {
                    error!("scanning the manifests failed: {error:#}");
                }
            }
            // A scan missed an object: a second one confirms its deletion, or calls it off.
            () = tokio::time::sleep_until(recheck.unwrap_or(next)), if recheck.is_some() => {
                if let Err(error) = runtime.scan().await {
                    error!("scanning the manifests failed: {error:#}");
                }
            }
            _ = resync.tick() => {
                if let Err(error) = runtime.scan().await {
                    error!("scanning the manifests failed: {error:#}");
                }
                if let Err(error) = runtime.queue_everything().await {
                    error!("resync failed: {error:#}");
                }
            }
            () = tokio::time::sleep_until(next), if runtime.tasks.len() < CONCURRENCY => {
                let free = CONCURRENCY - runtime.tasks.len();
                let running = runtime.running.clone();
                for key in runtime.queue.pop_due(Instant::now(), free, |k| !running.contains(k)) {
                    runtime.running.insert(key.clone());
                    let workers = runtime.workers.clone();
                    runtime.tasks.spawn(async move {
                        let result = workers.reconcile(&key).await;
                        (key, result)
                    });
                }
            }
            Some(done) = runtime.tasks.join_next() => {
                let (key, result) = match done {
                    Ok(done) => done,
                    Err(error) => {
                        error!("a reconcile panicked: {error}");
                        continue;
                    }
                };
                runtime.running.remove(&key);
                match result {
                    Ok(Next::After(delay)) => runtime.queue.at(key, Instant::now() + delay),
                    Ok(Next::OnChange) => {}
                    Err(error) => {
                        // The state database failed around the reconcile: retried on its
                        // backoff, like any failure.
                        let delay = runtime.workers.state_backoff.next(&key.to_string(), Category::State);
                        error!(object = %key, retry_in = ?delay, "reconcile failed: {error:#}");
                        runtime.queue.at(key, Instant::now() + delay);
                    }
                }
            }
        }
    }
    health.set(false, "shutting down");
    // Let running reconciles finish: a side effect half-done is worse than a late stop.
    while runtime.tasks.join_next().await.is_some() {}
    let _ = stop_probes.send(());
    if let Some(task) = probes {
        let _ = task.await;
    }
    info!("standalone mode stopped");
    Ok(())
}

struct Runtime {
    workers: Arc<Workers>,
    /// Objects being reconciled now: each at most once at a time.
    running: BTreeSet<Key>,
    tasks: tokio::task::JoinSet<(Key, anyhow::Result<Next>)>,
    store: Store,
    scanner: Scanner,
    queue: Queue,
}

impl Runtime {
    /// Reads the manifests, brings the store in line with them and queues what changed.
    async fn scan(&mut self) -> anyhow::Result<()> {
        let scan = self.scanner.scan().await?;
        if scan.secrets_changed {
            // A changed Secret may make a channel deliverable, or not: look at everything.
            self.queue_everything().await?;
        }
        for key in scan.changed {
            self.queue.at(key, Instant::now());
        }
        Ok(())
    }

    async fn queue_everything(&mut self) -> anyhow::Result<()> {
        for key in self.store.index().await?.into_keys() {
            self.queue.at(key, Instant::now());
        }
        Ok(())
    }
}

/// Builds the standalone side of every registered reconciler.
struct Controllers<'a> {
    services: &'a Services,
    metrics: Arc<Metrics>,
    store: Store,
    keys: UnboundedSender<Key>,
    kinds: BTreeMap<Kind, Arc<dyn Dispatch>>,
    relations: Vec<(Kind, Relation)>,
}

impl Register for Controllers<'_> {
    fn add<R: Reconciler>(&mut self, build: Build<R>)
    where
        R::Object: ScopedApi,
    {
        let Some(kind) = Kind::from_name(&<R::Object as kube::Resource>::kind(&())) else {
            return;
        };
        let reconciler = build(self.services);
        // Objects come back when an outside system has news of them (a Proxy's container, a
        // run's restore).
        forward(reconciler.triggers(), kind, &self.keys);
        self.relations
            .extend(R::relations().into_iter().map(|relation| (kind, relation)));
        let driver = Driver::new(reconciler, self.services.ctx.clone(), self.metrics.clone());
        self.kinds.insert(
            kind,
            Arc::new(Controller {
                driver,
                store: self.store.clone(),
            }),
        );
    }
}

/// What reconciles share; they run concurrently, each on its own object.
struct Workers {
    store: Store,
    /// The controller of each kind that has one.
    kinds: BTreeMap<Kind, Arc<dyn Dispatch>>,
    /// (the kind to reconcile, when an object of `relation.from` changes).
    relations: Vec<(Kind, Relation)>,
    /// Objects to queue: the dependents of a deleted object, related objects.
    keys: UnboundedSender<Key>,
    /// Failures of the state database around a reconcile, per object.
    state_backoff: Backoff,
}

impl Workers {
    /// Ends an object's deletion, and starts its dependents' (objects whose ownerReferences
    /// name it, a policy's runs), as Kubernetes' garbage collector does.
    async fn forget(&self, object: &StoredObject) -> anyhow::Result<()> {
        let key = &object.key;
        self.store.forget(key, &object.uid).await?;
        info!(object = %key, "deletion finished");
        self.changed(object);
        for dependent in self.store.dependents(&key.namespace, &object.uid).await? {
            self.store
                .apply(
                    &Change::Delete {
                        key: dependent.clone(),
                    },
                    Timestamp::now(),
                )
                .await?;
            info!(object = %dependent, owner = %key, "deleted with its owner");
            let _ = self.keys.send(dependent);
        }
        Ok(())
    }

    /// Queues the objects that relate to `object`, which changed.
    fn changed(&self, object: &StoredObject) {
        let Some(from) = Kind::from_name(&object.key.kind) else {
            return;
        };
        let full = object.full();
        for (kind, relation) in self.relations.iter().filter(|(_, r)| r.from == from) {
            for (namespace, name) in (relation.map)(&full) {
                let _ = self.keys.send(Key {
                    kind: kind.name().to_owned(),
                    namespace,
                    name,
                });
            }
        }
    }

    /// Reconciles one object; returns when to look at it again.
    async fn reconcile(&self, key: &Key) -> anyhow::Result<Next> {
        let Some(object) = self.store.get(key).await? else {
            return Ok(Next::OnChange);
        };
        match Kind::from_name(&key.kind).and_then(|kind| self.kinds.get(&kind)) {
            Some(controller) => controller.reconcile(self, object).await,
            // The reconcilers of the other kinds land with their own issues; until then their
            // objects are stored and shown, and left alone.
            None => {
                if object.deleting {
                    self.forget(&object).await?;
                }
                Ok(Next::OnChange)
            }
        }
    }
}

/// One kind's reconciler behind a type-erased face, so that [`Workers`] can hold them all.
#[async_trait]
trait Dispatch: Send + Sync {
    async fn reconcile(&self, workers: &Workers, object: StoredObject) -> anyhow::Result<Next>;
}

struct Controller<R: Reconciler> {
    driver: Driver<R>,
    store: Store,
}

#[async_trait]
impl<R: Reconciler> Dispatch for Controller<R> {
    async fn reconcile(&self, workers: &Workers, object: StoredObject) -> anyhow::Result<Next> {
        let key = &object.key;
        let parsed: R::Object = match serde_json::from_value(object.full()) {
            Ok(parsed) => parsed,
            Err(error) if object.deleting => {
                // Nothing can be cleaned up for an object this version cannot read.
                warn!(object = %key, "deleting an object that cannot be read: {error}");
                workers.forget(&object).await?;
                return Ok(Next::OnChange);
            }
            Err(error) => {
                // Checked when read, so only a store written by another version gets here; it
                // waits for its manifest to change.
                error!(object = %key, "the stored object cannot be read: {error}");
                return Ok(Next::OnChange);
            }
        };
        if object.deleting {
            if R::FINALIZER.is_some()
                && let Err(failure) = self.driver.cleanup(&parsed).await
            {
                return Ok(Next::After(
                    self.driver.retry_in(&object.uid, failure.category),
                ));
            }
            workers.forget(&object).await?;
            return Ok(Next::OnChange);
        }
        let writer = StoreStatus {
            store: &self.store,
            object: &object,
            workers,
        };
        let reconciled = self
            .driver
            .reconcile(&parsed, R::status(&parsed), &writer)
            .await;
        Ok(reconciled.next)
    }
}

/// Status in the state database. A written status is a change its related objects hear of.
struct StoreStatus<'a> {
    store: &'a Store,
    object: &'a StoredObject,
    workers: &'a Workers,
}

#[async_trait]
impl<R: Reconciler> StatusWriter<R> for StoreStatus<'_> {
    async fn write(
        &self,
        _object: &R::Object,
        _current: Option<&R::Status>,
        status: &R::Status,
    ) -> Result<bool, Failure> {
        let failure = |error: anyhow::Error| Failure {
            category: Category::State,
            message: format!("cannot store the status: {error:#}"),
        };
        let value = serde_json::to_value(status).map_err(|e| failure(e.into()))?;
        let written = self
            .store
            .write_status(&self.object.key, &self.object.uid, &value)
            .await
            .map_err(failure)?;
        if written {
            let mut changed = self.object.clone();
            changed.status = Some(value);
            self.workers.changed(&changed);
        }
        Ok(written)
    }
}

/// When each queued object is due; an object is queued at most once, at its earliest time.
#[derive(Debug, Default)]
struct Queue {
    due: BTreeMap<Key, Instant>,
}

impl Queue {
    fn at(&mut self, key: Key, when: Instant) {
        let entry = self.due.entry(key).or_insert(when);
        *entry = (*entry).min(when);
    }

    /// The earliest time an object that `ready` accepts is due.
    fn next_due(&self, ready: impl Fn(&Key) -> bool) -> Option<Instant> {
        self.due
            .iter()
            .filter(|(k, _)| ready(k))
            .map(|(_, at)| *at)
            .min()
    }

    /// Takes at most `limit` due objects that `ready` accepts.
    fn pop_due(&mut self, now: Instant, limit: usize, ready: impl Fn(&Key) -> bool) -> Vec<Key> {
        let due: Vec<Key> = self
            .due
            .iter()
            .filter(|(k, at)| **at <= now && ready(k))
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for key in &due {
            self.due.remove(key);
        }
        due
    }
}

/// Events go to the state database, where `infrapilot describe` finds them.
struct StoreEvents {
    store: Store,
}

#[async_trait]
impl Events for StoreEvents {
    async fn publish(&self, object: &ObjectRef, event: Event) {
        if let Err(error) = self.store.add_event(object, &event, Timestamp::now()).await {
            warn!(object = %object.name, "could not store an event: {error:#}");
        }
    }
}

/// Queues the objects a reconciler's triggers name, as keys of `kind`.
fn forward(
    triggers: Option<UnboundedReceiver<(String, String)>>,
    kind: Kind,
    keys: &UnboundedSender<Key>,
) {
    let Some(mut triggers) = triggers else {
        return;
    };
    let keys = keys.clone();
    tokio::spawn(async move {
        while let Some((namespace, name)) = triggers.recv().await {
            let key = Key {
                kind: kind.name().to_owned(),
                namespace,
                name,
            };
            if keys.send(key).is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            kind: "AlertChannel".to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn the_queue_keeps_each_object_once_at_its_earliest_time() {
        let now = Instant::now();
        let mut queue = Queue::default();
        queue.at(key("a"), now + Duration::from_secs(10));
        queue.at(key("a"), now + Duration::from_secs(1));
        queue.at(key("a"), now + Duration::from_secs(5));
        queue.at(key("b"), now + Duration::from_secs(20));
        let any = |_: &Key| true;
        assert_eq!(queue.next_due(any), Some(now + Duration::from_secs(1)));
        assert!(queue.pop_due(now, 10, any).is_empty());
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(1), 10, any),
            [key("a")]
        );
        // A running object stays queued until it is free; the limit bounds what is taken.
        queue.at(key("c"), now);
        let not_b = |k: &Key| k.name != "b";
        assert_eq!(queue.next_due(not_b), Some(now));
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(60), 1, not_b),
            [key("c")]
        );
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(60), 10, any),
            [key("b")]
        );
        assert_eq!(queue.next_due(any), None);
    }
}
