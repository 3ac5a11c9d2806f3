//! The two backup reconcilers: a BackupValidationPolicy schedules runs and reports on them; a
//! BackupValidationRun climbs the ladder ([`crate::backup::ladder`]) once.
//!
//! Runs are objects of their own, owned by their policy (ownerReferences), as Jobs are by
//! their CronJob: `kubectl get bvr` shows the history, deleting a policy deletes its runs, and
//! a hand-made run with a `policyRef` is an on-demand validation. The runtimes give the
//! reconcilers the objects they need through [`BackupObjects`].

pub mod policy;
pub mod run;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::{Failure, object_ref};
use crate::api::alert::AlertChannel;
use crate::api::backup::{BackupValidationPolicy, BackupValidationRun, RunSummary};
use crate::audit::{NewRecord, Outcome};
use crate::backup::engine::RestoreEngine;

pub use policy::BackupPolicies;
pub use run::BackupRuns;

/// The label every run carries with its policy's name.
pub const POLICY_LABEL: &str = "infrapilot.io/policy";
/// The label on throwaway servers: the run they belong to (its uid).
pub const RUN_LABEL: &str = "infrapilot.io/backup-run";

/// The objects the backup reconcilers read and write besides the one they reconcile.
#[async_trait]
pub trait BackupObjects: Send + Sync {
    async fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BackupValidationPolicy>, Failure>;
    /// Every run whose `policyRef` names `policy`, made by it or by hand.
    async fn runs(
        &self,
        namespace: &str,
        policy: &str,
    ) -> Result<Vec<BackupValidationRun>, Failure>;
    /// Creates a run. One that already exists is fine: a restarted operator may create the
    /// same scheduled run again, and the name makes it the same run.
    async fn create_run(&self, run: &BackupValidationRun) -> Result<(), Failure>;
    /// Deletes a run; a run already gone is fine.
    async fn delete_run(&self, namespace: &str, name: &str) -> Result<(), Failure>;
    async fn channel(&self, namespace: &str, name: &str) -> Result<Option<AlertChannel>, Failure>;
}

/// Both reconcilers, wired to each other: a run that ends brings its policy back. At most
/// `max_restores` runs climb at once, across policies.
pub fn reconcilers(
    objects: Arc<dyn BackupObjects>,
    engine: Arc<dyn RestoreEngine>,
    reports: PathBuf,
    max_restores: usize,
) -> (BackupPolicies, BackupRuns) {
    let (policies_tx, policies_rx) = unbounded_channel();
    let policies = BackupPolicies::new(objects.clone(), reports.clone(), policies_rx);
    let runs = BackupRuns::new(objects, engine, reports, policies_tx, max_restores);
    (policies, runs)
}

/// A run as its policy's status shows it.
fn summary(run: &BackupValidationRun) -> RunSummary {
    let status = run.status.clone().unwrap_or_default();
    RunSummary {
        name: run.metadata.name.clone().unwrap_or_default(),
        phase: status.phase,
        start_time: status.start_time,
        completion_time: status.completion_time,
    }
}

fn namespace_of<K: kube::Resource>(object: &K) -> String {
    object
        .meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn name_of<K: kube::Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

/// Writes an audit record; a record that cannot be written is logged loudly, but the side
/// effect it describes has happened and is not undone or repeated for it.
async fn audit<K: kube::Resource<DynamicType = ()>>(
    ctx: &super::Context,
    controller: &str,
    object: &K,
    action: &str,
    target: String,
    outcome: Outcome,
    detail: String,
) {
    let record = NewRecord {
        controller: controller.to_owned(),
        object: object_ref(object),
        action: action.to_owned(),
        target,
        outcome,
        detail,
    };
    if let Err(error) = ctx.audit.record(record).await {
        tracing::error!(%error, action, "could not write an audit record");
    }
}

/// Sends to a trigger channel, ignoring a runtime that stopped listening.
fn trigger(sender: &UnboundedSender<(String, String)>, namespace: &str, name: &str) {
    let _ = sender.send((namespace.to_owned(), name.to_owned()));
}
