//! Delivering what the timing owes: each notification to its channel, each attempt audited
//! and shown as an event on the rule, each outcome written into the ledger.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::alert::alertmanager::{self, Rule};
use crate::alert::timing::{Ledger, Notification};
use crate::api::alert::{AlertChannel, AlertRule};
use crate::audit::{NewRecord, Outcome};
use crate::delivery::{Message, MessageKind, Target};
use crate::reconcile::{Category, Context, Event, EventType, Failure, object_ref};
use crate::runtime::objects::Objects;

use super::CONTROLLER;

/// The message for `notification`: Alertmanager's group for webhooks, and the same facts as
/// text for e-mail and Slack.
pub fn message(rule: &Rule<'_>, notification: &Notification) -> Message {
    let group = alertmanager::group(rule, notification);
    let firing = notification.firing.len();
    let resolved = notification.resolved.len();
    let severity = alertmanager::severity_label(rule.severity).to_uppercase();
    let (kind, head) = if firing > 0 {
        (MessageKind::Firing, format!("FIRING:{firing}"))
    } else {
        (MessageKind::Resolved, format!("RESOLVED:{resolved}"))
    };
    let subjects: Vec<&str> = notification
        .firing
        .iter()
        .map(|a| a.subject.as_str())
        .chain(notification.resolved.iter().map(|r| r.subject.as_str()))
        .collect();
    let title = format!(
        "[{head}] {severity} {}/{}: {}",
        rule.namespace,
        rule.name,
        subjects.join(", ")
    );
    let mut text = format!(
        "AlertRule {}/{} ({})\n",
        rule.namespace, rule.name, rule.condition
    );
    for alert in &notification.firing {
        text.push_str(&format!(
            "\nFIRING  {}: {} (since {})",
            alert.subject, alert.message, alert.since.0
        ));
    }
    for alert in &notification.resolved {
        text.push_str(&format!(
            "\nRESOLVED {}: {} (from {} to {})",
            alert.subject, alert.message, alert.since.0, alert.resolved_at.0
        ));
    }
    Message {
        kind,
        title,
        text,
        severity: rule.severity,
        source: format!("AlertRule {}/{}", rule.namespace, rule.name),
        labels: BTreeMap::from([
            (
                "rule".to_owned(),
                format!("{}/{}", rule.namespace, rule.name),
            ),
            ("condition".to_owned(), rule.condition.to_owned()),
        ]),
        alerts: Some(Box::new(group)),
    }
}

/// Where a channel's messages go, or why they cannot go there.
async fn target(
    objects: &Objects,
    namespace: &str,
    name: &str,
    ctx: &Context,
) -> Result<Target, (Category, String)> {
    match objects.get::<AlertChannel>(namespace, name).await {
        Ok(Some(channel)) => {
            crate::delivery::resolve(&channel.spec, namespace, ctx.secrets.as_ref())
                .await
                .map_err(|error| (error.category(), error.to_string()))
        }
        Ok(None) => Err((
            Category::Config,
            "the AlertChannel does not exist".to_owned(),
        )),
        Err(failure) => Err((failure.category, failure.message)),
    }
}

/// Delivers each notification and records the outcome in `ledger`; returns the first
/// failure, for the runtime's logs and metrics.
pub async fn deliver(
    objects: &Objects,
    rule: &AlertRule,
    condition: &'static str,
    notifications: Vec<Notification>,
    ledger: &mut Ledger,
    ctx: &Context,
    now: Timestamp,
) -> Option<Failure> {
    let namespace = rule.metadata.namespace.as_deref().unwrap_or("default");
    let name = rule.metadata.name.as_deref().unwrap_or_default();
    let described = Rule {
        namespace,
        name,
        condition,
        severity: rule.spec.severity,
    };
    let mut first_failure = None;
    for notification in notifications {
        let message = message(&described, &notification);
        let channel = format!("AlertChannel {namespace}/{}", notification.channel);
        let sent = match target(objects, namespace, &notification.channel, ctx).await {
            Ok(target) => ctx
                .notifier
                .deliver(&target, &message)
                .await
                .map(|receipt| receipt.detail)
                .map_err(|error| (error.category(), error.to_string())),
            Err(unusable) => Err(unusable),
        };
        let alerts = alerts_of(&notification);
        let (outcome, detail, event) = match sent {
            Ok(receipt) => {
                ledger.delivered(&notification, now);
                (
                    Outcome::Success,
                    format!("{}; {alerts}; {receipt}", message.title),
                    Event {
                        type_: EventType::Normal,
                        reason: "Notified".to_owned(),
                        action: "Notify".to_owned(),
                        note: format!("{channel}: {}", message.title),
                    },
                )
            }
            Err((category, reason)) => {
                let failures = ledger
                    .channels
                    .iter()
                    .find(|c| c.name == notification.channel)
                    .map_or(0, |c| c.failures);
                let retry_in = category.delay(failures.saturating_add(1));
                ledger.failed(&notification.channel, reason.clone(), retry_in, now);
                first_failure.get_or_insert(Failure {
                    category,
                    message: format!("{channel}: {reason}"),
                });
                (
                    Outcome::Failure,
                    format!("{alerts}; {reason}"),
                    Event {
                        type_: EventType::Warning,
                        reason: "NotificationFailed".to_owned(),
                        action: "Notify".to_owned(),
                        note: format!("{channel}: {reason}; retried in {retry_in:?}"),
                    },
                )
            }
        };
        let record = NewRecord {
            controller: CONTROLLER.to_owned(),
            object: object_ref(rule),
            action: "notification.send".to_owned(),
            target: channel,
            outcome,
            detail,
        };
        if let Err(error) = ctx.audit.record(record).await {
            // The notification went (or failed) either way; a lost record must be loud, and
            // must not make the rule send again.
            tracing::error!(%error, rule = %format!("{namespace}/{name}"), "could not write the audit record of a notification");
        }
        ctx.events.publish(&object_ref(rule), event).await;
    }
    first_failure
}

/// `firing: api, worker; resolved: db`, for audit details.
fn alerts_of(notification: &Notification) -> String {
    let list = |subjects: Vec<&str>| {
        if subjects.is_empty() {
            "none".to_owned()
        } else {
            subjects.join(", ")
        }
    };
    format!(
        "firing: {}; resolved: {}",
        list(
            notification
                .firing
                .iter()
                .map(|a| a.subject.as_str())
                .collect()
        ),
        list(
            notification
                .resolved
                .iter()
                .map(|r| r.subject.as_str())
                .collect()
        ),
    )
}
