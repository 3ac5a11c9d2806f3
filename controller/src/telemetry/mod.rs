//! What the operator tells the outside about itself: `/livez`, `/readyz` and `/metrics` on one
//! port, for kubelet probes and Prometheus.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub use metrics::Metrics;

/// Whether the operator can serve: set by the runtime as it starts.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    reason: std::sync::Mutex<String>,
}

impl Health {
    pub fn new(reason: &str) -> Self {
        Self {
            ready: AtomicBool::new(false),
            reason: std::sync::Mutex::new(reason.to_owned()),
        }
    }

    /// Ready, or not with the reason `/readyz` shows.
    pub fn set(&self, ready: bool, reason: &str) {
        if let Ok(mut current) = self.reason.lock() {
            reason.clone_into(&mut current);
        }
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Binds `address` and serves the probes and metrics until `shutdown` completes. Returns the
/// bound address (port 0 picks a free one) once it accepts connections.
pub async fn serve(
    address: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for probes and metrics"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { health, metrics });
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("the probe server stopped: {error}");
        }
    });
    Ok((bound, task))
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    let reason = shared.health.reason();
    if shared.health.is_ready() {
        (StatusCode::OK, format!("ok: {reason}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
    }
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fetch(address: SocketAddr, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{address}{path}"))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn probes_follow_health_and_metrics_are_served() {
        let health = Arc::new(Health::new("waiting for the watch caches"));
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            health.clone(),
            metrics.clone(),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();

        assert_eq!(fetch(address, "/livez").await.0, 200);
        assert_eq!(
            fetch(address, "/readyz").await,
            (503, "not ready: waiting for the watch caches\n".to_owned())
        );
        health.set(true, "every watch cache has synced");
        assert_eq!(fetch(address, "/readyz").await.0, 200);
        metrics.reconciled("alertchannel", std::time::Duration::from_millis(1), None);
        let (status, text) = fetch(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(text.contains("infrapilot_reconciles_total"), "{text}");

        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
