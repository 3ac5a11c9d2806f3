//! Alertmanager's timing, as one pure step: the rule's timing settings, its ledger (the alerts
//! and the per-channel notification log kept in its status), what the condition sees now and
//! the time go in; the new ledger, the notifications owed and when to look again come out.
//!
//! The semantics are Prometheus' and Alertmanager's, on one group per rule:
//! - a subject whose condition holds is Pending from `since`, and Firing once `for` has
//!   passed (at once with `for: 0s`); a Pending alert whose condition clears is forgotten;
//! - a Firing alert whose condition clears keeps firing for `keepFiringFor`, then resolves;
//! - a channel is told of a change (alerts it was not told are firing, alerts it was told of
//!   that resolved) `groupWait` after the earliest change it has not been told, so that alerts
//!   firing together go in one notification. Alertmanager waits `group_interval` for later
//!   changes of a group already notified; a rule has no such field, so `groupWait` serves for
//!   both;
//! - with nothing new, a channel is told again `repeatInterval` after its last notification
//!   while anything fires;
//! - resolutions are told only with `sendResolved`, and only to channels told of the firing;
//! - until `silencedUntil`, everything is evaluated and nothing is sent: what is owed then is
//!   sent when the silence ends;
//! - a channel whose delivery failed is tried again at its `retryAt` (the runtime's backoff),
//!   without holding up the other channels.
//!
//! Nothing here reads the clock: the caller passes `now`, and the unit tests step it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::alert::{ActiveAlert, AlertState, ChannelNotifications, ResolvedAlert};

/// A rule's timing fields, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub group_wait: Duration,
    pub repeat_interval: Duration,
    pub send_resolved: bool,
    pub silenced_until: Option<Timestamp>,
}

/// One subject the condition holds for now, with the measured value.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub subject: String,
    /// A short description of the value: `exit code 1`, `12.5% of 240 requests`.
    pub message: String,
    pub labels: BTreeMap<String, String>,
}

/// The alerts and the notification log: what the rule's status keeps between evaluations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    /// Pending and firing alerts, by subject.
    pub active: Vec<ActiveAlert>,
    /// Resolved alerts some channel still has to be told of.
    pub resolved: Vec<ResolvedAlert>,
    /// One log per channel of the rule, in the rule's order.
    pub channels: Vec<ChannelNotifications>,
}

/// A notification owed to one channel: the whole group as Alertmanager sends it (every firing
/// alert, and the resolutions this channel is owed).
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub channel: String,
    pub firing: Vec<ActiveAlert>,
    pub resolved: Vec<ResolvedAlert>,
}

/// The outcome of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub ledger: Ledger,
    /// To deliver now; report each outcome with [`Ledger::delivered`] or [`Ledger::failed`].
    pub notifications: Vec<Notification>,
    /// The earliest time at which the time alone changes something (`for` elapsing, a
    /// `keepFiringFor` ending, a group wait or repeat falling due, a silence ending, a retry);
    /// `None` when only a new observation can.
    pub wake_at: Option<Timestamp>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn after(t: &Time, d: Duration) -> Timestamp {
    // Durations come from the rule's grammar and are far below jiff's range; saturate anyway.
    t.0.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// One evaluation: `observed` is every subject the condition holds for now; `channels` the
/// rule's channels, in order.
pub fn step(
    timing: &Timing,
    ledger: &Ledger,
    observed: &[Observed],
    channels: &[String],
    now: Timestamp,
) -> Step {
    let mut wake = Wake::default();
    let seen: BTreeMap<&str, &Observed> =
        observed.iter().map(|o| (o.subject.as_str(), o)).collect();
    let mut active = Vec::new();
    let mut resolved = ledger.resolved.clone();

    for alert in &ledger.active {
        match (seen.get(alert.subject.as_str()), alert.state) {
            (Some(now_seen), _) => {
                let mut alert = alert.clone();
                alert.cleared_at = None;
                alert.message = now_seen.message.clone();
                alert.labels = now_seen.labels.clone();
                promote(&mut alert, timing, now, &mut wake);
                active.push(alert);
            }
            // A pending alert whose condition cleared never was: nobody is told.
            (None, AlertState::Pending | AlertState::Inactive) => {}
            (None, AlertState::Firing) => {
                let cleared = alert.cleared_at.clone().unwrap_or_else(|| time(now));
                let ends = after(&cleared, timing.keep_firing_for);
                if ends <= now {
                    resolved.retain(|r| r.subject != alert.subject);
                    resolved.push(ResolvedAlert {
                        subject: alert.subject.clone(),
                        since: alert.since.clone(),
                        resolved_at: time(now),
                        message: alert.message.clone(),
                        labels: alert.labels.clone(),
                    });
                } else {
                    wake.at(ends);
                    active.push(ActiveAlert {
                        cleared_at: Some(cleared),
                        ..alert.clone()
                    });
                }
            }
        }
    }
    let known: BTreeSet<String> = active.iter().map(|a| a.subject.clone()).collect();
    for o in observed.iter().filter(|o| !known.contains(&o.subject)) {
        let mut alert = ActiveAlert {
            subject: o.subject.clone(),
            state: AlertState::Pending,
            since: time(now),
            fired_at: None,
            cleared_at: None,
            message: o.message.clone(),
            labels: o.labels.clone(),
        };
        promote(&mut alert, timing, now, &mut wake);
        active.push(alert);
    }
    active.sort_by(|a, b| a.subject.cmp(&b.subject));
    // A subject firing again is no longer resolved.
    resolved.retain(|r| !known_or_new(&active, &r.subject));

    let firing: Vec<&ActiveAlert> = active
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .collect();
    let firing_subjects: BTreeSet<&str> = firing.iter().map(|a| a.subject.as_str()).collect();
    let silenced = timing.silenced_until.filter(|until| *until > now);
    if let Some(until) = silenced {
        wake.at(until);
    }

    let mut logs = Vec::new();
    let mut notifications = Vec::new();
    for name in channels {
        let mut log = ledger
            .channels
            .iter()
            .find(|c| &c.name == name)
            .cloned()
            .unwrap_or_else(|| ChannelNotifications {
                name: name.clone(),
                ..ChannelNotifications::default()
            });
        // Forget subjects that are neither active nor owed a resolution (a log older than
        // the alerts it names).
        log.notified
            .retain(|s| known_or_new(&active, s) || resolved.iter().any(|r| &r.subject == s));
        // A channel is owed a resolution only if it was told of the firing; without
        // sendResolved it simply forgets the alert.
        let owed_resolved: Vec<&ResolvedAlert> = resolved
            .iter()
            .filter(|r| {
                log.notified.contains(&r.subject) && !firing_subjects.contains(r.subject.as_str())
            })
            .collect();
        if !timing.send_resolved {
            let gone: BTreeSet<&str> = owed_resolved.iter().map(|r| r.subject.as_str()).collect();
            log.notified.retain(|s| !gone.contains(s.as_str()));
        }
        let owed_resolved: Vec<&ResolvedAlert> = if timing.send_resolved {
            owed_resolved
        } else {
            Vec::new()
        };
        let new_firing: Vec<&&ActiveAlert> = firing
            .iter()
            .filter(|a| !log.notified.contains(&a.subject))
            .collect();

        let changed_since = new_firing
            .iter()
            .filter_map(|a| a.fired_at.as_ref().map(|t| t.0))
            .chain(owed_resolved.iter().map(|r| r.resolved_at.0))
            .min();
        let due = match changed_since {
            Some(since) => Some(after(&time(since), timing.group_wait)),
            None if !firing.is_empty() => log
                .last_notification_time
                .as_ref()
                .map(|last| after(last, timing.repeat_interval)),
            None => None,
        };
        // A failed delivery waits for its retry, whatever else fell due meanwhile.
        let due = match (due, log.retry_at.as_ref()) {
            (Some(due), Some(retry)) => Some(due.max(retry.0)),
            (due, _) => due,
        };
        if let Some(due) = due {
            if due <= now && silenced.is_none() {
                // Delivered, the group is due again after repeatInterval; a failure brings
                // its retry earlier ([`Ledger::wake_at`]).
                if !firing.is_empty() {
                    wake.at(after(&time(now), timing.repeat_interval));
                }
                notifications.push(Notification {
                    channel: name.clone(),
                    firing: firing.iter().map(|a| (*a).clone()).collect(),
                    resolved: owed_resolved.iter().map(|r| (*r).clone()).collect(),
                });
            } else if due > now {
                wake.at(due);
            }
        }
        logs.push(log);
    }

    // A resolution is kept only while some channel is still owed it.
    resolved.retain(|r| {
        timing.send_resolved && logs.iter().any(|log| log.notified.contains(&r.subject))
    });
    resolved.sort_by(|a, b| a.subject.cmp(&b.subject));
    Step {
        ledger: Ledger {
            active,
            resolved,
            channels: logs,
        },
        notifications,
        wake_at: wake.0,
    }
}

fn known_or_new(active: &[ActiveAlert], subject: &str) -> bool {
    active.iter().any(|a| a.subject == subject)
}

/// Pending → Firing once `for` has passed since the condition began to hold.
fn promote(alert: &mut ActiveAlert, timing: &Timing, now: Timestamp, wake: &mut Wake) {
    if alert.state == AlertState::Firing {
        return;
    }
    let fires = after(&alert.since, timing.for_);
    if fires <= now {
        alert.state = AlertState::Firing;
        alert.fired_at = Some(time(now));
    } else {
        alert.state = AlertState::Pending;
        wake.at(fires);
    }
}

#[derive(Default)]
struct Wake(Option<Timestamp>);

impl Wake {
    fn at(&mut self, t: Timestamp) {
        self.0 = Some(self.0.map_or(t, |w| w.min(t)));
    }
}

impl Ledger {
    /// Records that `notification` reached its channel at `now`.
    pub fn delivered(&mut self, notification: &Notification, now: Timestamp) {
        if let Some(log) = self
            .channels
            .iter_mut()
            .find(|c| c.name == notification.channel)
        {
            log.notified = notification
                .firing
                .iter()
                .map(|a| a.subject.clone())
                .collect();
            log.last_notification_time = Some(time(now));
            log.failures = 0;
            log.last_failure = None;
            log.retry_at = None;
        }
        let channels = &self.channels;
        self.resolved
            .retain(|r| channels.iter().any(|c| c.notified.contains(&r.subject)));
    }

    /// Records that delivery to `channel` failed; it is tried again after `retry_in`.
    pub fn failed(&mut self, channel: &str, reason: String, retry_in: Duration, now: Timestamp) {
        if let Some(log) = self.channels.iter_mut().find(|c| c.name == channel) {
            log.failures = log.failures.saturating_add(1);
            log.last_failure = Some(reason);
            log.retry_at = Some(time(after(&time(now), retry_in)));
        }
    }

    /// When to evaluate again once the step's notifications were delivered or failed: the
    /// step's own wake-up, or a retry the failures scheduled, whichever is first.
    pub fn wake_at(&self, step: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
        step.into_iter()
            .chain(
                self.channels
                    .iter()
                    .filter_map(|c| c.retry_at.as_ref().map(|t| t.0)),
            )
            .filter(|t| *t > now)
            .min()
    }

    /// The rule's state: Firing if any alert fires, else Pending if any is pending.
    pub fn state(&self) -> AlertState {
        let has = |state| self.active.iter().any(|a| a.state == state);
        if has(AlertState::Firing) {
            AlertState::Firing
        } else if has(AlertState::Pending) {
            AlertState::Pending
        } else {
            AlertState::Inactive
        }
    }
}

#[cfg(test)]
mod tests;
