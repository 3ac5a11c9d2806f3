//! The whole pipeline against the fakes of `tests_support`, then the decide step alone
//! (scheduling, history, notifications) and what observe reads, without a clock or channels.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

use super::decide::{Plan, Skipped, decide, new_run};
use super::observe::{Channel, Observed};
use super::{BackupPolicies, run_name, validate};
use crate::api::alert::Severity;
use crate::api::backup::{
    BackupValidationPolicy, BackupValidationPolicyStatus, BackupValidationRun,
    BackupValidationRunStatus, RunPhase,
};
use crate::reconcile::backup::summary;
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

// The decide step: pure calls on the Plan. fixed_now is 2027-01-15T08:00:00Z.

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn plan(policy: &BackupValidationPolicy, runs: Vec<BackupValidationRun>) -> Plan {
    let schedule = validate(&policy.spec).unwrap();
    let observed = Observed {
        runs,
        channels: Vec::new(),
    };
    decide(policy, &schedule, observed, fixed_now())
}

/// The status the policy had after a reconcile on generation 1 that set `nextRunTime`.
fn scheduled_for(next: &str) -> serde_json::Value {
    json!({"observedGeneration": 1, "nextRunTime": next})
}

/// A run of `policy`, made by it, still going.
fn going(policy: &BackupValidationPolicy, name: &str) -> BackupValidationRun {
    let mut run = new_run(policy, at("2027-01-15T07:00:00Z"));
    run.metadata.name = Some(name.to_owned());
    run.status = Some(BackupValidationRunStatus {
        phase: RunPhase::Running,
        ..BackupValidationRunStatus::default()
    });
    run
}

fn started(plan: &Plan) -> Option<(String, &'static str)> {
    plan.start
        .as_ref()
        .map(|start| (start.run.metadata.name.clone().unwrap(), start.why))
}

fn next_run_time(plan: &Plan) -> Option<Timestamp> {
    plan.progress.next_run_time.as_ref().map(|t| t.0)
}

fn last_schedule_time(plan: &Plan) -> Option<Timestamp> {
    plan.progress.last_schedule_time.as_ref().map(|t| t.0)
}

#[test]
fn nothing_is_started_before_the_first_due_time() {
    let new = plan(&policy(spec(), None), Vec::new());
    assert_eq!(started(&new), None);
    assert_eq!(next_run_time(&new), Some(at("2027-01-16T03:30:00Z")));
    assert_eq!(last_schedule_time(&new), None);

    let waiting = policy(spec(), Some(scheduled_for("2027-01-15T08:00:01Z")));
    let waiting = plan(&waiting, Vec::new());
    assert_eq!(started(&waiting), None);
    assert_eq!(waiting.skipped, None);
    assert_eq!(next_run_time(&waiting), Some(at("2027-01-15T08:00:01Z")));
}

#[test]
fn the_run_due_is_started_at_its_due_time_and_named_after_it() {
    let base = policy(spec(), None);
    let earlier = ended(&base, "nightly-1", RunPhase::Succeeded, 1_799_900_000);
    let due = policy(spec(), Some(scheduled_for("2027-01-15T03:30:00Z")));
    let planned = plan(&due, vec![earlier]);
    assert_eq!(
        started(&planned),
        Some(("nightly-1799983800".to_owned(), "it is due"))
    );
    let run = &planned.start.as_ref().unwrap().run;
    assert_eq!(
        run.metadata.annotations.as_ref().unwrap()["infrapilot.io/scheduled-time"],
        "2027-01-15T03:30:00Z"
    );
    assert_eq!(
        run.metadata.labels.as_ref().unwrap()["infrapilot.io/policy"],
        "nightly"
    );
    assert_eq!(
        run.metadata.owner_references.as_ref().unwrap()[0].uid,
        "policy-uid"
    );
    assert_eq!(
        last_schedule_time(&planned),
        Some(at("2027-01-15T03:30:00Z"))
    );
    assert_eq!(next_run_time(&planned), Some(at("2027-01-16T03:30:00Z")));

    // Due at this very instant is due.
    let now = policy(spec(), Some(scheduled_for("2027-01-15T08:00:00Z")));
    assert_eq!(
        started(&plan(&now, Vec::new())),
        Some(("nightly-1800000000".to_owned(), "it is due"))
    );
}

#[test]
fn a_due_run_is_skipped_while_another_one_goes_under_forbid() {
    let due = policy(spec(), Some(scheduled_for("2027-01-15T03:30:00Z")));
    let plan = plan(&due, vec![going(&due, "nightly-1799900000")]);
    assert_eq!(started(&plan), None);
    assert_eq!(
        plan.skipped,
        Some(Skipped {
            due: at("2027-01-15T03:30:00Z"),
            running: "nightly-1799900000".to_owned(),
        })
    );
    // The skipped time counts as scheduled, and the schedule moves on.
    assert_eq!(last_schedule_time(&plan), Some(at("2027-01-15T03:30:00Z")));
    assert_eq!(next_run_time(&plan), Some(at("2027-01-16T03:30:00Z")));
}

#[test]
fn after_downtime_the_missed_times_bring_one_run_not_one_each() {
    // Five nightly times passed since the status was written.
    let behind = policy(spec(), Some(scheduled_for("2027-01-10T03:30:00Z")));
    let plan = plan(&behind, Vec::new());
    // The one run carries the stored time, the first of the missed ones.
    assert_eq!(
        started(&plan),
        Some((run_name("nightly", at("2027-01-10T03:30:00Z")), "it is due"))
    );
    assert_eq!(last_schedule_time(&plan), Some(at("2027-01-10T03:30:00Z")));
    // The next time is after now: the missed times in between are never due.
    assert_eq!(next_run_time(&plan), Some(at("2027-01-16T03:30:00Z")));
}

#[test]
fn a_changed_spec_reschedules_from_now_without_running_the_old_due_time() {
    // Status written for generation 0, the policy is at generation 1.
    let changed = policy(
        spec(),
        Some(json!({"observedGeneration": 0, "nextRunTime": "2027-01-15T03:30:00Z"})),
    );
    let plan = plan(&changed, Vec::new());
    assert_eq!(started(&plan), None);
    assert_eq!(plan.skipped, None);
    assert_eq!(last_schedule_time(&plan), None);
    assert_eq!(next_run_time(&plan), Some(at("2027-01-16T03:30:00Z")));
}

#[test]
fn run_on_create_starts_a_run_now_only_for_a_policy_that_never_had_one() {
    let mut spec = spec();
    spec["runOnCreate"] = json!(true);
    let new = policy(spec.clone(), None);
    assert_eq!(
        started(&plan(&new, Vec::new())),
        Some((
            "nightly-1800000000".to_owned(),
            "it was created with runOnCreate"
        ))
    );

    let earlier = ended(&new, "nightly-1", RunPhase::Succeeded, 1_799_900_000);
    assert_eq!(started(&plan(&new, vec![earlier.clone()])), None);

    // Its run gone (pruned, deleted), the status still remembers it.
    let remembered = json!({
        "observedGeneration": 1,
        "nextRunTime": "2027-01-16T03:30:00Z",
        "lastRun": summary(&earlier),
    });
    assert_eq!(
        started(&plan(&policy(spec, Some(remembered)), Vec::new())),
        None
    );
}

#[test]
fn a_suspended_policy_starts_nothing_on_schedule_and_has_no_next_run_time() {
    let mut spec = spec();
    spec["suspend"] = json!(true);
    let status = json!({
        "observedGeneration": 1,
        "nextRunTime": "2027-01-15T03:30:00Z",
        "lastScheduleTime": "2027-01-14T03:30:00Z",
    });
    let plan = plan(&policy(spec, Some(status)), Vec::new());
    assert_eq!(started(&plan), None);
    assert_eq!(plan.skipped, None);
    assert_eq!(next_run_time(&plan), None);
    assert_eq!(last_schedule_time(&plan), Some(at("2027-01-14T03:30:00Z")));
}

#[test]
fn a_suspended_policy_still_runs_once_on_create() {
    // `suspend` skips scheduled runs; the run on create is not one of them.
    let mut spec = spec();
    spec["suspend"] = json!(true);
    spec["runOnCreate"] = json!(true);
    let plan = plan(&policy(spec, None), Vec::new());
    assert_eq!(
        started(&plan),
        Some((
            "nightly-1800000000".to_owned(),
            "it was created with runOnCreate"
        ))
    );
    assert_eq!(next_run_time(&plan), None);
}

#[test]
fn history_keeps_the_newest_finished_runs_of_each_outcome_up_to_its_limit() {
    let mut spec = spec();
    spec["historyLimit"] = json!({"successful": 2, "failed": 1});
    let limited = policy(spec, Some(scheduled_for("2027-01-16T03:30:00Z")));
    let runs = vec![
        ended(&limited, "ok-1", RunPhase::Succeeded, 1_799_910_000),
        ended(&limited, "ok-3", RunPhase::Succeeded, 1_799_930_000),
        ended(&limited, "ok-2", RunPhase::Succeeded, 1_799_920_000),
        ended(&limited, "bad-1", RunPhase::Failed, 1_799_905_000),
        ended(&limited, "bad-2", RunPhase::Failed, 1_799_915_000),
        ended(&limited, "bad-0", RunPhase::Failed, 1_799_901_000),
    ];
    // Successful runs first, then failed ones; each newest first.
    assert_eq!(plan(&limited, runs).prune, ["ok-1", "bad-1", "bad-0"]);
}

#[test]
fn the_default_history_keeps_three_successful_and_five_failed_runs() {
    let base = policy(spec(), Some(scheduled_for("2027-01-16T03:30:00Z")));
    let mut runs = Vec::new();
    for i in 0..4 {
        let name = format!("ok-{i}");
        runs.push(ended(&base, &name, RunPhase::Succeeded, 1_799_910_000 + i));
    }
    for i in 0..6 {
        let name = format!("bad-{i}");
        runs.push(ended(&base, &name, RunPhase::Failed, 1_799_920_000 + i));
    }
    assert_eq!(plan(&base, runs).prune, ["ok-0", "bad-0"]);
}

#[test]
fn runs_made_by_hand_or_by_another_policy_or_still_going_are_never_pruned() {
    let mut spec = spec();
    spec["historyLimit"] = json!({"successful": 0, "failed": 0});
    let base = policy(spec, Some(scheduled_for("2027-01-16T03:30:00Z")));
    let mut by_hand = ended(&base, "by-hand", RunPhase::Failed, 1_799_900_000);
    by_hand.metadata.owner_references = None;
    let mut other = ended(&base, "other", RunPhase::Succeeded, 1_799_900_000);
    other.metadata.owner_references.as_mut().unwrap()[0].uid = "other-uid".to_owned();
    let runs = vec![
        by_hand,
        other,
        going(&base, "going"),
        ended(&base, "mine", RunPhase::Succeeded, 1_799_910_000),
    ];
    // A limit of 0 keeps none of the policy's own finished runs.
    assert_eq!(plan(&base, runs).prune, ["mine"]);
}

/// A status whose last completed run is `run`, after `failures` failures in a row.
fn after(run: &BackupValidationRun, failures: u32) -> serde_json::Value {
    json!({
        "observedGeneration": 1,
        "nextRunTime": "2027-01-16T03:30:00Z",
        "lastCompletedRun": summary(run),
        "consecutiveFailures": failures,
    })
}

#[test]
fn a_failed_run_is_reported_with_the_failures_in_a_row() {
    let base = policy(spec(), None);
    let seen = ended(&base, "nightly-2", RunPhase::Failed, 1_799_990_000);
    let new = ended(&base, "nightly-3", RunPhase::Failed, 1_799_995_000);
    let plan = plan(&policy(spec(), Some(after(&seen, 2))), vec![seen, new]);
    assert_eq!(plan.progress.consecutive_failures, 3);
    assert_eq!(
        plan.progress.last_completed_run.as_ref().unwrap().name,
        "nightly-3"
    );
    assert_eq!(plan.notify.len(), 1, "{:?}", plan.notify);
    let message = &plan.notify[0];
    assert_eq!(message.title, "Backup validation failed: shop/nightly");
    assert_eq!(
        message.text,
        "Run nightly-3 of BackupValidationPolicy shop/nightly failed (3 failed in a row).\nnightly-3 ended"
    );
    assert_eq!(message.severity, Severity::Critical);
    assert_eq!(message.source, "BackupValidationPolicy shop/nightly");
    assert_eq!(message.labels["policy"], "shop/nightly");
    assert_eq!(message.labels["run"], "nightly-3");
}

#[test]
fn a_success_after_failures_is_reported_as_a_recovery() {
    let base = policy(spec(), None);
    let seen = ended(&base, "nightly-2", RunPhase::Failed, 1_799_990_000);
    let new = ended(&base, "nightly-3", RunPhase::Succeeded, 1_799_995_000);
    let plan = plan(&policy(spec(), Some(after(&seen, 2))), vec![seen, new]);
    assert_eq!(plan.progress.consecutive_failures, 0);
    assert_eq!(plan.notify.len(), 1, "{:?}", plan.notify);
    let message = &plan.notify[0];
    assert_eq!(message.title, "Backup validation recovered: shop/nightly");
    assert_eq!(
        message.text,
        "Run nightly-3 of BackupValidationPolicy shop/nightly succeeded after 2 failed runs.\nnightly-3 ended"
    );
    assert_eq!(message.severity, Severity::Info);
}

#[test]
fn a_success_after_a_success_sends_nothing() {
    let base = policy(spec(), None);
    let seen = ended(&base, "nightly-2", RunPhase::Succeeded, 1_799_990_000);
    let new = ended(&base, "nightly-3", RunPhase::Succeeded, 1_799_995_000);
    let plan = plan(&policy(spec(), Some(after(&seen, 0))), vec![seen, new]);
    assert!(plan.notify.is_empty(), "{:?}", plan.notify);
    assert_eq!(plan.progress.consecutive_failures, 0);
    assert_eq!(
        plan.progress.last_completed_run.as_ref().unwrap().name,
        "nightly-3"
    );
}

#[test]
fn runs_seen_before_or_still_going_are_not_counted() {
    let base = policy(spec(), None);
    let older = ended(&base, "nightly-1", RunPhase::Failed, 1_799_980_000);
    let seen = ended(&base, "nightly-2", RunPhase::Failed, 1_799_990_000);
    let runs = vec![older, seen.clone(), going(&base, "nightly-3")];
    let plan = plan(&policy(spec(), Some(after(&seen, 1))), runs);
    assert!(plan.notify.is_empty(), "{:?}", plan.notify);
    assert_eq!(plan.progress.consecutive_failures, 1);
    assert_eq!(plan.progress.last_completed_run, Some(summary(&seen)));
}

#[test]
fn runs_that_ended_since_the_last_look_are_counted_oldest_first() {
    let base = policy(spec(), Some(scheduled_for("2027-01-16T03:30:00Z")));
    let runs = vec![
        ended(&base, "c", RunPhase::Succeeded, 1_799_995_000),
        ended(&base, "a", RunPhase::Failed, 1_799_985_000),
        ended(&base, "b", RunPhase::Failed, 1_799_990_000),
    ];
    let plan = plan(&base, runs);
    let texts: Vec<&str> = plan
        .notify
        .iter()
        .map(|m| m.text.lines().next().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "Run a of BackupValidationPolicy shop/nightly failed (1 failed in a row).",
            "Run b of BackupValidationPolicy shop/nightly failed (2 failed in a row).",
            "Run c of BackupValidationPolicy shop/nightly succeeded after 2 failed runs.",
        ]
    );
    assert_eq!(plan.progress.consecutive_failures, 0);
    assert_eq!(plan.progress.last_completed_run.as_ref().unwrap().name, "c");
}

#[tokio::test]
async fn channels_are_read_only_when_a_run_ended_since_the_last_look() {
    let base = policy(spec(), None);
    let seen = ended(&base, "nightly-2", RunPhase::Failed, 1_799_990_000);
    let objects = Arc::new(Objects::with([seen.clone()]));
    objects.put(&webhook_channel());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let policies = reconciler(objects.clone());
    let looked = policy(spec(), Some(after(&seen, 1)));

    let observed = policies.observe(&looked, &ctx).await.unwrap();
    assert_eq!(observed.runs.len(), 1);
    assert_eq!(observed.channels, []);

    objects.put(&ended(&base, "nightly-3", RunPhase::Failed, 1_799_995_000));
    let observed = policies.observe(&looked, &ctx).await.unwrap();
    let targets: Vec<(&str, bool)> = observed
        .channels
        .iter()
        .map(|c: &Channel| (c.target.as_str(), c.resolved.is_ok()))
        .collect();
    assert_eq!(targets, [("AlertChannel shop/ops", true)]);

    // A channel that does not exist is reported in its delivery, not as a failed reconcile.
    let mut missing = looked.clone();
    missing.spec.channels[0].name = "gone".to_owned();
    let observed = policies.observe(&missing, &ctx).await.unwrap();
    assert_eq!(
        observed.channels[0].resolved,
        Err("the AlertChannel does not exist".to_owned())
    );
}
