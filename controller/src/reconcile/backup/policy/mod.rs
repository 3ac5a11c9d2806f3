//! The BackupValidationPolicy reconciler, a pipeline: validate the spec (the cron expression,
//! durations, sizes, queries) → observe (its runs, and its channels when a run ended) → decide
//! (pure: a [`decide::Plan`] of the run that is due, the messages about runs that ended, the
//! runs beyond the history limits) → apply (create, notify, prune, each audited) → status
//! (pure, from what was applied).
//!
//! Scheduling follows CronJob's semantics with `concurrencyPolicy: Forbid`: a run due while
//! another run of the policy is still going is skipped; after downtime the missed time is run
//! once, not once per missed time. A scheduled run's name is its policy's name and the due
//! time, so creating it twice (a restart between creating it and writing the status) is
//! harmless.

mod apply;
mod decide;
mod observe;
mod status;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::policy_of_run;
use crate::api::Kind;
use crate::api::backup::{BackupValidationPolicy, BackupValidationPolicyStatus};
use crate::reconcile::{Applied, Context, Failure, Reconciler};
use crate::runtime::objects::{Objects, Relation};
use crate::runtime::rbac::Rule;

pub use decide::{run_name, validate};

pub const CONTROLLER: &str = "backup-policy";

/// How often a policy looks at its runs while one is going. A run that changes also brings its
/// policy back at once (the relation below), but that can be lost with a restarted operator:
/// this bounds how late the policy hears of it.
const ACTIVE_POLL: Duration = Duration::from_secs(5);

/// The BackupValidationPolicy reconciler.
pub struct BackupPolicies {
    objects: Objects,
    reports: PathBuf,
}

impl std::fmt::Debug for BackupPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupPolicies")
    }
}

impl BackupPolicies {
    pub fn new(objects: Objects, reports: PathBuf) -> Self {
        Self { objects, reports }
    }
}

#[async_trait]
impl Reconciler for BackupPolicies {
    type Object = BackupValidationPolicy;
    type Status = BackupValidationPolicyStatus;

    const CONTROLLER: &'static str = CONTROLLER;
    // Its runs are deleted with it through their ownerReferences (by Kubernetes' garbage
    // collector, or the standalone store's); reports stay on disk.
    const FINALIZER: Option<&'static str> = None;

    fn status(object: &Self::Object) -> Option<&Self::Status> {
        object.status.as_ref()
    }

    fn set_status(object: &mut Self::Object, status: Self::Status) {
        object.status = Some(status);
    }

    async fn reconcile(
        &self,
        policy: &BackupValidationPolicy,
        ctx: &Context,
    ) -> Applied<Self::Status> {
        let now = (ctx.now)();
        let schedule = match validate(&policy.spec) {
            Ok(schedule) => schedule,
            Err(invalid) => return status::invalid(policy, invalid, now),
        };
        let observed = match self.observe(policy, ctx).await {
            Ok(observed) => observed,
            Err(failure) => return status::unchanged(policy, failure),
        };
        let plan = decide::decide(policy, &schedule, observed, now);
        let outcome = self.apply(policy, plan, ctx).await;
        status::status(policy, outcome, now)
    }

    async fn cleanup(
        &self,
        _policy: &BackupValidationPolicy,
        _ctx: &Context,
    ) -> Result<(), Failure> {
        Ok(())
    }

    const RBAC: &'static [Rule] = &[
        // Runs are created when due and deleted beyond the history limit.
        Rule::infrapilot(
            &["backupvalidationruns"],
            &["get", "list", "watch", "create", "delete"],
        ),
        // Runs carry an ownerReference with blockOwnerDeletion, which needs this where the
        // OwnerReferencesPermissionEnforcement admission plugin is on.
        Rule::infrapilot(&["backupvalidationpolicies/finalizers"], &["update"]),
        // Notifications go to the policy's channels, with their Secrets.
        Rule::infrapilot(&["alertchannels"], &["get"]),
        Rule::secrets(),
    ];

    fn relations() -> Vec<Relation> {
        vec![Relation {
            from: Kind::BackupValidationRun,
            map: policy_of_run,
            every: None,
        }]
    }
}
