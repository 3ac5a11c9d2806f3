//! The pure steps: the spec checked and parsed, the condition evaluated on what was observed,
//! Alertmanager's timing stepped, and the status built from the outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::alert::conditions::{self, Found};
use crate::alert::crashes::{Crashes, Selection};
use crate::alert::timing::{self, Ledger, Observed, Step, Timing};
use crate::alert::traffic::{BUCKET, Traffic, error_rate, error_spike};
use crate::api::alert::{
    AlertRule, AlertRuleSpec, AlertRuleStatus, BackupValidationFailed, CertificateExpiry,
};
use crate::api::backup::BackupValidationPolicy;
use crate::api::common::parse_duration;
use crate::api::proxy::Proxy;
use crate::status::{self, Observation};

/// A field that cannot be used as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

/// What the rule watches.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    CertificateExpiry {
        spec: CertificateExpiry,
        within: Duration,
    },
    BackupValidationFailed(BackupValidationFailed),
    ContainerCrash {
        selection: Selection,
        restarts: u32,
        window: Duration,
    },
    ErrorRate {
        /// `namespace/name`, as the edge tags its lines.
        proxy: String,
        threshold_percent: f64,
        window: Duration,
        /// As written, for messages.
        window_text: String,
        min_requests: u32,
    },
    ErrorSpike {
        proxy: String,
        factor: f64,
        window: Duration,
        baseline: Duration,
        min_errors: u32,
    },
}

impl Condition {
    /// The condition's field name, as the `condition` label has it.
    pub fn name(&self) -> &'static str {
        match self {
            Condition::CertificateExpiry { .. } => "certificateExpiry",
            Condition::BackupValidationFailed(_) => "backupValidationFailed",
            Condition::ContainerCrash { .. } => "containerCrash",
            Condition::ErrorRate { .. } => "errorRate",
            Condition::ErrorSpike { .. } => "errorSpike",
        }
    }

    /// The Proxy an error rule counts, and the history it needs (`None` for other rules).
    pub fn traffic(&self) -> Option<(String, Duration)> {
        match self {
            Condition::ErrorRate { proxy, window, .. } => Some((proxy.clone(), *window)),
            Condition::ErrorSpike {
                proxy,
                window,
                baseline,
                ..
            } => Some((proxy.clone(), *window + *baseline)),
            _ => None,
        }
    }
}

/// The longest `window` of an error rule: one hour of 10-second buckets per Proxy.
const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// The longest `baseline` of errorSpike.
const MAX_BASELINE: Duration = Duration::from_secs(24 * 3600);

/// A span of traffic: at least one bucket, at most `max`.
fn span(field: &'static str, text: &str, max: Duration) -> Result<Duration, Invalid> {
    let span = duration(field, text)?;
    if span < BUCKET || span > max {
        return Err(Invalid {
            field,
            reason: format!(
                "{text:?} is outside {}s to {}h: traffic is counted in {}-second buckets and \
                 kept for at most that long",
                BUCKET.as_secs(),
                max.as_secs() / 3600,
                BUCKET.as_secs()
            ),
        });
    }
    Ok(span)
}

/// The spec, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub condition: Condition,
    pub timing: Timing,
}

fn duration(field: &'static str, text: &str) -> Result<Duration, Invalid> {
    parse_duration(text).ok_or_else(|| Invalid {
        field,
        reason: format!("{text:?} is not a duration such as 90s, 5m or 1h30m"),
    })
}

fn optional(field: &'static str, text: Option<&str>) -> Result<Duration, Invalid> {
    text.map_or(Ok(Duration::ZERO), |t| duration(field, t))
}

/// Checks the spec: exactly one condition, every duration in the grammar. An error rule counts
/// a Proxy of the rule's own `namespace`: no namespace reads another's traffic.
pub fn validate(spec: &AlertRuleSpec, namespace: &str) -> Result<Settings, Invalid> {
    let set = [
        spec.container_crash.is_some(),
        spec.certificate_expiry.is_some(),
        spec.error_rate.is_some(),
        spec.error_spike.is_some(),
        spec.backup_validation_failed.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if set != 1 {
        return Err(Invalid {
            field: "spec",
            reason: format!(
                "exactly one of containerCrash, certificateExpiry, errorRate, errorSpike or \
                 backupValidationFailed must be set, not {set}"
            ),
        });
    }
    let condition = if let Some(expiry) = &spec.certificate_expiry {
        Condition::CertificateExpiry {
            within: duration("spec.certificateExpiry.within", &expiry.within)?,
            spec: expiry.clone(),
        }
    } else if let Some(failed) = &spec.backup_validation_failed {
        Condition::BackupValidationFailed(failed.clone())
    } else if let Some(crash) = &spec.container_crash {
        Condition::ContainerCrash {
            selection: Selection {
                names: crash.names.clone(),
                selector: crash.selector.clone(),
            },
            restarts: crash.restarts,
            window: duration("spec.containerCrash.window", &crash.window)?,
        }
    } else if let Some(rate) = &spec.error_rate {
        Condition::ErrorRate {
            proxy: format!("{namespace}/{}", rate.proxy),
            threshold_percent: rate.threshold_percent,
            window: span("spec.errorRate.window", &rate.window, MAX_WINDOW)?,
            window_text: rate.window.clone(),
            min_requests: rate.min_requests,
        }
    } else {
        // Exactly one is set, and it is none of the others.
        let spike = spec.error_spike.as_ref().ok_or_else(|| Invalid {
            field: "spec",
            reason: "no condition is set".to_owned(),
        })?;
        Condition::ErrorSpike {
            proxy: format!("{namespace}/{}", spike.proxy),
            factor: spike.factor,
            window: span("spec.errorSpike.window", &spike.window, MAX_WINDOW)?,
            baseline: span("spec.errorSpike.baseline", &spike.baseline, MAX_BASELINE)?,
            min_errors: spike.min_errors,
        }
    };
    let timing = Timing {
        for_: optional("spec.for", spec.for_.as_deref())?,
        keep_firing_for: optional("spec.keepFiringFor", spec.keep_firing_for.as_deref())?,
        group_wait: duration("spec.groupWait", &spec.group_wait)?,
        repeat_interval: duration("spec.repeatInterval", &spec.repeat_interval)?,
        send_resolved: spec.send_resolved,
        silenced_until: spec.silenced_until.as_ref().map(|t| t.0),
    };
    if timing.repeat_interval < Duration::from_secs(60) {
        return Err(Invalid {
            field: "spec.repeatInterval",
            reason: "must be at least 1m, so that a firing alert does not flood its channels"
                .to_owned(),
        });
    }
    Ok(Settings { condition, timing })
}

/// The objects the condition reads, as observed.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    pub proxies: Arc<Vec<Proxy>>,
    pub policies: Arc<Vec<BackupValidationPolicy>>,
}

/// What the conditions read from outside the API, as followed.
pub struct Outside<'a> {
    pub crashes: &'a Crashes,
    pub traffic: &'a Traffic,
}

/// Evaluates the condition on what was observed.
pub fn evaluate(
    condition: &Condition,
    watched: &Watched,
    outside: &Outside<'_>,
    now: Timestamp,
) -> Found {
    match condition {
        Condition::ContainerCrash {
            selection,
            restarts,
            window,
        } => outside.crashes.evaluate(selection, *restarts, *window, now),
        Condition::CertificateExpiry { spec, within } => {
            conditions::certificate_expiry(spec, *within, &watched.proxies, now)
        }
        Condition::BackupValidationFailed(spec) => {
            conditions::backup_validation_failed(spec, &watched.policies)
        }
        Condition::ErrorRate { .. } | Condition::ErrorSpike { .. } => {
            error_condition(condition, outside.traffic, now)
        }
    }
}

/// errorRate and errorSpike, over complete buckets only: the one being filled would make the
/// value jump with every line. The rule comes back when the next bucket is complete while its
/// span or the bucket being filled holds any traffic (one more second for the last lines to
/// arrive); once they are empty, only new traffic brings it back.
fn error_condition(condition: &Condition, traffic: &Traffic, now: Timestamp) -> Found {
    let Some((proxy, span)) = condition.traffic() else {
        return Found::default();
    };
    let bucket = SignedDuration::try_from(BUCKET).unwrap_or(SignedDuration::from_secs(10));
    let complete = now.checked_sub(bucket).unwrap_or(now);
    let value = match condition {
        Condition::ErrorRate {
            threshold_percent,
            window,
            window_text,
            min_requests,
            ..
        } => error_rate(
            traffic.counts(&proxy, *window, complete),
            *threshold_percent,
            *min_requests,
            window_text,
        ),
        Condition::ErrorSpike {
            factor,
            window,
            baseline,
            min_errors,
            ..
        } => {
            let before = SignedDuration::try_from(*window)
                .ok()
                .and_then(|w| complete.checked_sub(w).ok())
                .unwrap_or(complete);
            error_spike(
                traffic.counts(&proxy, *window, complete),
                traffic.counts(&proxy, *baseline, before),
                *window,
                *baseline,
                *factor,
                *min_errors,
            )
        }
        _ => None,
    };
    let name = proxy.split_once('/').map_or(proxy.as_str(), |(_, n)| n);
    // The bucket being filled counts too: traffic that all fell in it is evaluated once the
    // bucket is complete.
    let changes_at = (traffic.counts(&proxy, span + BUCKET, now).requests > 0).then(|| {
        let width = i64::try_from(BUCKET.as_secs()).unwrap_or(10);
        let next = (now.as_second().div_euclid(width) + 1) * width + 1;
        Timestamp::from_second(next).unwrap_or(now)
    });
    Found {
        observed: value
            .map(|message| Observed {
                subject: name.to_owned(),
                message,
                labels: BTreeMap::from([("proxy".to_owned(), name.to_owned())]),
            })
            .into_iter()
            .collect(),
        changes_at,
    }
}

/// The ledger the status carries.
pub fn ledger(status: &AlertRuleStatus) -> Ledger {
    Ledger {
        active: status.active_alerts.clone(),
        resolved: status.resolved_alerts.clone(),
        channels: status.channels.clone(),
    }
}

/// The rule's channels, by name, in the spec's order.
pub fn channels(rule: &AlertRule) -> Vec<String> {
    rule.spec.channels.iter().map(|c| c.name.clone()).collect()
}

/// One evaluation, before any delivery.
pub fn decide(rule: &AlertRule, settings: &Settings, found: &Found, now: Timestamp) -> Step {
    let current = rule.status.clone().unwrap_or_default();
    timing::step(
        &settings.timing,
        &ledger(&current),
        &found.observed,
        &channels(rule),
        now,
    )
}

/// Why the rule cannot notify every channel, if it cannot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelProblem {
    pub channel: String,
    /// `ChannelNotFound` or `ChannelNotReady`.
    pub reason: &'static str,
    pub message: String,
}

/// The status after the evaluation and its deliveries. `lastEvaluationTime` moves only with
/// something else: an evaluation that finds nothing new writes nothing, so that a quiet rule
/// costs no status writes at each resync.
pub fn status(
    rule: &AlertRule,
    settings: &Settings,
    ledger: &Ledger,
    problems: &[ChannelProblem],
    now: Timestamp,
) -> AlertRuleStatus {
    let current = rule.status.clone().unwrap_or_default();
    let generation = rule.metadata.generation;
    let mut status = AlertRuleStatus {
        observed_generation: generation,
        conditions: current.conditions.clone(),
        state: Some(ledger.state()),
        active_alerts: ledger.active.clone(),
        resolved_alerts: ledger.resolved.clone(),
        channels: ledger.channels.clone(),
        last_evaluation_time: current.last_evaluation_time.clone(),
        last_notification_time: ledger
            .channels
            .iter()
            .filter_map(|c| c.last_notification_time.clone())
            .max_by_key(|t| t.0),
    };
    let failing: Vec<String> = ledger
        .channels
        .iter()
        .filter(|c| c.failures > 0)
        .map(|c| {
            format!(
                "{}: {}",
                c.name,
                c.last_failure.as_deref().unwrap_or("delivery failed")
            )
        })
        .collect();
    let observation = if let Some(problem) = problems.first() {
        Observation::ready(
            false,
            problem.reason,
            format!("AlertChannel {}: {}", problem.channel, problem.message),
        )
    } else if !failing.is_empty() {
        Observation::ready(
            false,
            "DeliveryFailed",
            format!(
                "notifications fail, retried with backoff: {}",
                failing.join("; ")
            ),
        )
    } else {
        let count = |state| ledger.active.iter().filter(|a| a.state == state).count();
        Observation::ready(
            true,
            "Evaluated",
            format!(
                "{}: {} firing, {} pending",
                settings.condition.name(),
                count(crate::api::alert::AlertState::Firing),
                count(crate::api::alert::AlertState::Pending),
            ),
        )
    };
    status::set(&mut status.conditions, observation, generation, now);
    let changed = AlertRuleStatus {
        last_evaluation_time: None,
        ..status.clone()
    } != AlertRuleStatus {
        last_evaluation_time: None,
        ..current
    };
    if changed || status.last_evaluation_time.is_none() {
        status.last_evaluation_time = Some(Time(now));
    }
    status
}

/// When to evaluate again: the earliest of what the timing (retries included) and the
/// condition say.
pub fn wake_at(
    step_wake: Option<Timestamp>,
    found: &Found,
    ledger: &Ledger,
    now: Timestamp,
) -> Option<Timestamp> {
    let condition = found.changes_at.filter(|t| *t > now);
    [ledger.wake_at(step_wake, now), condition]
        .into_iter()
        .flatten()
        .min()
}
