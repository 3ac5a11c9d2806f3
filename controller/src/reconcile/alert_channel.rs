//! The AlertChannel reconciler: resolve the channel's secrets, and when `verify` is set,
//! deliver a verification message once per spec generation. Ready says whether the channel
//! can deliver.

use std::collections::BTreeMap;

use super::{Applied, Category, Context, Event, EventType, Failure, Requeue, object_ref};
use crate::api::alert::{AlertChannel, AlertChannelSpec, AlertChannelStatus, Delivery, Severity};
use crate::audit::{NewRecord, Outcome};
use crate::delivery::{Message, MessageKind, Receipt, ResolveError, Target};
use crate::status::{self, Observation};

/// The controller name in audit records and field managers.
pub const CONTROLLER: &str = "alertchannel";

/// What the reconciler decided to do, before doing it (pure).
#[derive(Clone, Debug, PartialEq)]
enum Plan {
    /// Settings are valid and there is nothing to send.
    Configured,
    /// Verification for this generation already succeeded: nothing to redo.
    AlreadyVerified,
    /// Send this verification message.
    Verify(Message),
}

fn plan(channel: &AlertChannel, current: &AlertChannelStatus) -> Plan {
    if !channel.spec.verify {
        return Plan::Configured;
    }
    let generation = channel.metadata.generation;
    if current.verified && current.observed_generation == generation {
        return Plan::AlreadyVerified;
    }
    Plan::Verify(verification_message(channel))
}

fn verification_message(channel: &AlertChannel) -> Message {
    let name = object_name(channel);
    Message {
        kind: MessageKind::Verification,
        title: format!("InfraPilot: AlertChannel {name} verified"),
        text: format!(
            "This message confirms that InfraPilot can deliver alerts to the AlertChannel {name}.\n\
             It is sent when the channel is created and whenever its settings change."
        ),
        severity: Severity::Info,
        source: format!("AlertChannel {name}"),
        labels: BTreeMap::from([("channel".to_owned(), name)]),
        alerts: None,
    }
}

fn channel_type(spec: &AlertChannelSpec) -> Option<String> {
    [
        (spec.smtp.is_some(), "smtp"),
        (spec.slack.is_some(), "slack"),
        (spec.webhook.is_some(), "webhook"),
    ]
    .into_iter()
    .find_map(|(set, name)| set.then(|| name.to_owned()))
}

fn object_name(channel: &AlertChannel) -> String {
    let namespace = channel.metadata.namespace.as_deref().unwrap_or("default");
    format!(
        "{namespace}/{}",
        channel.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Reconciles one channel, given its current status, into the status it should have.
pub async fn reconcile(channel: &AlertChannel, ctx: &Context) -> Applied<AlertChannelStatus> {
    let current = channel.status.clone().unwrap_or_default();
    let generation = channel.metadata.generation;
    let now = (ctx.now)();
    let mut status = AlertChannelStatus {
        observed_generation: generation,
        type_: channel_type(&channel.spec),
        // A new spec has not been verified until it is.
        verified: current.verified && current.observed_generation == generation,
        ..current.clone()
    };

    let namespace = channel.metadata.namespace.as_deref().unwrap_or("default");
    let target =
        match crate::delivery::resolve(&channel.spec, namespace, ctx.secrets.as_ref()).await {
            Ok(target) => target,
            Err(error) => {
                let message = error.to_string();
                let reason = match error {
                    ResolveError::Secret { .. } => "SecretUnavailable",
                    ResolveError::Invalid { .. } | ResolveError::NoDestination => "InvalidSpec",
                };
                status::set(
                    &mut status.conditions,
                    Observation::ready(false, reason, &message),
                    generation,
                    now,
                );
                status.verified = false;
                // A missing Secret may be created at any time; come back on a slow backoff.
                let failure = Failure {
                    category: error.category(),
                    message,
                };
                return Applied {
                    status,
                    requeue: Requeue::OnChange,
                    failure: Some(failure),
                };
            }
        };

    match plan(channel, &current) {
        Plan::Configured => {
            let message = format!("{}; verification is off", describe(&target));
            status::set(
                &mut status.conditions,
                Observation::ready(true, "Configured", message),
                generation,
                now,
            );
            Applied {
                status,
                requeue: Requeue::OnChange,
                failure: None,
            }
        }
        Plan::AlreadyVerified => Applied {
            status,
            requeue: Requeue::OnChange,
            failure: None,
        },
        Plan::Verify(message) => {
            let result = ctx.notifier.deliver(&target, &message).await;
            record_delivery(channel, ctx, &target, &result).await;
            apply_delivery(&mut status, &target, result, generation, now)
        }
    }
}

fn describe(target: &Target) -> String {
    format!("delivers to {}", target.describe())
}

/// The status after a verification attempt (pure).
fn apply_delivery(
    status: &mut AlertChannelStatus,
    target: &Target,
    result: Result<Receipt, crate::delivery::DeliveryError>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Applied<AlertChannelStatus> {
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    match result {
        Ok(receipt) => {
            status.verified = true;
            status.delivery_failures = 0;
            status.last_delivery = Some(Delivery {
                time,
                success: true,
                message: receipt.detail,
            });
            let message = format!("verification message delivered to {}", target.describe());
            status::set(
                &mut status.conditions,
                Observation::ready(true, "Verified", message),
                generation,
                now,
            );
            Applied {
                status: status.clone(),
                requeue: Requeue::OnChange,
                failure: None,
            }
        }
        Err(error) => {
            status.verified = false;
            status.delivery_failures = status.delivery_failures.saturating_add(1);
            let message = error.to_string();
            status.last_delivery = Some(Delivery {
                time,
                success: false,
                message: message.clone(),
            });
            let reason = match error.category() {
                Category::Config => "InvalidSettings",
                Category::Rejected => "DeliveryRejected",
                Category::Timeout => "DeliveryTimedOut",
                _ => "Unreachable",
            };
            status::set(
                &mut status.conditions,
                Observation::ready(false, reason, &message),
                generation,
                now,
            );
            // A bad setting waits for a spec change; anything else retries with backoff.
            let requeue = if error.is_retryable() {
                Requeue::After(error.category().delay(status.delivery_failures))
            } else {
                Requeue::OnChange
            };
            Applied {
                status: status.clone(),
                requeue,
                failure: Some(Failure {
                    category: error.category(),
                    message,
                }),
            }
        }
    }
}

async fn record_delivery(
    channel: &AlertChannel,
    ctx: &Context,
    target: &Target,
    result: &Result<Receipt, crate::delivery::DeliveryError>,
) {
    let object = object_ref(channel);
    let (outcome, detail, event) = match result {
        Ok(receipt) => (
            Outcome::Success,
            receipt.detail.clone(),
            Event {
                type_: EventType::Normal,
                reason: "Verified".to_owned(),
                action: "Verify".to_owned(),
                note: format!("verification message delivered to {}", target.describe()),
            },
        ),
        Err(error) => (
            Outcome::Failure,
            error.to_string(),
            Event {
                type_: EventType::Warning,
                reason: "DeliveryFailed".to_owned(),
                action: "Verify".to_owned(),
                note: error.to_string(),
            },
        ),
    };
    let record = NewRecord {
        controller: CONTROLLER.to_owned(),
        object: object.clone(),
        action: "notification.send".to_owned(),
        target: target.describe(),
        outcome,
        detail,
    };
    if let Err(error) = ctx.audit.record(record).await {
        // The delivery happened; losing its audit record must be loud, but must not make the
        // reconciler send the message again.
        tracing::error!(%error, channel = %object_name(channel), "could not write the audit record of a delivery");
    }
    ctx.events.publish(&object, event).await;
}

#[cfg(test)]
mod tests;

/// The AlertChannel reconciler as the runtimes drive it.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlertChannels;

#[async_trait::async_trait]
impl super::Reconciler for AlertChannels {
    type Object = AlertChannel;
    type Status = AlertChannelStatus;

    const CONTROLLER: &'static str = CONTROLLER;
    // A channel owns nothing outside its object: deleting it needs no cleanup.
    const FINALIZER: Option<&'static str> = None;
    // Secrets hold URLs, tokens and passwords.
    const RBAC: &'static [crate::runtime::rbac::Rule] = &[crate::runtime::rbac::Rule::secrets()];

    fn status(object: &AlertChannel) -> Option<&AlertChannelStatus> {
        object.status.as_ref()
    }

    fn set_status(object: &mut AlertChannel, status: AlertChannelStatus) {
        object.status = Some(status);
    }

    async fn reconcile(&self, object: &AlertChannel, ctx: &Context) -> Applied<AlertChannelStatus> {
        reconcile(object, ctx).await
    }

    async fn cleanup(&self, _object: &AlertChannel, _ctx: &Context) -> Result<(), Failure> {
        Ok(())
    }
}
