//! The decisions, all pure: from the spec, the observed runs and channels, the current status
//! and the time, a [`Plan`]: what the runs that ended change (failures in a row, messages),
//! which run the schedule starts or skips, which runs fall beyond the history limits. Unit
//! tests drive every branch without objects, channels or a clock.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::observe::{Channel, Observed};
use crate::api::alert::Severity;
use crate::api::backup::{
    BackupValidationPolicy, BackupValidationPolicySpec, BackupValidationPolicyStatus,
    BackupValidationRun, BackupValidationRunSpec, RunPhase, RunSummary,
};
use crate::api::common::{LocalObjectReference, parse_duration};
use crate::backup::schedule::Schedule;
use crate::backup::{ladder, syntax};
use crate::delivery::{Message, MessageKind};
use crate::reconcile::backup::{POLICY_LABEL, name_of, namespace_of, summary};
use crate::status;

/// Run names are `<policy>-<unix seconds>`; a policy name is cut to this length in them so
/// that the run name stays a valid label value too (as CronJob limits its names).
const NAME_PREFIX_MAX: usize = 52;

/// What a reconcile does, and the status fields it settles.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub progress: Progress,
    /// Messages about the runs that ended, oldest first; each goes to every channel.
    pub notify: Vec<Message>,
    pub channels: Vec<Channel>,
    /// A due time that passed while another run was going.
    pub skipped: Option<Skipped>,
    pub start: Option<Start>,
    /// Runs beyond the history limits, to delete.
    pub prune: Vec<String>,
    /// The runs as observed, for the status.
    pub runs: Vec<BackupValidationRun>,
}

/// The status fields the ended runs and the schedule settle, whatever else apply does.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Progress {
    pub consecutive_failures: u32,
    pub last_completed_run: Option<RunSummary>,
    pub last_schedule_time: Option<Time>,
    pub next_run_time: Option<Time>,
}

/// A run not started under Forbid.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Skipped {
    pub due: Timestamp,
    /// The run still going.
    pub running: String,
}

/// A run to create.
#[derive(Clone, Debug)]
pub(super) struct Start {
    pub run: BackupValidationRun,
    /// Completes "started because …" in its audit record.
    pub why: &'static str,
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

/// What to do about `policy`, given what was observed at `now`.
pub(super) fn decide(
    policy: &BackupValidationPolicy,
    schedule: &Schedule,
    observed: Observed,
    now: Timestamp,
) -> Plan {
    let current = policy.status.clone().unwrap_or_default();
    let Observed { runs, channels } = observed;

    let mut consecutive_failures = current.consecutive_failures;
    let mut last_completed_run = current.last_completed_run.clone();
    let mut notify = Vec::new();
    for run in ended(current.last_completed_run.as_ref(), &runs) {
        let failed = run
            .status
            .as_ref()
            .is_some_and(|s| s.phase == RunPhase::Failed);
        let previous_failures = consecutive_failures;
        consecutive_failures = if failed {
            consecutive_failures.saturating_add(1)
        } else {
            0
        };
        last_completed_run = Some(summary(run));
        if failed || previous_failures > 0 {
            notify.push(report_message(policy, run, failed, previous_failures));
        }
    }

    let Scheduled {
        last_schedule_time,
        next_run_time,
        skipped,
        due,
    } = scheduled(policy, &current, schedule, &runs, now);
    let start = due.map(|(when, why)| Start {
        run: new_run(policy, when),
        why,
    });
    let prune = to_prune(policy, &runs).into_iter().map(name_of).collect();
    Plan {
        progress: Progress {
            consecutive_failures,
            last_completed_run,
            last_schedule_time,
            next_run_time,
        },
        notify,
        channels,
        skipped,
        start,
        prune,
        runs,
    }
}

/// Runs that ended after the one the status shows as the last completed, oldest first.
pub(super) fn ended<'a>(
    last_completed: Option<&RunSummary>,
    runs: &'a [BackupValidationRun],
) -> Vec<&'a BackupValidationRun> {
    let seen = last_completed.map(|r| (r.completion_time.as_ref().map(|t| t.0), r.name.clone()));
    let mut ended: Vec<&BackupValidationRun> = runs
        .iter()
        .filter(|r| finished(r))
        .filter(|r| seen.as_ref().is_none_or(|seen| completion(r) > *seen))
        .collect();
    ended.sort_by_key(|r| completion(r));
    ended
}

/// What the schedule says at `now`.
struct Scheduled {
    last_schedule_time: Option<Time>,
    next_run_time: Option<Time>,
    skipped: Option<Skipped>,
    /// The time to start a run for, and why.
    due: Option<(Timestamp, &'static str)>,
}

/// Only the stored `nextRunTime` can be due, and the next one is computed from `now`: after
/// downtime the times missed in between are not run one by one. A new generation reschedules
/// from `now` without running a time the old schedule made due.
fn scheduled(
    policy: &BackupValidationPolicy,
    current: &BackupValidationPolicyStatus,
    schedule: &Schedule,
    runs: &[BackupValidationRun],
    now: Timestamp,
) -> Scheduled {
    let mut scheduled = Scheduled {
        last_schedule_time: current.last_schedule_time.clone(),
        next_run_time: current.next_run_time.clone(),
        skipped: None,
        due: None,
    };
    if policy.spec.run_on_create && current.last_run.is_none() && runs.is_empty() {
        scheduled.due = Some((now, "it was created with runOnCreate"));
    }
    if policy.spec.suspend {
        scheduled.next_run_time = None;
        return scheduled;
    }
    let rescheduled = current.observed_generation != policy.metadata.generation
        || current.next_run_time.is_none();
    let passed = current.next_run_time.as_ref().filter(|next| next.0 <= now);
    if let Some(next) = passed
        && !rescheduled
    {
        scheduled.last_schedule_time = Some(next.clone());
        match runs.iter().find(|r| !finished(r)) {
            Some(running) => {
                scheduled.skipped = Some(Skipped {
                    due: next.0,
                    running: name_of(running),
                });
            }
            None => scheduled.due = scheduled.due.or(Some((next.0, "it is due"))),
        }
    }
    if rescheduled || passed.is_some() {
        scheduled.next_run_time = schedule.next_after(now).map(Time);
    }
    scheduled
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
pub(super) fn new_run(policy: &BackupValidationPolicy, due: Timestamp) -> BackupValidationRun {
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

pub(super) fn finished(run: &BackupValidationRun) -> bool {
    run.status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, RunPhase::Succeeded | RunPhase::Failed))
}

/// Orders runs by when they ended, the name breaking ties.
fn completion(run: &BackupValidationRun) -> (Option<Timestamp>, String) {
    (
        run.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0),
        name_of(run),
    )
}

/// The oldest finished runs the policy made, beyond what each outcome keeps. Hand-made runs
/// are their author's.
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

/// The message about a run that ended.
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
        alerts: None,
    }
}
