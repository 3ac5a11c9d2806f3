//! Leader election on a `coordination.k8s.io` Lease, so that several replicas are safe: only
//! the holder reconciles; the others stand by and take over when its Lease expires.
//!
//! kube-lease-manager (0.13) keeps reporting "leading" while its renewals fail: an error only
//! makes it retry with backoff, and it reports the loss only once it reads another holder in
//! the Lease, that is after a standby has taken over. So this module also keeps its own
//! deadline: leadership ends when the last renewal the API server holds is older than the
//! Lease's duration minus a margin, so that this replica stops before a standby may start.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

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

/// The timing of one Lease, in the whole seconds the Lease API counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timing {
    /// How long the Lease is valid after a renewal.
    duration: Duration,
    /// How long before expiry the holder renews.
    grace: Duration,
    /// How long before expiry this replica stops leading when no renewal has landed.
    margin: Duration,
}

impl Timing {
    fn new(duration: Duration) -> Self {
        let seconds = duration.as_secs().max(2);
        // Renew a third of the way before expiry: ample for API latency and clock skew.
        let grace = Duration::from_secs((seconds / 3).max(1));
        Self {
            duration: Duration::from_secs(seconds),
            grace,
            // Half the grace: a renewal has the other half to land before the check; the check
            // takes at most half the margin, and running reconciles may then finish until a
            // quarter of the margin before expiry (`Leadership::wind_down`).
            margin: grace / 2,
        }
    }

    /// When leadership ends unless a newer renewal is seen.
    fn deadline(&self, renewed: SystemTime) -> SystemTime {
        renewed + self.duration - self.margin
    }

    /// How long the read that looks for a newer renewal may take.
    fn check_timeout(&self) -> Duration {
        self.margin / 2
    }
}

/// When `identity` last renewed `lease`, as the API server holds it; `None` if another replica
/// (or nobody) holds it. The holder writes renewTime with its own clock, so comparing it with
/// this replica's clock is exact.
fn renewal(lease: &Lease, identity: &str) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    spec.renew_time
        .as_ref()
        .map(|time| SystemTime::from(time.0))
}

fn show(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at).map_or_else(|_| format!("{at:?}"), |at| at.to_string())
}

/// This replica's part in the election.
#[derive(Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The last renewal confirmed on the API server while leading.
    renewed: Option<SystemTime>,
}

impl Leadership {
    /// Joins the election (creating the Lease if it does not exist).
    pub async fn join(client: kube::Client, options: &LeaseOptions) -> anyhow::Result<Self> {
        let timing = Timing::new(options.duration);
        let manager = LeaseManagerBuilder::new(client.clone(), &options.name)
            .with_namespace(&options.namespace)
            .with_identity(&options.identity)
            .with_duration(timing.duration.as_secs())
            .with_grace(timing.grace.as_secs())
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
        Ok(Self {
            leading,
            task,
            leases: Api::namespaced(client, &options.namespace),
            name: options.name.clone(),
            identity: options.identity.clone(),
            timing,
            renewed: None,
        })
    }

    /// Waits until this replica leads: the election says so and the API server holds a
    /// renewal of ours that is not about to expire.
    pub async fn acquired(&mut self) -> anyhow::Result<()> {
        loop {
            self.leading
                .wait_for(|leading| *leading)
                .await
                .map(drop)
                .context("leader election stopped")?;
            match self.confirmed().await {
                Ok(Some(renewed)) if SystemTime::now() < self.timing.deadline(renewed) => {
                    self.renewed = Some(renewed);
                    return Ok(());
                }
                Ok(_) => {}
                Err(error) => warn!("cannot read the leader Lease: {error}"),
            }
            tokio::time::sleep(self.timing.check_timeout()).await;
        }
    }

    /// Waits until this replica stops leading: another replica took the Lease, or no renewal
    /// has landed in time, so that it may expire before the next one does.
    pub async fn lost(&mut self) {
        tokio::select! {
            changed = self.leading.wait_for(|leading| !*leading) => match changed {
                Ok(_) => info!("the leader Lease went to another replica"),
                Err(_) => warn!("the leader election task ended"),
            },
            () = Self::unrenewed(
                &self.leases,
                &self.name,
                &self.identity,
                self.timing,
                &mut self.renewed,
            ) => {}
        }
    }

    /// Returns once the last confirmed renewal is older than the Lease's duration minus the
    /// margin, and a read at that moment shows no newer one.
    async fn unrenewed(
        leases: &Api<Lease>,
        name: &str,
        identity: &str,
        timing: Timing,
        renewed: &mut Option<SystemTime>,
    ) {
        loop {
            let deadline = renewed.map_or(SystemTime::UNIX_EPOCH, |at| timing.deadline(at));
            let wait = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            let read = tokio::time::timeout(timing.check_timeout(), leases.get(name)).await;
            let newer = match read {
                Ok(Ok(lease)) => renewal(&lease, identity),
                Ok(Err(error)) => {
                    warn!("cannot read the leader Lease: {error}");
                    None
                }
                Err(_) => {
                    warn!("reading the leader Lease timed out");
                    None
                }
            };
            match newer {
                Some(at) if SystemTime::now() < timing.deadline(at) => *renewed = Some(at),
                _ => {
                    let expiry = renewed.map(|at| at + timing.duration);
                    warn!(
                        expiry = %expiry.map(show).unwrap_or_default(),
                        "the leader Lease was not renewed in time; stopping before it expires"
                    );
                    return;
                }
            }
        }
    }

    /// How long reconciles that are running when leadership is lost may still finish: until
    /// a quarter of the margin before the Lease expires, and not at all once another replica
    /// holds it.
    pub fn wind_down(&self) -> Duration {
        if !*self.leading.borrow() {
            return Duration::ZERO;
        }
        self.renewed.map_or(Duration::ZERO, |renewed| {
            (renewed + self.timing.duration - self.timing.margin / 4)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }

    /// This replica's last renewal as the API server holds it.
    async fn confirmed(&self) -> kube::Result<Option<SystemTime>> {
        let lease = self.leases.get(&self.name).await?;
        Ok(renewal(&lease, &self.identity))
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(holder: Option<&str>, renewed: Option<SystemTime>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renewed.map(|at| MicroTime(jiff::Timestamp::try_from(at).unwrap())),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn the_margin_leaves_a_renewal_time_to_land_and_the_check_time_to_end_before_expiry() {
        let timing = Timing::new(Duration::from_secs(15));
        assert_eq!(timing.duration, Duration::from_secs(15));
        assert_eq!(timing.grace, Duration::from_secs(5));
        assert_eq!(timing.margin, Duration::from_millis(2500));
        let renewed = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let expiry = renewed + timing.duration;
        let deadline = timing.deadline(renewed);
        // The next renewal starts `grace` before expiry, well before the deadline...
        assert!(expiry - timing.grace < deadline);
        // ...and the check at the deadline ends before expiry.
        assert!(deadline + timing.check_timeout() < expiry);
    }

    #[test]
    fn a_lease_shorter_than_two_seconds_is_two_with_a_second_of_grace() {
        let timing = Timing::new(Duration::from_millis(500));
        assert_eq!(timing.duration, Duration::from_secs(2));
        assert_eq!(timing.grace, Duration::from_secs(1));
        assert_eq!(timing.margin, Duration::from_millis(500));
    }

    #[test]
    fn only_our_own_renewal_counts() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(renewal(&lease(Some("a-1"), Some(at)), "a-1"), Some(at));
        assert_eq!(renewal(&lease(Some("b-1"), Some(at)), "a-1"), None);
        assert_eq!(renewal(&lease(None, None), "a-1"), None);
        assert_eq!(renewal(&lease(Some("a-1"), None), "a-1"), None);
        assert_eq!(renewal(&Lease::default(), "a-1"), None);
    }
}
