//! The reads: the policy's runs, and its channels resolved to where messages go.
//!
//! Channels are read only when a run ended since the last look, since only an ended run
//! brings a message: a policy is looked at every few seconds while a run goes, and reading
//! its channels and their Secrets each time would be for nothing.

use super::BackupPolicies;
use super::decide;
use crate::api::alert::AlertChannel;
use crate::api::backup::{BackupValidationPolicy, BackupValidationRun};
use crate::api::common::LocalObjectReference;
use crate::delivery::Target;
use crate::reconcile::backup::{name_of, namespace_of, runs_of};
use crate::reconcile::{Context, Failure};

/// What a policy's reconcile found outside its object.
#[derive(Clone, Debug, Default)]
pub(super) struct Observed {
    /// The runs whose `policyRef` names the policy, made by it or by hand.
    pub runs: Vec<BackupValidationRun>,
    /// The spec's channels, in its order; empty when no run ended since the last look.
    pub channels: Vec<Channel>,
}

/// One of the policy's channels.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Channel {
    /// `AlertChannel <namespace>/<name>`, as audit records and events name it.
    pub target: String,
    /// Where its messages go, or why they cannot go there.
    pub resolved: Result<Target, String>,
}

impl BackupPolicies {
    /// Fails only when the runs cannot be listed: without them nothing can be decided. A
    /// channel that cannot be read fails its deliveries, not the reconcile.
    pub(super) async fn observe(
        &self,
        policy: &BackupValidationPolicy,
        ctx: &Context,
    ) -> Result<Observed, Failure> {
        let (namespace, name) = (namespace_of(policy), name_of(policy));
        let runs = runs_of(&self.objects, &namespace, &name).await?;
        let last_completed = policy
            .status
            .as_ref()
            .and_then(|s| s.last_completed_run.as_ref());
        let mut channels = Vec::new();
        if !decide::ended(last_completed, &runs).is_empty() {
            for LocalObjectReference { name: channel } in &policy.spec.channels {
                channels.push(Channel {
                    target: format!("AlertChannel {namespace}/{channel}"),
                    resolved: self.channel(&namespace, channel, ctx).await,
                });
            }
        }
        Ok(Observed { runs, channels })
    }

    async fn channel(&self, namespace: &str, name: &str, ctx: &Context) -> Result<Target, String> {
        match self.objects.get::<AlertChannel>(namespace, name).await {
            Ok(Some(channel)) => {
                crate::delivery::resolve(&channel.spec, namespace, ctx.secrets.as_ref())
                    .await
                    .map_err(|error| error.to_string())
            }
            Ok(None) => Err("the AlertChannel does not exist".to_owned()),
            Err(failure) => Err(failure.message),
        }
    }
}
