//! The Kubernetes runtime: `infrapilot run` against a cluster.
//!
//! Start-up order: serve the probes; wait for the CRDs; join the leader election and, once
//! leading, run one Controller per kind whose reconciler has landed. `/readyz` turns true on a
//! standby replica once it waits for the Lease (it is healthy and can take over), and on the
//! leader only after every watch cache has synced. SIGTERM lets running reconciles finish,
//! then gives the Lease up so that a standby takes over at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::watch;
use tracing::{info, warn};

use super::backup::KubeBackupObjects;
use super::controller::{self, Backoff, Shared};
use super::crd::wait_established;
use super::events::KubeEvents;
use super::leader::{Leadership, LeaseOptions};
use super::secrets::KubeSecrets;
use crate::api::Kind;
use crate::audit::{AuditKey, AuditLog, NewRecord, Outcome};
use crate::backup::engine::postgres::Postgres;
use crate::delivery::Deliverer;
use crate::edge::{Edge, EdgeOptions};
use crate::reconcile::alert_channel::AlertChannels;
use crate::reconcile::backup;
use crate::reconcile::proxy::Proxies;
use crate::reconcile::{Audit, Context, Event, EventType, Events};
use crate::standalone::store::Store;
use crate::telemetry::{self, Health, Metrics};

/// The kinds whose reconcilers have landed, and so get a Controller.
const KINDS: [Kind; 4] = [
    Kind::AlertChannel,
    Kind::Proxy,
    Kind::BackupValidationPolicy,
    Kind::BackupValidationRun,
];

/// How the runtime is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// `None` runs without leader election (a single replica).
    pub lease: Option<LeaseOptions>,
    /// The audit database URL.
    pub state_url: String,
    pub audit_key: PathBuf,
    pub resync: Duration,
    pub delivery_timeout: Duration,
    pub probe_address: SocketAddr,
    /// How long to wait for the CRDs to be established.
    pub crd_timeout: Duration,
    /// Tells replicas apart in Events (the pod name).
    pub instance: Option<String>,
    /// How the edge nginx container is run (on the Docker engine of DOCKER_HOST).
    pub edge: EdgeOptions,
    /// Where backup validation reports are written (a volume of the operator's pod).
    pub reports: PathBuf,
    /// How many backup validations run at once.
    pub max_restores: usize,
}

/// Runs until `shutdown` completes, or fails when this replica loses its Lease (the process
/// then exits and is restarted as a standby, as controller-runtime's managers do).
pub async fn run(
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = Stop::new(shutdown);
    // kube's error already carries its causes in its message: no context chain on top.
    let client = kube::Client::try_default().await.map_err(|error| {
        anyhow::anyhow!(
            "cannot reach a Kubernetes cluster ({error}); to run without a cluster, give \
             --manifests DIR"
        )
    })?;

    let health = Arc::new(Health::new("waiting for the CustomResourceDefinitions"));
    let metrics = Arc::new(Metrics::new());
    let (address, server) = telemetry::serve(
        options.probe_address,
        health.clone(),
        metrics.clone(),
        stop.wait(),
    )
    .await?;
    info!("serving /livez, /readyz and /metrics on http://{address}");

    let result = lead_and_reconcile(&options, client, &health, &metrics, &stop).await;
    metrics.set_leader(false);
    health.set(false, "shutting down");
    stop.trigger();
    let _ = server.await;
    result
}

async fn lead_and_reconcile(
    options: &Options,
    client: kube::Client,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    stop: &Stop,
) -> anyhow::Result<()> {
    tokio::select! {
        result = wait_established(client.clone(), &KINDS, options.crd_timeout, Duration::from_secs(2)) => result?,
        () = stop.wait() => return Ok(()),
    }

    let mut leadership = match &options.lease {
        Some(lease) => {
            let mut leadership = Leadership::join(client.clone(), lease).await?;
            health.set(true, "standby: another replica holds the leader Lease");
            info!(lease = %format!("{}/{}", lease.namespace, lease.name), identity = %lease.identity, "waiting to lead");
            tokio::select! {
                result = leadership.acquired() => result?,
                () = stop.wait() => {
                    leadership.release().await;
                    return Ok(());
                }
            }
            info!("leading");
            Some(leadership)
        }
        None => None,
    };
    metrics.set_leader(true);

    let ctx = context(options, client.clone()).await?;
    health.set(false, "waiting for the watch caches to sync");
    let synced = Arc::new(AtomicUsize::new(0));
    let on_synced = {
        let health = health.clone();
        Arc::new(move || {
            if synced.fetch_add(1, Ordering::AcqRel) + 1 == KINDS.len() {
                info!("every watch cache has synced");
                health.set(true, "leading; every watch cache has synced");
            }
        })
    };
    let engine = crate::docker::Engine::connect()?;
    let restore = Arc::new(Postgres::from_engine(&engine));
    let docker: Arc<dyn crate::docker::Docker> = Arc::new(engine);
    let edge = Arc::new(Edge::start(
        docker.clone(),
        options.edge.clone(),
        ctx.audit.clone(),
    ));
    let namespace = options.namespace.as_deref();
    let shared = Common {
        ctx: ctx.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        resync: options.resync,
    };
    let alert_channels = controller::run(shared.with(AlertChannels), namespace, stop.wait(), {
        let on_synced = on_synced.clone();
        move || on_synced()
    });
    let proxies = controller::run(
        shared.with(Proxies::new(docker, edge)),
        namespace,
        stop.wait(),
        {
            let on_synced = on_synced.clone();
            move || on_synced()
        },
    );
    let (backup_policies, backup_runs) = backup::reconcilers(
        Arc::new(KubeBackupObjects::new(client.clone())),
        restore,
        options.reports.clone(),
        options.max_restores,
    );
    let backup_policies = controller::run(shared.with(backup_policies), namespace, stop.wait(), {
        let on_synced = on_synced.clone();
        move || on_synced()
    });
    let backup_runs = controller::run(
        shared.with(backup_runs),
        namespace,
        stop.wait(),
        move || on_synced(),
    );
    let mut controllers = Box::pin(async {
        tokio::join!(alert_channels, proxies, backup_policies, backup_runs);
    });

    let lost = async {
        match leadership.as_mut() {
            Some(leadership) => leadership.lost().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        () = &mut controllers => Ok(()),
        () = lost => Err(anyhow::anyhow!("lost the leader Lease; exiting so that a standby takes over")),
    };
    if let (Err(_), Some(leadership)) = (&result, &leadership) {
        // Start no reconcile, and let running ones finish while the Lease still holds, rather
        // than cut one between its side effect and its status.
        stop.trigger();
        if tokio::time::timeout(leadership.wind_down(), &mut controllers)
            .await
            .is_err()
        {
            warn!("cancelled the reconciles still running as the leader Lease neared expiry");
        }
    }
    drop(controllers);
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    result
}

/// What every controller shares.
struct Common {
    ctx: Context,
    client: kube::Client,
    metrics: Arc<Metrics>,
    resync: Duration,
}

impl Common {
    fn with<R: crate::reconcile::Reconciler>(&self, reconciler: R) -> Arc<Shared<R>> {
        Arc::new(Shared {
            reconciler,
            ctx: self.ctx.clone(),
            client: self.client.clone(),
            events: self.ctx.events.clone(),
            metrics: self.metrics.clone(),
            resync: self.resync,
            backoff: Backoff::default(),
            written: std::sync::Mutex::default(),
        })
    }
}

/// The reconcilers' view of the cluster.
async fn context(options: &Options, client: kube::Client) -> anyhow::Result<Context> {
    let store = Store::open(&options.state_url).await?;
    let key = AuditKey::load_or_create(&options.audit_key)?;
    let log = AuditLog::open(store.pool(), key).await?;
    let events: Arc<dyn Events> =
        Arc::new(KubeEvents::new(client.clone(), options.instance.clone()));
    Ok(Context {
        secrets: Arc::new(KubeSecrets::new(client)),
        notifier: Arc::new(Deliverer::new(options.delivery_timeout)?),
        audit: Arc::new(AuditWithEvents {
            log,
            events: events.clone(),
        }),
        events,
        now: Timestamp::now,
    })
}

/// The audit log, with each record also an Event on its object, as `kubectl describe` shows.
struct AuditWithEvents {
    log: AuditLog,
    events: Arc<dyn Events>,
}

#[async_trait]
impl Audit for AuditWithEvents {
    async fn record(&self, record: NewRecord) -> anyhow::Result<()> {
        let object = record.object.clone();
        let stored = self.log.append(record).await?;
        let event = Event {
            type_: match stored.outcome {
                Outcome::Success => EventType::Normal,
                Outcome::Failure => EventType::Warning,
            },
            reason: "Audited".to_owned(),
            action: stored.action.clone(),
            // The detail may be long and is in the log; the event points at it.
            note: format!(
                "audit record {}: {} {}: {}",
                stored.seq, stored.action, stored.target, stored.outcome
            ),
        };
        self.events.publish(&object, event).await;
        Ok(())
    }
}

/// A shutdown that many tasks can wait for.
#[derive(Clone)]
struct Stop(watch::Sender<bool>);

impl Stop {
    fn new(signal: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        let (sender, _) = watch::channel(false);
        let stop = Self(sender);
        let trigger = stop.clone();
        tokio::spawn(async move {
            signal.await;
            info!("shutting down: letting running reconciles finish");
            trigger.trigger();
        });
        stop
    }

    fn trigger(&self) {
        self.0.send_replace(true);
    }

    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            if receiver.wait_for(|stopped| *stopped).await.is_err() {
                warn!("the shutdown signal was dropped");
            }
        }
    }
}
