//! The BackupValidationPolicy reconciler: validate the spec, take note of runs that ended
//! (consecutive failures, notifications), create the run that is due, prune the history, and
//! report.
//!
//! Scheduling follows CronJob's semantics with `concurrencyPolicy: Forbid`: a run due while
//! another run of the policy is still going is skipped; after downtime only the most recent
//! missed time is run, once. A scheduled run's name is its policy's name and the due time,
//! so creating it twice (a restart between creating it and writing the status) is harmless.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::{POLICY_LABEL, audit, name_of, namespace_of, policy_of_run, runs_of, summary};
use crate::api::Kind;
use crate::api::alert::AlertChannel;
use crate::api::alert::Severity;
use crate::api::backup::{
    BackupValidationPolicy, BackupValidationPolicySpec, BackupValidationPolicyStatus,
    BackupValidationRun, BackupValidationRunSpec, RunPhase,
};
use crate::api::common::{LocalObjectReference, parse_duration};
use crate::audit::Outcome as AuditOutcome;
use crate::backup::schedule::Schedule;
use crate::backup::{ladder, report, syntax};
use crate::delivery::{Message, MessageKind};
use crate::reconcile::{Applied, Context, Failure, Reconciler, Requeue};
use crate::runtime::objects::{Objects, Relation};
use crate::runtime::rbac::Rule;
use crate::status::{self, Observation};

pub const CONTROLLER: &str = "backup-policy";

/// Run names are `<policy>-<unix seconds>`; a policy name is cut to this length in them so
/// that the run name stays a valid label value too (as CronJob limits its names).
const NAME_PREFIX_MAX: usize = 52;

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

/// Checks what the schema cannot: the cron expression, the durations, the queries.
pub fn validate(spec: &BackupValidationPolicySpec) -> Result<Schedule, (String, String)> {
    let schedule =
        Schedule::parse(&spec.schedule).map_err(|reason| ("spec.schedule".to_owned(), reason))?;
    if let Some(age) = &spec.checks.max_age
        && parse_duration(age).is_none()
    {
        return Err((
            "spec.checks.maxAge".to_owned(),
            format!("{age:?} is not a duration"),
        ));
    }
    if parse_duration(&spec.checks.restore.timeout).is_none() {
        return Err((
            "spec.checks.restore.timeout".to_owned(),
            format!("{:?} is not a duration", spec.checks.restore.timeout),
        ));
    }
    if let Some(size) = &spec.checks.min_size
        && ladder::parse_size(size).is_none()
    {
        return Err((
            "spec.checks.minSize".to_owned(),
            format!("{size:?} is not a size"),
        ));
    }
    for (index, query) in spec.checks.queries.iter().enumerate() {
        syntax::check_query(&query.sql)
            .map_err(|reason| (format!("spec.checks.queries[{index}].sql"), reason))?;
        if query.expect.is_none() && query.min.is_none() && query.max.is_none() {
            return Err((
                format!("spec.checks.queries[{index}]"),
                "set expect, min or max".to_owned(),
            ));
        }
    }
    Ok(schedule)
}

/// The name of the run a policy starts at `due`.
pub fn run_name(policy: &str, due: Timestamp) -> String {
    let mut prefix: String = policy.chars().take(NAME_PREFIX_MAX).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}-{}", due.as_second())
}

/// A new run of `policy`, owned by it.
fn new_run(policy: &BackupValidationPolicy, due: Timestamp) -> BackupValidationRun {
    let name = name_of(policy);
    BackupValidationRun {
        metadata: ObjectMeta {
            name: Some(run_name(&name, due)),
            namespace: Some(namespace_of(policy)),
            labels: Some(BTreeMap::from([
                (POLICY_LABEL.to_owned(), name.clone()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "infrapilot".to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                "infrapilot.io/scheduled-time".to_owned(),
                due.to_string(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
                kind: "BackupValidationPolicy".to_owned(),
                name: name.clone(),
                uid: policy.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: BackupValidationRunSpec {
            policy_ref: LocalObjectReference { name },
            file: None,
        },
        status: None,
    }
}

fn owned_by(run: &BackupValidationRun, policy: &BackupValidationPolicy) -> bool {
    let uid = policy.metadata.uid.as_deref();
    run.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

fn finished(run: &BackupValidationRun) -> bool {
    run.status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, RunPhase::Succeeded | RunPhase::Failed))
}

fn completion(run: &BackupValidationRun) -> (Option<Timestamp>, String) {
    (
        run.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0),
        name_of(run),
    )
}

/// Runs to delete beyond the history limits (pure): the oldest finished runs the policy
/// made, kept per outcome. Hand-made runs are their author's.
fn to_prune<'a>(
    policy: &BackupValidationPolicy,
    runs: &'a [BackupValidationRun],
) -> Vec<&'a BackupValidationRun> {
    let mut prune = Vec::new();
    for (phase, keep) in [
        (RunPhase::Succeeded, policy.spec.history_limit.successful),
        (RunPhase::Failed, policy.spec.history_limit.failed),
    ] {
        let mut ended: Vec<&BackupValidationRun> = runs
            .iter()
            .filter(|r| owned_by(r, policy))
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase == phase))
            .collect();
        ended.sort_by_key(|r| std::cmp::Reverse(completion(r)));
        prune.extend(ended.into_iter().skip(keep as usize));
    }
    prune
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
        let generation = policy.metadata.generation;
        let current = policy.status.clone().unwrap_or_default();
        let mut status = current.clone();
        status.observed_generation = generation;
        let (namespace, name) = (namespace_of(policy), name_of(policy));

        let schedule = match validate(&policy.spec) {
            Ok(schedule) => schedule,
            Err((field, reason)) => {
                let message = format!("{field}: {reason}");
                status.next_run_time = None;
                status::set(
                    &mut status.conditions,
                    Observation::ready(false, "InvalidSpec", &message),
                    generation,
                    now,
                );
                return Applied {
                    status,
                    requeue: Requeue::OnChange,
                    failure: Some(Failure {
                        category: crate::retry::Category::Config,
                        message,
                    }),
                };
            }
        };

        let mut runs = match runs_of(&self.objects, &namespace, &name).await {
            Ok(runs) => runs,
            Err(failure) => {
                return Applied {
                    status: current,
                    requeue: Requeue::After(Duration::from_secs(10)),
                    failure: Some(failure),
                };
            }
        };

        // Runs that ended since the last look, oldest first.
        let seen = status
            .last_completed_run
            .as_ref()
            .map(|r| (r.completion_time.as_ref().map(|t| t.0), r.name.clone()));
        let mut ended: Vec<&BackupValidationRun> = runs
            .iter()
            .filter(|r| finished(r))
            .filter(|r| seen.as_ref().is_none_or(|seen| completion(r) > *seen))
            .collect();
        ended.sort_by_key(|r| completion(r));
        for run in ended {
            let failed = run
                .status
                .as_ref()
                .is_some_and(|s| s.phase == RunPhase::Failed);
            let recovered = !failed && status.consecutive_failures > 0;
            let previous_failures = status.consecutive_failures;
            status.consecutive_failures = if failed {
                status.consecutive_failures.saturating_add(1)
            } else {
                0
            };
            status.last_completed_run = Some(summary(run));
            if failed || recovered {
                self.notify(policy, run, ctx, failed, previous_failures)
                    .await;
            }
        }

        // Schedule.
        let active = runs.iter().find(|r| !finished(r)).map(name_of);
        let mut due: Option<(Timestamp, &str)> = None;
        if policy.spec.run_on_create && current.last_run.is_none() && runs.is_empty() {
            due = Some((now, "it was created with runOnCreate"));
        }
        if policy.spec.suspend {
            status.next_run_time = None;
        } else {
            let rescheduled =
                current.observed_generation != generation || current.next_run_time.is_none();
            match &current.next_run_time {
                Some(next) if !rescheduled && next.0 <= now => {
                    status.last_schedule_time = Some(next.clone());
                    match &active {
                        Some(running) => {
                            ctx.events
                                .publish(
                                    &crate::reconcile::object_ref(policy),
                                    crate::reconcile::Event {
                                        type_: crate::reconcile::EventType::Warning,
                                        reason: "RunSkipped".to_owned(),
                                        action: "Schedule".to_owned(),
                                        note: format!(
                                            "the run due at {} was skipped: run {running} is still going",
                                            next.0
                                        ),
                                    },
                                )
                                .await;
                        }
                        None => due = due.or(Some((next.0, "it is due"))),
                    }
                }
                _ => {}
            }
            if rescheduled || current.next_run_time.as_ref().is_some_and(|n| n.0 <= now) {
                status.next_run_time = schedule.next_after(now).map(Time);
            }
        }
        if let Some((when, why)) = due {
            let run = new_run(policy, when);
            let run_name = name_of(&run);
            if let Err(failure) = self.objects.create(&run).await {
                return Applied {
                    status: current,
                    requeue: Requeue::After(Duration::from_secs(10)),
                    failure: Some(failure),
                };
            }
            audit(
                ctx,
                CONTROLLER,
                policy,
                "backup-run.create",
                run_name.clone(),
                AuditOutcome::Success,
                format!("started because {why}"),
            )
            .await;
            if !runs.iter().any(|r| name_of(r) == run_name) {
                runs.push(run);
            }
        }

        // The newest run, as `lastRun`.
        status.last_run = runs
            .iter()
            .max_by_key(|r| {
                (
                    r.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    r.status
                        .as_ref()
                        .and_then(|s| s.start_time.as_ref())
                        .map(|t| t.0),
                    name_of(*r),
                )
            })
            .map(summary);

        // History.
        for run in to_prune(policy, &runs) {
            let run_name = name_of(run);
            match self
                .objects
                .delete::<BackupValidationRun>(&namespace, &run_name)
                .await
            {
                Ok(()) => {
                    if let Err(error) = report::remove(&self.reports, &namespace, &name, &run_name)
                    {
                        tracing::warn!(run = %run_name, "could not remove a pruned run's report: {error}");
                    }
                    audit(
                        ctx,
                        CONTROLLER,
                        policy,
                        "backup-run.delete",
                        run_name,
                        AuditOutcome::Success,
                        "beyond the history limit".to_owned(),
                    )
                    .await;
                }
                Err(failure) => {
                    tracing::warn!(run = %run_name, "could not prune a run: {}", failure.message);
                }
            }
        }

        let ready = match &status.last_completed_run {
            Some(run) if run.phase == RunPhase::Succeeded => Observation::ready(
                true,
                "Validated",
                format!("the last run, {}, proved the backup restores", run.name),
            ),
            Some(run) => {
                let why = runs
                    .iter()
                    .find(|r| name_of(*r) == run.name)
                    .and_then(|r| r.status.as_ref())
                    .and_then(|s| s.conditions.get(status::READY))
                    .map(|c| c.message.clone())
                    .unwrap_or_else(|| "see the run".to_owned());
                Observation::ready(
                    false,
                    "ValidationFailed",
                    format!(
                        "the last run, {}, failed ({} in a row): {why}",
                        run.name, status.consecutive_failures
                    ),
                )
            }
            None => Observation::ready(
                false,
                "NotValidatedYet",
                match (&status.last_run, &status.next_run_time) {
                    (Some(run), _) => format!("run {} has not finished yet", run.name),
                    (None, Some(next)) => format!("no run yet; the first is due at {}", next.0),
                    (None, None) => "no run yet; scheduled runs are suspended".to_owned(),
                },
            ),
        };
        status::set(&mut status.conditions, ready, generation, now);

        let next = status.next_run_time.as_ref().map(|next| {
            next.0
                .duration_since(now)
                .unsigned_abs()
                .max(Duration::from_millis(100))
        });
        let going = runs.iter().any(|r| !finished(r));
        let requeue = match (next, going) {
            (Some(next), true) => Requeue::After(next.min(ACTIVE_POLL)),
            (Some(next), false) => Requeue::After(next),
            (None, true) => Requeue::After(ACTIVE_POLL),
            (None, false) => Requeue::OnChange,
        };
        Applied {
            status,
            requeue,
            failure: None,
        }
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
        }]
    }
}

impl BackupPolicies {
    /// Tells the policy's channels that a run failed, or that validation recovered.
    async fn notify(
        &self,
        policy: &BackupValidationPolicy,
        run: &BackupValidationRun,
        ctx: &Context,
        failed: bool,
        previous_failures: u32,
    ) {
        let namespace = namespace_of(policy);
        let message = report_message(policy, run, failed, previous_failures);
        for LocalObjectReference { name: channel } in &policy.spec.channels {
            let target = format!("AlertChannel {namespace}/{channel}");
            let delivered = match self.objects.get::<AlertChannel>(&namespace, channel).await {
                Ok(Some(channel)) => {
                    match crate::delivery::resolve(&channel.spec, &namespace, ctx.secrets.as_ref())
                        .await
                    {
                        Ok(resolved) => ctx
                            .notifier
                            .deliver(&resolved, &message)
                            .await
                            .map(|receipt| receipt.detail)
                            .map_err(|e| e.to_string()),
                        Err(error) => Err(error.to_string()),
                    }
                }
                Ok(None) => Err("the AlertChannel does not exist".to_owned()),
                Err(failure) => Err(failure.message),
            };
            let (outcome, detail) = match &delivered {
                Ok(detail) => (
                    AuditOutcome::Success,
                    format!("{}: {detail}", message.title),
                ),
                Err(error) => (AuditOutcome::Failure, error.clone()),
            };
            if let Err(error) = &delivered {
                ctx.events
                    .publish(
                        &crate::reconcile::object_ref(policy),
                        crate::reconcile::Event {
                            type_: crate::reconcile::EventType::Warning,
                            reason: "NotificationFailed".to_owned(),
                            action: "Notify".to_owned(),
                            note: format!("{target}: {error}"),
                        },
                    )
                    .await;
            }
            audit(
                ctx,
                CONTROLLER,
                policy,
                "notification.send",
                target,
                outcome,
                detail,
            )
            .await;
        }
    }
}

/// The message about a run that ended (pure).
fn report_message(
    policy: &BackupValidationPolicy,
    run: &BackupValidationRun,
    failed: bool,
    previous_failures: u32,
) -> Message {
    let namespace = namespace_of(policy);
    let policy_name = name_of(policy);
    let status = run.status.clone().unwrap_or_default();
    let why = status
        .conditions
        .get(status::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let mut labels = BTreeMap::from([
        ("policy".to_owned(), format!("{namespace}/{policy_name}")),
        ("run".to_owned(), name_of(run)),
    ]);
    if let Some(backup) = &status.backup {
        labels.insert("file".to_owned(), backup.file.clone());
        if let Some(sha) = &backup.sha256 {
            labels.insert("sha256".to_owned(), sha.clone());
        }
    }
    if let Some(report) = &status.report {
        labels.insert("report".to_owned(), report.html.clone());
    }
    let (title, text, severity) = if failed {
        (
            format!("Backup validation failed: {namespace}/{policy_name}"),
            format!(
                "Run {} of BackupValidationPolicy {namespace}/{policy_name} failed ({} failed in a row).\n{why}",
                name_of(run),
                previous_failures + 1
            ),
            Severity::Critical,
        )
    } else {
        (
            format!("Backup validation recovered: {namespace}/{policy_name}"),
            format!(
                "Run {} of BackupValidationPolicy {namespace}/{policy_name} succeeded after {previous_failures} failed runs.\n{why}",
                name_of(run)
            ),
            Severity::Info,
        )
    };
    Message {
        kind: MessageKind::Report,
        title,
        text,
        severity,
        source: format!("BackupValidationPolicy {namespace}/{policy_name}"),
        labels,
    }
}

#[cfg(test)]
mod tests;
