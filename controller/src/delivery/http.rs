//! Slack and webhook deliveries.

use std::time::Duration;

use serde_json::{Value, json};

use super::{DeliveryError, Message, Receipt, Target};
use crate::api::alert::WebhookMethod;

/// `scheme://host:port` of a URL: what may be shown of it (paths and queries often carry
/// tokens).
pub(super) fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}", url.scheme(), url.host_str().unwrap_or("?"))
        }
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// The JSON a webhook receives. Documented in the AlertChannel example; fields are only ever
/// added, never renamed, so receivers keep working.
pub(super) fn webhook_payload(message: &Message) -> Value {
    // An alert rule's notification is Alertmanager's webhook body, so that receivers written
    // for Alertmanager take it unchanged.
    if let Some(group) = &message.alerts {
        return serde_json::to_value(group).unwrap_or_default();
    }
    json!({
        "source": "infrapilot",
        "version": "v1",
        "kind": message.kind,
        "title": message.title,
        "text": message.text,
        "severity": message.severity,
        "from": message.source,
        "labels": message.labels,
        "time": jiff::Timestamp::now().to_string(),
    })
}

/// A Slack incoming-webhook message: a headline, the text, and the labels as fields.
pub(super) fn slack_payload(message: &Message, channel: Option<&str>) -> Value {
    let mut text = format!(
        "*{}*\n{}",
        escape_slack(&message.title),
        escape_slack(&message.text)
    );
    for (key, value) in &message.labels {
        text.push_str(&format!(
            "\n• {}: {}",
            escape_slack(key),
            escape_slack(value)
        ));
    }
    let mut payload = match &message.alerts {
        // One attachment per group, in the severity's colour (firing) or green (resolved).
        Some(group) => {
            let color = match (group.status, message.severity) {
                ("resolved", _) => "#2eb886",
                (_, crate::api::alert::Severity::Critical) => "#d00000",
                (_, crate::api::alert::Severity::Warning) => "#daa038",
                (_, crate::api::alert::Severity::Info) => "#439fe0",
            };
            json!({
                "text": escape_slack(&message.title),
                "attachments": [{
                    "color": color,
                    "fallback": escape_slack(&message.title),
                    "text": escape_slack(&message.text),
                    "fields": group.alerts.iter().map(|a| json!({
                        "title": format!("{} {}", a.status, a.labels.get("subject").map_or("", String::as_str)),
                        "value": escape_slack(a.annotations.get("summary").map_or("", String::as_str)),
                        "short": false,
                    })).collect::<Vec<_>>(),
                }],
            })
        }
        None => json!({ "text": text }),
    };
    if let Some(channel) = channel {
        payload["channel"] = json!(channel);
    }
    payload
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters.
fn escape_slack(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) async fn post(
    client: &reqwest::Client,
    target: &Target,
    url: &str,
    method: WebhookMethod,
    headers: &[(String, String)],
    payload: &Value,
    timeout: Duration,
) -> Result<Receipt, DeliveryError> {
    let url = reqwest::Url::parse(url)
        .map_err(|e| DeliveryError::Config(format!("the URL is invalid: {e}")))?;
    let method = match method {
        WebhookMethod::POST => reqwest::Method::POST,
        WebhookMethod::PUT => reqwest::Method::PUT,
    };
    let mut request = client.request(method, url).json(payload);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let described = target.describe();
    let response = request.send().await.map_err(|error| {
        // reqwest's messages include the URL, which may be a secret: drop it.
        let error = error.without_url();
        if error.is_timeout() {
            DeliveryError::Timeout {
                target: described.clone(),
                timeout,
            }
        } else if error.is_builder() {
            DeliveryError::Config(error_chain(&error))
        } else {
            DeliveryError::Unreachable {
                target: described.clone(),
                reason: error_chain(&error),
            }
        }
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(Receipt {
            detail: format!("HTTP {}", status.as_u16()),
        });
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    Err(DeliveryError::Rejected {
        target: described,
        reason: format!("HTTP {}: {body}", status.as_u16()),
    })
}

/// An error with its causes, as one line.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::alert::Severity;
    use crate::delivery::MessageKind;

    fn message() -> Message {
        Message {
            kind: MessageKind::Firing,
            title: "5% errors on <shop>".to_owned(),
            text: "Over 5m & rising".to_owned(),
            severity: Severity::Critical,
            source: "AlertRule default/shop-errors".to_owned(),
            labels: BTreeMap::from([("proxy".to_owned(), "shop".to_owned())]),
            alerts: None,
        }
    }

    fn alert_message() -> Message {
        crate::delivery::tests::with_alert(message())
    }

    #[test]
    fn an_alert_notification_is_alertmanagers_body_to_webhooks_and_coloured_for_slack() {
        let message = alert_message();
        let body = webhook_payload(&message);
        assert_eq!(body["version"], "4");
        assert_eq!(body["receiver"], "ops");
        assert_eq!(body["alerts"][0]["labels"]["subject"], "api");
        assert!(
            body.get("title").is_none(),
            "nothing but Alertmanager's fields"
        );
        let slack = slack_payload(&message, None);
        assert_eq!(slack["attachments"][0]["color"], "#d00000");
        assert_eq!(
            slack["attachments"][0]["fields"][0]["value"],
            "exit code 1 &lt;script&gt;"
        );
    }

    #[test]
    fn only_the_origin_of_a_url_is_ever_shown() {
        assert_eq!(
            origin("https://hooks.example.com/services/T0/B0/SECRET?x=1"),
            "https://hooks.example.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:9000/alerts"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(origin("not a url"), "(invalid URL)");
    }

    #[test]
    fn slack_text_is_escaped_and_carries_the_labels() {
        let payload = slack_payload(&message(), Some("#ops"));
        assert_eq!(
            payload["text"],
            "*5% errors on &lt;shop&gt;*\nOver 5m &amp; rising\n• proxy: shop"
        );
        assert_eq!(payload["channel"], "#ops");
    }

    #[test]
    fn the_webhook_payload_has_the_documented_fields() {
        let payload = webhook_payload(&message());
        assert_eq!(payload["source"], "infrapilot");
        assert_eq!(payload["kind"], "Firing");
        assert_eq!(payload["severity"], "Critical");
        assert_eq!(payload["labels"]["proxy"], "shop");
        assert!(payload["time"].as_str().unwrap().ends_with('Z'));
    }
}
