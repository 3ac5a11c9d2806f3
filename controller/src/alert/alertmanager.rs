//! Notifications in Alertmanager's words: the labels InfraPilot sets on an alert, its
//! fingerprint, and the JSON body of Alertmanager's webhook (`version: "4"`), so that any
//! receiver written for Alertmanager takes InfraPilot's webhooks unchanged.
//!
//! Labels on every alert: `alertname` (the rule's name), `namespace`, `severity` (`critical`,
//! `warning`, `info`), `condition` (`containerCrash`, `certificateExpiry`, `errorRate`,
//! `errorSpike`, `backupValidationFailed`) and `subject`, plus what the condition adds
//! (`container`, `proxy`, `policy`). Annotations: `summary` (the measured value) and
//! `description`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use super::timing::Notification;
use crate::api::alert::Severity;

/// One alert as Alertmanager's webhook lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: &'static str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    /// Alertmanager's zero time while firing.
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// A group of alerts: one rule's notification to one channel, in Alertmanager's shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub version: &'static str,
    pub group_key: String,
    pub truncated_alerts: u32,
    pub status: &'static str,
    pub receiver: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// Go's zero `time.Time`, which Alertmanager sends as `endsAt` of a firing alert.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The rule a notification comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub condition: &'static str,
    pub severity: Severity,
}

pub fn severity_label(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

impl Rule<'_> {
    /// The labels every alert of this rule carries, before the subject's own.
    fn labels(&self, subject: &str, own: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut labels = own.clone();
        labels.insert("alertname".into(), self.name.into());
        labels.insert("namespace".into(), self.namespace.into());
        labels.insert("severity".into(), severity_label(self.severity).into());
        labels.insert("condition".into(), self.condition.into());
        labels.insert("subject".into(), subject.into());
        labels
    }

    fn generator(&self) -> String {
        format!("infrapilot://alertrules/{}/{}", self.namespace, self.name)
    }
}

/// Alertmanager's group body for `notification`, sent to the channel named `receiver`.
pub fn group(rule: &Rule<'_>, notification: &Notification) -> Group {
    let description = |message: &str| {
        format!(
            "AlertRule {}/{} ({}): {message}",
            rule.namespace, rule.name, rule.condition
        )
    };
    let alert = |status,
                 subject: &str,
                 own: &BTreeMap<String, String>,
                 message: &str,
                 since: &Time,
                 ends: Option<&Time>| {
        let labels = rule.labels(subject, own);
        Alert {
            status,
            fingerprint: fingerprint(&labels),
            labels,
            annotations: BTreeMap::from([
                ("summary".to_owned(), message.to_owned()),
                ("description".to_owned(), description(message)),
            ]),
            starts_at: rfc3339(since.0),
            ends_at: ends.map_or_else(|| ZERO_TIME.to_owned(), |t| rfc3339(t.0)),
            generator_url: rule.generator(),
        }
    };
    let alerts: Vec<Alert> = notification
        .firing
        .iter()
        .map(|a| alert("firing", &a.subject, &a.labels, &a.message, &a.since, None))
        .chain(notification.resolved.iter().map(|r| {
            let ends = Some(&r.resolved_at);
            alert(
                "resolved", &r.subject, &r.labels, &r.message, &r.since, ends,
            )
        }))
        .collect();
    let group_labels = BTreeMap::from([
        ("alertname".to_owned(), rule.name.to_owned()),
        ("namespace".to_owned(), rule.namespace.to_owned()),
    ]);
    let group_key = format!(
        "{{}}:{{{}}}",
        group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Group {
        version: "4",
        group_key,
        truncated_alerts: 0,
        status: if notification.firing.is_empty() {
            "resolved"
        } else {
            "firing"
        },
        receiver: notification.channel.clone(),
        group_labels,
        common_labels: common(alerts.iter().map(|a| &a.labels)),
        common_annotations: common(alerts.iter().map(|a| &a.annotations)),
        external_url: String::new(),
        alerts,
    }
}

/// The pairs every map has.
fn common<'a>(
    mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let Some(first) = maps.next() else {
        return BTreeMap::new();
    };
    let mut shared = first.clone();
    for map in maps {
        shared.retain(|k, v| map.get(k) == Some(v));
    }
    shared
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
}

/// Prometheus' label-set fingerprint (`model.LabelSet.Fingerprint`): FNV-1a 64 over the
/// labels sorted by name, each name and value followed by the byte 0xff, printed as 16 hex
/// digits. Written here because it is those few lines of Prometheus' Go code, and a receiver
/// that deduplicates on it must see the same number Alertmanager would send.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET;
    let mut write = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    if labels.is_empty() {
        // Prometheus returns the hash of nothing for an empty set.
        return format!("{OFFSET:016x}");
    }
    for (name, value) in labels {
        write(name.as_bytes());
        write(&[0xff]);
        write(value.as_bytes());
        write(&[0xff]);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::timing::Notification;
    use crate::api::alert::{ActiveAlert, AlertState, ResolvedAlert};

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn the_fingerprint_is_prometheus_own() {
        // An empty set is Prometheus' hashNew(): the FNV-1a offset basis.
        let empty = BTreeMap::new();
        assert_eq!(fingerprint(&empty), "cbf29ce484222325");
        let one = BTreeMap::from([("alertname".to_owned(), "x".to_owned())]);
        // FNV-1a 64 of "alertname\xffx\xff", computed independently below.
        let mut expected: u64 = 0xcbf29ce484222325;
        for b in b"alertname\xffx\xff" {
            expected ^= u64::from(*b);
            expected = expected.wrapping_mul(0x100000001b3);
        }
        assert_eq!(fingerprint(&one), format!("{expected:016x}"));
        let other = BTreeMap::from([("alertname".to_owned(), "y".to_owned())]);
        assert_ne!(fingerprint(&one), fingerprint(&other));
    }

    #[test]
    fn the_webhook_body_has_alertmanagers_shape() {
        let rule = Rule {
            namespace: "shop",
            name: "crashes",
            condition: "containerCrash",
            severity: Severity::Critical,
        };
        let notification = Notification {
            channel: "ops-mail".into(),
            firing: vec![ActiveAlert {
                subject: "api".into(),
                state: AlertState::Firing,
                since: t("2026-12-04T10:00:00Z"),
                fired_at: Some(t("2026-12-04T10:00:00Z")),
                cleared_at: None,
                message: "exited with code 1".into(),
                labels: BTreeMap::from([("container".into(), "api".into())]),
            }],
            resolved: vec![ResolvedAlert {
                subject: "worker".into(),
                since: t("2026-12-04T09:00:00Z"),
                resolved_at: t("2026-12-04T09:30:00.5Z"),
                message: "OOM-killed".into(),
                labels: BTreeMap::from([("container".into(), "worker".into())]),
            }],
        };
        let body = serde_json::to_value(group(&rule, &notification)).unwrap();
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["receiver"], "ops-mail");
        assert_eq!(
            body["groupKey"],
            r#"{}:{alertname="crashes", namespace="shop"}"#
        );
        assert_eq!(body["groupLabels"]["alertname"], "crashes");
        assert_eq!(body["commonLabels"]["severity"], "critical");
        assert_eq!(body["commonLabels"]["condition"], "containerCrash");
        assert!(body["commonLabels"].get("subject").is_none());
        assert_eq!(body["truncatedAlerts"], 0);
        assert!(body["externalURL"].is_string());
        let alerts = body["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["status"], "firing");
        assert_eq!(alerts[0]["labels"]["container"], "api");
        assert_eq!(alerts[0]["labels"]["alertname"], "crashes");
        assert_eq!(alerts[0]["annotations"]["summary"], "exited with code 1");
        assert_eq!(alerts[0]["startsAt"], "2026-12-04T10:00:00Z");
        assert_eq!(alerts[0]["endsAt"], ZERO_TIME);
        assert_eq!(alerts[1]["status"], "resolved");
        assert_eq!(alerts[1]["endsAt"], "2026-12-04T09:30:00.5Z");
        for alert in alerts {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(alert["labels"].clone()).unwrap();
            assert_eq!(alert["fingerprint"], fingerprint(&labels));
            assert!(alert["generatorURL"].is_string());
        }
    }

    #[test]
    fn a_group_with_only_resolutions_is_resolved() {
        let rule = Rule {
            namespace: "shop",
            name: "crashes",
            condition: "containerCrash",
            severity: Severity::Warning,
        };
        let notification = Notification {
            channel: "hook".into(),
            firing: vec![],
            resolved: vec![ResolvedAlert {
                subject: "api".into(),
                since: t("2026-12-04T09:00:00Z"),
                resolved_at: t("2026-12-04T09:30:00Z"),
                message: String::new(),
                labels: BTreeMap::new(),
            }],
        };
        let body = serde_json::to_value(group(&rule, &notification)).unwrap();
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["commonLabels"]["subject"], "api");
    }
}
