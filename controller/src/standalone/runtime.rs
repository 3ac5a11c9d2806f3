//! The standalone runtime: keeps the store in step with the manifests and runs the
//! reconcilers, until asked to stop.
//!
//! Manifests are scanned ([`super::scan`]) at start, whenever a file below a manifest path
//! changes, when a deletion waits for a second scan to confirm it, and at every resync; after
//! the first, in a task of their own ([`scan_loop`]), so that reconciles go on starting while
//! thousands of files are read. Each object a scan changed is queued. Up to [`CONCURRENCY`] objects are reconciled at once, each
//! object at most once at a time; a reconciler's requeue and backoff put the object back in the
//! queue for later. At start every stored object is queued once: reconcilers are idempotent, so
//! a restart repeats no finished side effect.
//!
//! This file is the top-level loop; the per-object work queue is in `standalone/queue.rs`, and
//! running the reconcilers (the registered controllers, the workers they share, status and
//! events in the store) in `standalone/dispatch.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info};

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::dispatch::{Controllers, StoreEvents, Workers};
use super::objects::StoreObjects;
use super::queue::{Priority, Queue};
use super::scan::Scanner;
use super::store::Store;
use super::sync::Key;
use crate::audit::{AuditKey, AuditLog};
use crate::retry::{Backoff, Category};
use crate::runtime::driver::Next;
use crate::runtime::objects::Objects;
use crate::runtime::registry;
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
    let metrics = Arc::new(Metrics::new());
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
        metrics: metrics.clone(),
    };
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
        every_pending: Default::default(),
    });
    let (changed_tx, changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut scanner = Scanner::new(
        options.manifests.clone(),
        store.clone(),
        secrets,
        changed_tx,
    )?;
    let mut runtime = Runtime {
        workers,
        running: BTreeSet::new(),
        tasks: tokio::task::JoinSet::new(),
        queue: Queue::default(),
    };

    let first = scanner.scan().await?;
    runtime
        .queue
        .all(first.stored, Instant::now(), Priority::Routine);
    health.set(true, "the manifests have been read");
    info!(manifests = ?options.manifests, "standalone mode started");
    // Scans run beside the loop, never in it: at 10,000 objects a scan reads every file and the
    // whole index, and reconciles must go on being started meanwhile.
    let (found_tx, mut found_rx) = unbounded_channel::<Found>();
    let scans = tokio::spawn(scan_loop(scanner, changed_rx, options.resync, found_tx));

    tokio::pin!(shutdown);
    loop {
        let next = runtime
            .queue
            .next_due(|k| !runtime.running.contains(k))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = &mut shutdown => break,
            Some(key) = keys_rx.recv() => runtime.queue.at(key, Instant::now(), Priority::Change),
            Some(found) = found_rx.recv() => {
                runtime.queue.all(found.keys, Instant::now(), found.priority);
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
                    Ok(Next::After(delay)) => {
                        runtime.queue.at(key, Instant::now() + delay, Priority::Change)
                    }
                    Ok(Next::OnChange) => {}
                    Err(error) => {
                        // The state database failed around the reconcile: retried on its
                        // backoff, like any failure.
                        let delay = runtime.workers.state_backoff.next(&key.to_string(), Category::State);
                        error!(object = %key, retry_in = ?delay, "reconcile failed: {error:#}");
                        runtime.queue.at(key, Instant::now() + delay, Priority::Change);
                    }
                }
            }
        }
    }
    health.set(false, "shutting down");
    // A scan under way finishes (its changes are stored in one transaction either way), then
    // the scan loop sees nobody listens and ends.
    drop(found_rx);
    if let Err(error) = scans.await {
        error!("the manifest scans panicked: {error}");
    }
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
    queue: Queue,
}

/// Objects a scan asks the loop to queue.
struct Found {
    keys: Vec<Key>,
    priority: Priority,
}

/// Scans the manifests whenever a file changes, a deletion waits for its second scan, and at
/// every resync, and tells the loop what to queue; ends once the loop stops listening.
async fn scan_loop(
    mut scanner: Scanner,
    mut changed: tokio::sync::mpsc::Receiver<()>,
    resync: Duration,
    found: UnboundedSender<Found>,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + resync, resync);
    loop {
        let recheck = scanner.recheck_at().map(Instant::from_std);
        let routine = tokio::select! {
            () = found.closed() => return,
            Some(()) = changed.recv() => {
                // Editors write in several steps: let a burst settle, then scan once. Short,
                // since it adds to every change's latency: a file caught half-written is read
                // again on its next event, and deletions wait for a second scan anyway.
                tokio::time::sleep(SETTLE).await;
                while changed.try_recv().is_ok() {}
                false
            }
            // A scan missed an object: a second one confirms its deletion, or calls it off.
            () = tokio::time::sleep_until(recheck.unwrap_or_else(Instant::now)),
                if recheck.is_some() => false,
            _ = tick.tick() => true,
        };
        let scan = match scanner.scan().await {
            Ok(scan) => scan,
            Err(error) => {
                error!("scanning the manifests failed: {error:#}");
                continue;
            }
        };
        let send =
            |keys: Vec<Key>, priority: Priority| found.send(Found { keys, priority }).is_ok();
        if routine {
            info!(
                objects = scan.stored.len(),
                "resync: every object queued again"
            );
        }
        let everything = if scan.secrets_changed {
            // A changed Secret may make a channel deliverable, or not: look at everything.
            Some(Priority::Change)
        } else {
            routine.then_some(Priority::Routine)
        };
        let sent = send(scan.changed, Priority::Change)
            && everything.is_none_or(|priority| send(scan.stored, priority));
        if !sent {
            return;
        }
    }
}
