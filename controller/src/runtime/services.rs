//! The outside world, assembled once for whichever runtime runs: Docker, the edge, the ACME
//! issuer, the restore engine, the notifier, and what the runtime brings itself (Secrets,
//! events, the audit log, other objects). Reconcilers are built from it by the registry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::objects::Objects;
use crate::audit::Audit;
use crate::backup::engine::RestoreEngine;
use crate::backup::engine::postgres::Postgres;
use crate::delivery::Deliverer;
use crate::docker::Docker;
use crate::edge::{Edge, EdgeApi, EdgeOptions};
use crate::proxy::acme;
use crate::reconcile::{Context, Events};
use crate::secrets::SecretSource;
use crate::telemetry::Metrics;

/// The settings of the services, the same in both modes.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// How long one notification delivery may take.
    pub delivery_timeout: Duration,
    /// How the edge nginx container is run.
    pub edge: EdgeOptions,
    /// Where backup validation reports are written.
    pub reports: PathBuf,
    /// How many backup validations run at once.
    pub max_restores: usize,
}

/// What only the runtime can provide.
pub struct RuntimeParts {
    pub secrets: Arc<dyn SecretSource>,
    pub events: Arc<dyn Events>,
    pub audit: Arc<dyn Audit>,
    pub objects: Objects,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RuntimeParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuntimeParts")
    }
}

/// Everything reconcilers are built from.
#[derive(Clone)]
pub struct Services {
    pub ctx: Context,
    pub objects: Objects,
    pub docker: Arc<dyn Docker>,
    pub edge: Arc<dyn EdgeApi>,
    /// The edge container's name, whose output the error-rate rules follow.
    pub edge_name: String,
    pub issuer: Arc<dyn acme::Issuer>,
    pub restore: Arc<dyn RestoreEngine>,
    pub reports: PathBuf,
    pub max_restores: usize,
    /// The operator's metrics, for the reconcilers that expose their own (alerts by state).
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("reports", &self.reports)
            .field("max_restores", &self.max_restores)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// Connects to Docker (`DOCKER_HOST`) and starts the edge's task; nothing is created in
    /// Docker until a Proxy needs it.
    pub fn connect(options: &ServiceOptions, parts: RuntimeParts) -> anyhow::Result<Self> {
        let ctx = Context {
            secrets: parts.secrets,
            notifier: Arc::new(Deliverer::new(options.delivery_timeout)?),
            audit: parts.audit,
            events: parts.events,
            now: Timestamp::now,
        };
        let engine = crate::docker::Engine::connect()?;
        let restore: Arc<dyn RestoreEngine> = Arc::new(Postgres::from_engine(&engine));
        let docker: Arc<dyn Docker> = Arc::new(engine);
        let edge = Arc::new(Edge::start(
            docker.clone(),
            options.edge.clone(),
            ctx.audit.clone(),
        ));
        Ok(Self {
            ctx,
            objects: parts.objects,
            docker,
            edge,
            edge_name: options.edge.name.clone(),
            issuer: Arc::new(acme::AcmeIssuer),
            restore,
            reports: options.reports.clone(),
            max_restores: options.max_restores,
            metrics: parts.metrics,
        })
    }
}
