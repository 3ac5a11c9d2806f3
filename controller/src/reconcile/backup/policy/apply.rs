//! The only writes, in the order the plan's effects have always had: messages about the runs
//! that ended, the event of a skipped run, the due run, then the pruning. Each is audited.
//!
//! Messages go first and are not held back when the run cannot be created: that reconcile
//! then leaves the status as it was, so the next one sends them again.

use super::decide::{Plan, Progress, Skipped, Start};
use super::observe::Channel;
use super::{BackupPolicies, CONTROLLER};
use crate::api::backup::{BackupValidationPolicy, BackupValidationRun};
use crate::audit::Outcome as AuditOutcome;
use crate::backup::report;
use crate::delivery::Message;
use crate::reconcile::backup::{audit, name_of, namespace_of};
use crate::reconcile::{Context, Event, EventType, Failure, object_ref};

/// What was done, for the status: the status is computed from this only.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    /// The due run could not be created; nothing after it was done.
    NotStarted(Failure),
    Done {
        progress: Progress,
        /// The runs observed, and the one created.
        runs: Vec<BackupValidationRun>,
    },
}

impl BackupPolicies {
    pub(super) async fn apply(
        &self,
        policy: &BackupValidationPolicy,
        plan: Plan,
        ctx: &Context,
    ) -> Outcome {
        let Plan {
            progress,
            notify,
            channels,
            skipped,
            start,
            prune,
            mut runs,
        } = plan;
        for message in &notify {
            send(policy, message, &channels, ctx).await;
        }
        if let Some(Skipped { due, running }) = skipped {
            let note = format!("the run due at {due} was skipped: run {running} is still going");
            warn(policy, "RunSkipped", "Schedule", note, ctx).await;
        }
        if let Some(Start { run, why }) = start {
            let run_name = name_of(&run);
            if let Err(failure) = self.objects.create(&run).await {
                return Outcome::NotStarted(failure);
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
            // Already there when a restart came between its creation and the status write.
            if !runs.iter().any(|r| name_of(r) == run_name) {
                runs.push(run);
            }
        }
        for run_name in prune {
            self.prune(policy, run_name, ctx).await;
        }
        Outcome::Done { progress, runs }
    }

    /// Deletes a run and its report. A run that cannot be deleted is only logged: the next
    /// reconcile finds it beyond the limit again.
    async fn prune(&self, policy: &BackupValidationPolicy, run_name: String, ctx: &Context) {
        let (namespace, name) = (namespace_of(policy), name_of(policy));
        match self
            .objects
            .delete::<BackupValidationRun>(&namespace, &run_name)
            .await
        {
            Ok(()) => {
                if let Err(error) = report::remove(&self.reports, &namespace, &name, &run_name) {
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
}

/// Sends `message` to every channel; a channel that fails gets a Warning event, and every
/// attempt an audit record.
async fn send(
    policy: &BackupValidationPolicy,
    message: &Message,
    channels: &[Channel],
    ctx: &Context,
) {
    for Channel { target, resolved } in channels {
        let delivered = match resolved {
            Ok(resolved) => ctx
                .notifier
                .deliver(resolved, message)
                .await
                .map(|receipt| receipt.detail)
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.clone()),
        };
        let (outcome, detail) = match delivered {
            Ok(detail) => (
                AuditOutcome::Success,
                format!("{}: {detail}", message.title),
            ),
            Err(error) => {
                let note = format!("{target}: {error}");
                warn(policy, "NotificationFailed", "Notify", note, ctx).await;
                (AuditOutcome::Failure, error)
            }
        };
        audit(
            ctx,
            CONTROLLER,
            policy,
            "notification.send",
            target.clone(),
            outcome,
            detail,
        )
        .await;
    }
}

async fn warn(
    policy: &BackupValidationPolicy,
    reason: &str,
    action: &str,
    note: String,
    ctx: &Context,
) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        action: action.to_owned(),
        note,
    };
    ctx.events.publish(&object_ref(policy), event).await;
}
