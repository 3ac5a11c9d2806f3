//! Leader election on a `coordination.k8s.io` Lease, so that several replicas are safe: only
//! the holder reconciles; the others stand by and take over when its Lease expires.

use std::time::Duration;

use anyhow::Context as _;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub name: String,
    pub namespace: String,
    /// Unique per replica: the pod name and a random suffix.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

/// This replica's part in the election.
#[derive(Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Leadership {
    /// Joins the election (creating the Lease if it does not exist).
    pub async fn join(client: kube::Client, options: &LeaseOptions) -> anyhow::Result<Self> {
        let duration = options.duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, &options.name)
            .with_namespace(&options.namespace)
            .with_identity(&options.identity)
            .with_duration(duration)
            // Renew a third of the way before expiry: ample for API latency and clock skew.
            .with_grace((duration / 3).max(1))
            .with_field_manager(format!("{}/leader-election", crate::api::GROUP))
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot use the Lease {}/{} for leader election",
                    options.namespace, options.name
                )
            })?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Waits until this replica leads.
    pub async fn acquired(&mut self) -> anyhow::Result<()> {
        self.leading
            .wait_for(|leading| *leading)
            .await
            .map(drop)
            .context("leader election stopped")
    }

    /// Waits until this replica stops leading.
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }

    /// Gives the Lease up, so that a standby takes over at once rather than after it expires.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            Ok(Ok(Err(error))) => tracing::warn!("could not release the leader Lease: {error}"),
            Ok(Err(error)) => tracing::warn!("the leader election task failed: {error}"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out; it will expire"),
        }
    }
}
