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
use tokio::sync::watch;
use tracing::{info, warn};

use super::controller::{self, ScopedApi, Shared};
use super::crd::wait_established;
use super::events::KubeEvents;
use super::leader::{Leadership, LeaseOptions};
use super::objects::KubeObjects;
use super::secrets::KubeSecrets;
use crate::audit::{Audit, AuditKey, AuditLog, NewRecord, Outcome};
use crate::reconcile::{Event, EventType, Events, Reconciler};
use crate::runtime::driver::Driver;
use crate::runtime::objects::Objects;
use crate::runtime::registry::{self, Build, Register};
use crate::runtime::services::{RuntimeParts, ServiceOptions, Services};
use crate::state::Database;
use crate::telemetry::{self, Health, Metrics};

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
    pub probe_address: SocketAddr,
    /// How long to wait for the CRDs to be established.
    pub crd_timeout: Duration,
    /// Tells replicas apart in Events (the pod name).
    pub instance: Option<String>,
    /// The edge (on the Docker engine of DOCKER_HOST), reports (a volume of the operator's
    /// pod), deliveries.
    pub services: ServiceOptions,
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
    let kinds = registry::kinds();
    tokio::select! {
        result = wait_established(client.clone(), &kinds, options.crd_timeout, Duration::from_secs(2)) => result?,
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

    let services = services(options, client.clone(), metrics.clone()).await?;
    health.set(false, "waiting for the watch caches to sync");
    let synced = Arc::new(AtomicUsize::new(0));
    let on_synced = {
        let health = health.clone();
        let expected = kinds.len();
        Arc::new(move || {
            if synced.fetch_add(1, Ordering::AcqRel) + 1 == expected {
                info!("every watch cache has synced");
                health.set(true, "leading; every watch cache has synced");
            }
        })
    };
    let mut controllers = Controllers {
        services: &services,
        client: client.clone(),
        metrics: metrics.clone(),
        resync: options.resync,
        namespace: options.namespace.clone(),
        stop,
        on_synced,
        running: Vec::new(),
    };
    registry::register(&mut controllers);
    // Boxed, so that dropping it after a lost Lease cancels what still runs.
    let mut controllers = Box::pin(futures::future::join_all(controllers.running));

    let lost = async {
        match leadership.as_mut() {
            Some(leadership) => leadership.lost().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = &mut controllers => Ok(()),
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

/// Builds one Controller per registered reconciler.
struct Controllers<'a> {
    services: &'a Services,
    client: kube::Client,
    metrics: Arc<Metrics>,
    resync: Duration,
    namespace: Option<String>,
    stop: &'a Stop,
    on_synced: Arc<dyn Fn() + Send + Sync>,
    running: Vec<futures::future::BoxFuture<'static, ()>>,
}

impl Register for Controllers<'_> {
    fn add<R: Reconciler>(&mut self, build: Build<R>)
    where
        R::Object: ScopedApi,
    {
        let ctx = self.services.ctx.clone();
        let shared = Arc::new(Shared {
            driver: Driver::new(build(self.services), ctx.clone(), self.metrics.clone()),
            client: self.client.clone(),
            events: ctx.events.clone(),
            resync: self.resync,
            written: std::sync::Mutex::default(),
        });
        let on_synced = self.on_synced.clone();
        self.running.push(Box::pin(controller::run(
            shared,
            self.namespace.clone(),
            self.stop.wait(),
            move || on_synced(),
        )));
    }
}

/// The services, with the cluster's Secrets, Events and objects.
async fn services(
    options: &Options,
    client: kube::Client,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Services> {
    // Only the audit log keeps tables in the state database in this mode.
    let state = Database::open(&options.state_url).await?;
    let key = AuditKey::load_or_create(&options.audit_key)?;
    let log = AuditLog::open(state.pool(), key).await?;
    let events: Arc<dyn Events> =
        Arc::new(KubeEvents::new(client.clone(), options.instance.clone()));
    let parts = RuntimeParts {
        secrets: Arc::new(KubeSecrets::new(client.clone())),
        audit: Arc::new(AuditWithEvents {
            log,
            events: events.clone(),
        }),
        events,
        objects: Objects(Arc::new(KubeObjects::new(client))),
        metrics,
    };
    Services::connect(&options.services, parts)
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
