//! The status (pure), from what was applied, and when to look again.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ACTIVE_POLL;
use super::apply::Outcome;
use super::decide::{Progress, finished};
use crate::api::backup::{
    BackupValidationPolicy, BackupValidationPolicyStatus, BackupValidationRun, RunPhase,
};
use crate::reconcile::backup::{name_of, summary};
use crate::reconcile::{Applied, Category, Failure, Requeue};
use crate::status::{self, Observation};

/// The wait after the runs could not be listed or the due run created.
const RETRY: Duration = Duration::from_secs(10);

/// A spec [`super::validate`] refused: nothing is scheduled until it changes.
pub(super) fn invalid(
    policy: &BackupValidationPolicy,
    (field, reason): (String, String),
    now: Timestamp,
) -> Applied<BackupValidationPolicyStatus> {
    let generation = policy.metadata.generation;
    let message = format!("{field}: {reason}");
    let mut status = BackupValidationPolicyStatus {
        observed_generation: generation,
        next_run_time: None,
        ..policy.status.clone().unwrap_or_default()
    };
    status::set(
        &mut status.conditions,
        Observation::ready(false, "InvalidSpec", &message),
        generation,
        now,
    );
    Applied {
        status,
        requeue: Requeue::OnChange,
        failure: Some(Failure {
            category: Category::Config,
            message,
        }),
    }
}

/// The status as it was: what this reconcile learnt is learnt again by the next one.
pub(super) fn unchanged(
    policy: &BackupValidationPolicy,
    failure: Failure,
) -> Applied<BackupValidationPolicyStatus> {
    Applied {
        status: policy.status.clone().unwrap_or_default(),
        requeue: Requeue::After(RETRY),
        failure: Some(failure),
    }
}

pub(super) fn status(
    policy: &BackupValidationPolicy,
    outcome: Outcome,
    now: Timestamp,
) -> Applied<BackupValidationPolicyStatus> {
    let (progress, runs) = match outcome {
        Outcome::NotStarted(failure) => return unchanged(policy, failure),
        Outcome::Done { progress, runs } => (progress, runs),
    };
    let generation = policy.metadata.generation;
    let Progress {
        consecutive_failures,
        last_completed_run,
        last_schedule_time,
        next_run_time,
    } = progress;
    let mut status = BackupValidationPolicyStatus {
        observed_generation: generation,
        conditions: policy
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
        last_run: newest(&runs).map(summary),
        last_completed_run,
        last_schedule_time,
        next_run_time,
        consecutive_failures,
    };
    let ready = ready(&status, &runs);
    status::set(&mut status.conditions, ready, generation, now);
    Applied {
        requeue: requeue(status.next_run_time.as_ref(), &runs, now),
        status,
        failure: None,
    }
}

/// The run shown as `lastRun`. A run created by this reconcile has no creation time yet, so
/// it is shown only when there is no other.
fn newest(runs: &[BackupValidationRun]) -> Option<&BackupValidationRun> {
    runs.iter().max_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            name_of(*r),
        )
    })
}

fn ready(status: &BackupValidationPolicyStatus, runs: &[BackupValidationRun]) -> Observation {
    match &status.last_completed_run {
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
    }
}

/// At the next run time; while a run goes, at least every [`ACTIVE_POLL`].
fn requeue(next_run_time: Option<&Time>, runs: &[BackupValidationRun], now: Timestamp) -> Requeue {
    let next = next_run_time.map(|next| {
        next.0
            .duration_since(now)
            .unsigned_abs()
            .max(Duration::from_millis(100))
    });
    let going = runs.iter().any(|r| !finished(r));
    match (next, going) {
        (Some(next), true) => Requeue::After(next.min(ACTIVE_POLL)),
        (Some(next), false) => Requeue::After(next),
        (None, true) => Requeue::After(ACTIVE_POLL),
        (None, false) => Requeue::OnChange,
    }
}
