//! The two backup reconcilers: a BackupValidationPolicy schedules runs and reports on them; a
//! BackupValidationRun climbs the ladder ([`crate::backup::ladder`]) once.
//!
//! Runs are objects of their own, owned by their policy (ownerReferences), as Jobs are by
//! their CronJob: `kubectl get bvr` shows the history, deleting a policy deletes its runs, and
//! a hand-made run with a `policyRef` is an on-demand validation. The runtimes give the
//! reconcilers the objects they need through [`Objects`].

pub mod policy;
pub mod run;

use tokio::sync::mpsc::UnboundedSender;

use super::{Failure, object_ref};
use crate::api::backup::{BackupValidationRun, RunSummary};
use crate::audit::{NewRecord, Outcome};
use crate::runtime::objects::{Objects, Selector};

pub use policy::BackupPolicies;
pub use run::BackupRuns;

/// The label every run carries with its policy's name.
pub const POLICY_LABEL: &str = "infrapilot.io/policy";
/// The label on throwaway servers: the run they belong to (its uid).
pub const RUN_LABEL: &str = "infrapilot.io/backup-run";

/// The runs whose `policyRef` names `policy`, made by it or by hand (hand-made runs need not
/// carry the policy's label, so they are matched on the reference).
async fn runs_of(
    objects: &Objects,
    namespace: &str,
    policy: &str,
) -> Result<Vec<BackupValidationRun>, Failure> {
    let selector = Selector {
        fields: [("spec.policyRef.name".to_owned(), policy.to_owned())].into(),
        ..Selector::everything()
    };
    objects.list(namespace, &selector).await
}

/// A run concerns the policy its `policyRef` names: the policy reconciles when one of its runs
/// changes (starts, ends, goes).
fn policy_of_run(run: &serde_json::Value) -> Vec<(String, String)> {
    let namespace = run["metadata"]["namespace"].as_str().unwrap_or_default();
    match run["spec"]["policyRef"]["name"].as_str() {
        Some(policy) => vec![(namespace.to_owned(), policy.to_owned())],
        None => Vec::new(),
    }
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
