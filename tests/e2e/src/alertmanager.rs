//! Alertmanager's webhook payload, as its documentation gives it
//! (<https://prometheus.io/docs/alerting/latest/configuration/#webhook_config>) and as
//! `notify/webhook` and `template.Data` in Alertmanager's source write it, read strictly:
//! every field required, no other field, `status` one of the two values, times RFC 3339. A
//! test reads the bodies its receiver got through [`payload`], so a body that a receiver
//! written for Alertmanager would not take fails the test that saw it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Go's zero `time.Time`, Alertmanager's `endsAt` of an alert still firing.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    pub status: Status,
    pub receiver: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Alert {
    pub status: Status,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: jiff::Timestamp,
    pub ends_at: jiff::Timestamp,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// `body` read as Alertmanager's payload, with what its shape implies checked too: version 4;
/// the group's status is `firing` when any alert fires; a firing alert ends at Go's zero
/// time, a resolved one not before it started; the common labels and annotations are every
/// alert's, and the group labels among them; the fingerprint is 16 hex digits.
pub fn payload(body: &Value) -> Result<Payload, String> {
    let payload: Payload = serde_json::from_value(body.clone())
        .map_err(|e| format!("not Alertmanager's webhook payload: {e}: {body:#}"))?;
    let fail = |what: &str| Err(format!("{what}: {body:#}"));
    if payload.version != "4" {
        return fail("version is not \"4\"");
    }
    if payload.alerts.is_empty() {
        return fail("no alerts");
    }
    let firing = payload.alerts.iter().any(|a| a.status == Status::Firing);
    if (payload.status == Status::Firing) != firing {
        return fail("the group's status disagrees with its alerts'");
    }
    let zero: jiff::Timestamp = ZERO_TIME.parse().expect("Go's zero time");
    for alert in &payload.alerts {
        let ends_right = match alert.status {
            Status::Firing => alert.ends_at == zero,
            Status::Resolved => alert.ends_at >= alert.starts_at,
        };
        if !ends_right {
            return fail("an alert's endsAt does not fit its status");
        }
        let common = |common: &BTreeMap<String, String>, own: &BTreeMap<String, String>| {
            common.iter().all(|(k, v)| own.get(k) == Some(v))
        };
        if !common(&payload.common_labels, &alert.labels)
            || !common(&payload.common_annotations, &alert.annotations)
        {
            return fail("a common label or annotation is not on every alert");
        }
        let hex = alert.fingerprint.len() == 16
            && alert.fingerprint.chars().all(|c| c.is_ascii_hexdigit());
        if !hex {
            return fail("a fingerprint is not 16 hex digits");
        }
    }
    if !payload
        .group_labels
        .iter()
        .all(|(k, v)| payload.common_labels.get(k) == Some(v))
    {
        return fail("a group label is not a common label");
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body() -> Value {
        json!({
            "version": "4", "groupKey": "{}:{alertname=\"crashes\"}", "truncatedAlerts": 0,
            "status": "firing", "receiver": "ops",
            "groupLabels": {"alertname": "crashes"},
            "commonLabels": {"alertname": "crashes"}, "commonAnnotations": {},
            "externalURL": "http://localhost",
            "alerts": [{"status": "firing", "labels": {"alertname": "crashes"},
                "annotations": {}, "startsAt": "2026-12-04T10:00:00Z", "endsAt": ZERO_TIME,
                "generatorURL": "", "fingerprint": "0123456789abcdef"}]
        })
    }

    /// The reader refuses what Alertmanager's receivers would: it is not a test that passes
    /// whatever it is given.
    #[test]
    fn the_documented_shape_passes_and_each_departure_from_it_fails() {
        assert!(payload(&body()).is_ok());
        let broken: [fn(&mut Value); 7] = [
            |b| b["version"] = json!("3"),
            |b| b["status"] = json!("ok"),
            |b| b["extra"] = json!(1),
            |b| {
                b.as_object_mut().unwrap().remove("externalURL");
            },
            |b| b["alerts"][0]["endsAt"] = json!("2026-12-04T11:00:00Z"),
            |b| b["alerts"][0]["startsAt"] = json!("yesterday"),
            |b| b["commonLabels"]["severity"] = json!("critical"),
        ];
        for (i, breaks) in broken.iter().enumerate() {
            let mut b = body();
            breaks(&mut b);
            assert!(payload(&b).is_err(), "departure {i} passed: {b:#}");
        }
    }
}
