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
use crate::backup::engine::postgres::Postgres;
use crate::delivery::Deliverer;
use crate::edge::{Edge, EdgeOptions};
use crate::reconcile::alert_channel::AlertChannels;
use crate::reconcile::backup::{self as backup_reconcile, BackupPolicies, BackupRuns};
use crate::reconcile::proxy::Proxies;
use crate::reconcile::{Context, Event, Events, Reconciler, Requeue};
use crate::secrets::SecretMap;
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
    /// How long one notification delivery may take.
    pub delivery_timeout: Duration,
    /// Where to serve /livez, /readyz and /metrics, if anywhere.
    pub probe_address: Option<std::net::SocketAddr>,
    /// How the edge nginx container is run.
    pub edge: EdgeOptions,
    /// Where backup validation reports are written.
    pub reports: PathBuf,
    /// How many backup validations run at once.
    pub max_restores: usize,
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
    let store = Store::open(&options.state_url).await?;
    let key = AuditKey::load_or_create(&options.audit_key)?;
    let audit = AuditLog::open(store.pool(), key).await?;
    let secrets = Arc::new(SecretMap::default());
    let ctx = Context {
        secrets: secrets.clone(),
        notifier: Arc::new(Deliverer::new(options.delivery_timeout)?),
        audit: Arc::new(audit),
        events: Arc::new(StoreEvents {
            store: store.clone(),
        }),
        now: Timestamp::now,
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
    let engine = crate::docker::Engine::connect()?;
    let restore = Arc::new(Postgres::from_engine(&engine));
    let docker: Arc<dyn crate::docker::Docker> = Arc::new(engine);
    // Objects to reconcile because something other than the manifests changed them: a
    // reconciler created or deleted an object, or an outside system (Docker, a finished
    // restore) has news about one.
    let (keys_tx, mut keys_rx) = unbounded_channel::<Key>();
    let objects = Arc::new(StoreObjects {
        store: store.clone(),
        changed: keys_tx.clone(),
    });
    let (backup_policies, backup_runs) = backup_reconcile::reconcilers(
        objects,
        restore,
        options.reports.clone(),
        options.max_restores,
    );
    let edge = Arc::new(Edge::start(
        docker.clone(),
        options.edge.clone(),
        ctx.audit.clone(),
    ));
    let workers = Arc::new(Workers {
        store: store.clone(),
        ctx,
        metrics,
        alert_channels: AlertChannels,
        proxies: Proxies::new(docker, edge),
        backup_policies,
        backup_runs,
        keys: keys_tx.clone(),
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

    // Proxies come back when their containers change (Docker events), policies when one of
    // their runs ends, runs when their restore has news.
    let workers = &runtime.workers;
    forward(workers.proxies.triggers(), Kind::Proxy, &keys_tx);
    forward(
        workers.backup_policies.triggers(),
        Kind::BackupValidationPolicy,
        &keys_tx,
    );
    forward(
        workers.backup_runs.triggers(),
        Kind::BackupValidationRun,
        &keys_tx,
    );

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
                    Ok(Some(delay)) => runtime.queue.at(key, Instant::now() + delay),
                    Ok(None) => {}
                    Err(error) => {
                        error!(object = %key, "reconcile failed: {error:#}");
                        runtime.queue.at(key, Instant::now() + Duration::from_secs(30));
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
    tasks: tokio::task::JoinSet<(Key, anyhow::Result<Option<Duration>>)>,
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

/// What reconciles share; they run concurrently, each on its own object.
struct Workers {
    store: Store,
    ctx: Context,
    metrics: Arc<Metrics>,
    alert_channels: AlertChannels,
    proxies: Proxies,
    backup_policies: BackupPolicies,
    backup_runs: BackupRuns,
    /// Objects to queue: here, the dependents of a deleted object.
    keys: UnboundedSender<Key>,
}

impl Workers {
    /// Ends an object's deletion, and starts its dependents' (objects whose ownerReferences
    /// name it, a policy's runs), as Kubernetes' garbage collector does.
    async fn forget(&self, key: &Key, uid: &str) -> anyhow::Result<()> {
        self.store.forget(key, uid).await?;
        info!(object = %key, "deletion finished");
        for dependent in self.store.dependents(&key.namespace, uid).await? {
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

    /// Reconciles one object; returns when to look at it again.
    async fn reconcile(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(object) = self.store.get(key).await? else {
            return Ok(None);
        };
        match Kind::from_name(&key.kind) {
            Some(Kind::AlertChannel) => {
                self.reconcile_with(&self.alert_channels, key, object).await
            }
            Some(Kind::Proxy) => self.reconcile_with(&self.proxies, key, object).await,
            Some(Kind::BackupValidationPolicy) => {
                self.reconcile_with(&self.backup_policies, key, object)
                    .await
            }
            Some(Kind::BackupValidationRun) => {
                self.reconcile_with(&self.backup_runs, key, object).await
            }
            // The reconcilers of the other kinds land with their own issues; until then their
            // objects are stored and shown, and left alone.
            _ => {
                if object.deleting {
                    self.forget(key, &object.uid).await?;
                }
                Ok(None)
            }
        }
    }

    async fn reconcile_with<R: Reconciler>(
        &self,
        reconciler: &R,
        key: &Key,
        object: StoredObject,
    ) -> anyhow::Result<Option<Duration>> {
        let parsed: R::Object = match serde_json::from_value(object.full()) {
            Ok(parsed) => parsed,
            Err(error) if object.deleting => {
                // Nothing can be cleaned up for an object this version cannot read.
                warn!(object = %key, "deleting an object that cannot be read: {error}");
                self.forget(key, &object.uid).await?;
                return Ok(None);
            }
            Err(error) => {
                // Checked when read, so only a store written by another version gets here; it
                // waits for its manifest to change.
                error!(object = %key, "the stored object cannot be read: {error}");
                return Ok(None);
            }
        };
        if object.deleting {
            if R::FINALIZER.is_some()
                && let Err(failure) = reconciler.cleanup(&parsed, &self.ctx).await
            {
                warn!(object = %key, category = failure.category, "cleanup failed, retrying: {}", failure.message);
                return Ok(Some(Duration::from_secs(10)));
            }
            self.forget(key, &object.uid).await?;
            return Ok(None);
        }
        let started = Instant::now();
        let applied = reconciler.reconcile(&parsed, &self.ctx).await;
        self.metrics.reconciled(
            R::CONTROLLER,
            started.elapsed(),
            applied.failure.as_ref().map(|f| f.category),
        );
        let status = serde_json::to_value(&applied.status)?;
        if self.store.write_status(key, &object.uid, &status).await? {
            let ready = status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == crate::status::READY));
            info!(
                object = %key,
                ready = ready.and_then(|c| c["status"].as_str()).unwrap_or("Unknown"),
                reason = ready.and_then(|c| c["reason"].as_str()).unwrap_or(""),
                "status updated"
            );
        }
        if let Some(failure) = &applied.failure {
            warn!(object = %key, category = failure.category, "{}", failure.message);
        }
        Ok(match applied.requeue {
            Requeue::After(delay) => Some(delay),
            Requeue::OnChange => None,
        })
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
