use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

use super::decide::new_run;
use super::{BackupPolicies, run_name};
use crate::api::alert::Severity;
use crate::api::backup::{
    BackupValidationPolicy, BackupValidationPolicyStatus, BackupValidationRun,
    BackupValidationRunStatus, RunPhase,
};
use crate::reconcile::tests_support::{MemoryObjects, Recorder, context, fixed_now};
use crate::reconcile::{Reconciler, Requeue};
use crate::secrets::SecretMap;

/// Objects in memory: the runs of the policy, its channels.
type Objects = MemoryObjects;

fn stored_runs(objects: &MemoryObjects) -> Vec<BackupValidationRun> {
    objects.all()
}

use crate::api::alert::AlertChannel;

fn policy(spec: serde_json::Value, status: Option<serde_json::Value>) -> BackupValidationPolicy {
    let mut object = json!({
        "apiVersion": "infrapilot.io/v1alpha1",
        "kind": "BackupValidationPolicy",
        "metadata": {"name": "nightly", "namespace": "shop", "uid": "policy-uid", "generation": 1},
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).unwrap()
}

fn spec() -> serde_json::Value {
    json!({"source": {"path": "/backups/*.dump"}, "schedule": "30 3 * * *", "channels": [{"name": "ops"}]})
}

fn webhook_channel() -> AlertChannel {
    serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "ops", "namespace": "shop"},
        "spec": {"webhook": {"url": "http://127.0.0.1:9/hook"}},
    }))
    .unwrap()
}

/// A run of `policy`, made by it, ended with `phase` at `completed` seconds.
fn ended(
    policy: &BackupValidationPolicy,
    name: &str,
    phase: RunPhase,
    completed: i64,
) -> BackupValidationRun {
    let mut run = new_run(policy, Timestamp::from_second(completed - 60).unwrap());
    run.metadata.name = Some(name.to_owned());
    run.metadata.creation_timestamp = Some(Time(Timestamp::from_second(completed - 60).unwrap()));
    let ready = Condition {
        type_: "Ready".to_owned(),
        status: if phase == RunPhase::Succeeded {
            "True"
        } else {
            "False"
        }
        .to_owned(),
        reason: "R".to_owned(),
        message: format!("{name} ended"),
        observed_generation: None,
        last_transition_time: Time(fixed_now()),
    };
    run.status = Some(BackupValidationRunStatus {
        phase,
        completion_time: Some(Time(Timestamp::from_second(completed).unwrap())),
        conditions: crate::api::common::Conditions(vec![ready]),
        ..BackupValidationRunStatus::default()
    });
    run
}

fn reconciler(objects: Arc<Objects>) -> BackupPolicies {
    BackupPolicies::new(objects.port(), std::env::temp_dir())
}

fn ready(status: &BackupValidationPolicyStatus) -> (String, String, String) {
    let c = status.conditions.get("Ready").unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_new_policy_schedules_its_next_run_and_runs_once_on_create() {
    let objects = Arc::new(Objects::default());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let mut spec = spec();
    spec["runOnCreate"] = json!(true);
    let policies = reconciler(objects.clone());

    let applied = policies.reconcile(&policy(spec.clone(), None), &ctx).await;
    let runs = stored_runs(&objects);
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.metadata.name.as_deref(), Some("nightly-1800000000"));
    assert_eq!(run.spec.policy_ref.name, "nightly");
    let owner = &run.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("policy-uid", Some(true))
    );
    // fixed_now is 2027-01-15T08:00:00Z: the next 03:30 is the day after.
    assert_eq!(
        applied.status.next_run_time.as_ref().unwrap().0.to_string(),
        "2027-01-16T03:30:00Z"
    );
    // While its run goes the policy looks again soon, not only at the next run time.
    assert_eq!(applied.requeue, Requeue::After(Duration::from_secs(5)));
    assert_eq!(ready(&applied.status).1, "NotValidatedYet");
    assert_eq!(
        applied.status.last_run.as_ref().unwrap().name,
        "nightly-1800000000"
    );
    assert_eq!(
        recorder.audit.lock().unwrap()[0].action,
        "backup-run.create"
    );

    // Its status stored, the policy makes no second run.
    let again = policies
        .reconcile(
            &policy(spec, Some(serde_json::to_value(&applied.status).unwrap())),
            &ctx,
        )
        .await;
    assert_eq!(stored_runs(&objects).len(), 1);
    assert_eq!(again.status.next_run_time, applied.status.next_run_time);
}

#[tokio::test]
async fn a_due_run_is_created_once_and_skipped_while_another_one_runs() {
    let objects = Arc::new(Objects::default());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let policies = reconciler(objects.clone());
    let due = json!({"observedGeneration": 1, "nextRunTime": "2027-01-15T03:30:00Z"});

    let applied = policies
        .reconcile(&policy(spec(), Some(due.clone())), &ctx)
        .await;
    let name = |r: &BackupValidationRun| r.metadata.name.clone().unwrap();
    let runs: Vec<String> = stored_runs(&objects).iter().map(name).collect();
    // Named after its due time, so that a restarted operator cannot make it twice.
    assert_eq!(runs, ["nightly-1799983800"]);
    assert_eq!(
        applied
            .status
            .last_schedule_time
            .as_ref()
            .unwrap()
            .0
            .to_string(),
        "2027-01-15T03:30:00Z"
    );
    // Reconciling the same status again (its write was lost) creates nothing new.
    policies
        .reconcile(&policy(spec(), Some(due.clone())), &ctx)
        .await;
    assert_eq!(stored_runs(&objects).len(), 1);

    // The next slot comes while that run still runs: skipped, with an event.
    let later = json!({"observedGeneration": 1, "nextRunTime": "2027-01-15T07:30:00Z"});
    let applied = policies.reconcile(&policy(spec(), Some(later)), &ctx).await;
    assert_eq!(stored_runs(&objects).len(), 1);
    let events = recorder.events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e.reason == "RunSkipped" && e.note.contains("nightly-1799983800")),
        "{events:?}"
    );
    assert_eq!(
        applied.status.next_run_time.as_ref().unwrap().0.to_string(),
        "2027-01-16T03:30:00Z"
    );
}

#[tokio::test]
async fn ended_runs_count_failures_and_the_channel_hears_of_failure_and_recovery() {
    let base = policy(spec(), None);
    let objects = Arc::new(Objects::with([
        ended(&base, "nightly-1", RunPhase::Failed, 1_799_990_000),
        ended(&base, "nightly-2", RunPhase::Failed, 1_799_995_000),
    ]));
    objects.put(&webhook_channel());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let policies = reconciler(objects.clone());
    let status = json!({"observedGeneration": 1, "nextRunTime": "2027-01-16T03:30:00Z"});

    let applied = policies
        .reconcile(&policy(spec(), Some(status)), &ctx)
        .await;
    assert_eq!(applied.status.consecutive_failures, 2);
    assert_eq!(
        applied.status.last_completed_run.as_ref().unwrap().name,
        "nightly-2"
    );
    // No run goes: the next look is the next run time (fixed_now is 2027-01-15T08:00:00Z).
    assert_eq!(
        applied.requeue,
        Requeue::After(Duration::from_secs(19 * 3600 + 1800))
    );
    let (ready_status, reason, message) = ready(&applied.status);
    assert_eq!(
        (ready_status.as_str(), reason.as_str()),
        ("False", "ValidationFailed")
    );
    assert!(
        message.contains("nightly-2 ended") && message.contains("2 in a row"),
        "{message}"
    );
    let deliveries = recorder.deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 2, "one message per failed run");
    assert_eq!(
        deliveries[1].1.title,
        "Backup validation failed: shop/nightly"
    );
    assert_eq!(deliveries[1].1.severity, Severity::Critical);

    // Nothing new: nothing is sent again.
    let stored = serde_json::to_value(&applied.status).unwrap();
    policies
        .reconcile(&policy(spec(), Some(stored.clone())), &ctx)
        .await;
    assert_eq!(recorder.deliveries.lock().unwrap().len(), 2);

    // A success after failures is a recovery.
    objects.put(&ended(
        &base,
        "nightly-3",
        RunPhase::Succeeded,
        1_799_999_000,
    ));
    let applied = policies
        .reconcile(&policy(spec(), Some(stored)), &ctx)
        .await;
    assert_eq!(applied.status.consecutive_failures, 0);
    assert_eq!(ready(&applied.status).1, "Validated");
    let deliveries = recorder.deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 3);
    assert_eq!(
        deliveries[2].1.title,
        "Backup validation recovered: shop/nightly"
    );
    assert!(
        deliveries[2].1.text.contains("after 2 failed runs"),
        "{}",
        deliveries[2].1.text
    );
    let audit = recorder.audit.lock().unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == "notification.send")
            .count(),
        3
    );
}

#[tokio::test]
async fn history_is_pruned_per_outcome_and_hand_made_runs_are_kept() {
    let mut spec = spec();
    spec["historyLimit"] = json!({"successful": 1, "failed": 1});
    let base = policy(spec.clone(), None);
    let mut by_hand = ended(&base, "by-hand", RunPhase::Succeeded, 1_799_900_000);
    by_hand.metadata.owner_references = None;
    let objects = Arc::new(Objects::with([
        ended(&base, "ok-old", RunPhase::Succeeded, 1_799_910_000),
        ended(&base, "ok-new", RunPhase::Succeeded, 1_799_920_000),
        ended(&base, "bad-old", RunPhase::Failed, 1_799_905_000),
        ended(&base, "bad-new", RunPhase::Failed, 1_799_915_000),
        by_hand,
    ]));
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let status = json!({"observedGeneration": 1, "nextRunTime": "2027-01-16T03:30:00Z"});
    reconciler(objects.clone())
        .reconcile(&policy(spec, Some(status)), &ctx)
        .await;
    let mut left: Vec<String> = stored_runs(&objects)
        .iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["bad-new", "by-hand", "ok-new"]);
    let deleted: Vec<String> = recorder
        .audit
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.action == "backup-run.delete")
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
}

#[tokio::test]
async fn a_bad_schedule_is_reported_with_its_field_and_nothing_is_scheduled() {
    let objects = Arc::new(Objects::default());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let mut spec = spec();
    spec["schedule"] = json!("61 3 * * *");
    spec["runOnCreate"] = json!(true);
    let applied = reconciler(objects.clone())
        .reconcile(&policy(spec, None), &ctx)
        .await;
    let (status, reason, message) = ready(&applied.status);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        message.starts_with("spec.schedule: not a cron expression"),
        "{message}"
    );
    assert_eq!(
        applied.failure.unwrap().category,
        crate::retry::Category::Config
    );
    assert!(stored_runs(&objects).is_empty());
}

#[tokio::test]
async fn a_suspended_policy_schedules_nothing() {
    let objects = Arc::new(Objects::default());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let mut spec = spec();
    spec["suspend"] = json!(true);
    let due = json!({"observedGeneration": 1, "nextRunTime": "2027-01-15T03:30:00Z"});
    let applied = reconciler(objects.clone())
        .reconcile(&policy(spec, Some(due)), &ctx)
        .await;
    assert!(stored_runs(&objects).is_empty());
    assert_eq!(applied.status.next_run_time, None);
    assert_eq!(applied.requeue, Requeue::OnChange);
}

#[test]
fn run_names_are_cut_to_stay_valid() {
    let long = "a".repeat(60);
    let name = run_name(&long, Timestamp::from_second(1_800_000_000).unwrap());
    assert_eq!(name, format!("{}-1800000000", "a".repeat(52)));
    assert_eq!(run_name("x-", Timestamp::from_second(1).unwrap()), "x-1");
}
