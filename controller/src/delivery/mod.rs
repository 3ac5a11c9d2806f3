//! Delivering messages to AlertChannels: e-mail over SMTP (lettre), Slack and webhooks over
//! HTTPS (reqwest with rustls). AlertChannel verification, AlertRule notifications and backup
//! validation reports all go through [`Notifier`].
//!
//! A [`Target`] holds resolved settings, secrets included, and lives only as long as one
//! delivery. Errors and receipts describe the destination without its secrets: a Slack
//! webhook's URL is a credential, so it is never shown.

mod http;
mod resolve;
mod smtp;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use self::resolve::{ResolveError, resolve};
use crate::api::alert::{Severity, SmtpTls, WebhookMethod};

/// What to say.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub kind: MessageKind,
    /// One line: the e-mail subject, the Slack headline.
    pub title: String,
    /// Plain text.
    pub text: String,
    pub severity: Severity,
    /// Who sends it: `AlertRule default/shop-errors`, say.
    pub source: String,
    /// Facts to show as a table or JSON fields.
    pub labels: BTreeMap<String, String>,
    /// An alert rule's notification: the alerts as Alertmanager groups them. Webhooks then
    /// receive Alertmanager's body, e-mails list the alerts, Slack colours by severity.
    #[serde(skip)]
    pub alerts: Option<Box<crate::alert::alertmanager::Group>>,
}

/// Why a message is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MessageKind {
    /// A channel's verification message.
    Verification,
    Firing,
    Resolved,
    /// A backup validation report.
    Report,
}

/// A channel's settings with secrets resolved, for one delivery.
#[derive(Clone, PartialEq)]
pub enum Target {
    Smtp(SmtpTarget),
    Slack {
        webhook_url: String,
        channel: Option<String>,
    },
    Webhook {
        url: String,
        method: WebhookMethod,
        headers: Vec<(String, String)>,
    },
}

#[derive(Clone, PartialEq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: String,
    pub to: Vec<String>,
    pub credentials: Option<(String, String)>,
    /// PEM CA certificates to trust besides the system's.
    pub ca_bundle: Option<String>,
}

impl Target {
    /// The destination as it may be shown: host and port, never a secret URL or credential.
    pub fn describe(&self) -> String {
        match self {
            Target::Smtp(smtp) => format!("SMTP server {}:{}", smtp.host, smtp.port),
            Target::Slack { .. } => "Slack".to_owned(),
            Target::Webhook { url, .. } => format!("webhook {}", http::origin(url)),
        }
    }
}

impl fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ca_bundle", &self.ca_bundle.as_ref().map(String::len))
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What the destination answered on success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub detail: String,
}

/// Why a delivery failed; [`DeliveryError::category`] is the low-cardinality label for
/// metrics, event reasons and backoff.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("the channel's settings are unusable: {0}")]
    Config(String),
    #[error("could not reach {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("{target} refused the message: {reason}")]
    Rejected { target: String, reason: String },
    #[error("{target} did not answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
}

impl DeliveryError {
    pub fn category(&self) -> crate::retry::Category {
        use crate::retry::Category;
        match self {
            DeliveryError::Config(_) => Category::Config,
            DeliveryError::Unreachable { .. } => Category::Unreachable,
            DeliveryError::Rejected { .. } => Category::Rejected,
            DeliveryError::Timeout { .. } => Category::Timeout,
        }
    }

    /// Whether trying again later may help (a bad setting will not fix itself).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, DeliveryError::Config(_))
    }
}

/// Delivers messages. The real implementation is [`Deliverer`]; unit tests of reconcilers use
/// a recording fake.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn deliver(&self, target: &Target, message: &Message) -> Result<Receipt, DeliveryError>;
}

/// Delivers over the network.
#[derive(Clone, Debug)]
pub struct Deliverer {
    http: reqwest::Client,
    timeout: Duration,
}

impl Deliverer {
    /// A deliverer giving each delivery `timeout` to complete.
    pub fn new(timeout: Duration) -> Result<Self, DeliveryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("infrapilot/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| DeliveryError::Config(format!("HTTP client: {}", e.without_url())))?;
        Ok(Self { http, timeout })
    }
}

#[async_trait]
impl Notifier for Deliverer {
    async fn deliver(&self, target: &Target, message: &Message) -> Result<Receipt, DeliveryError> {
        match target {
            Target::Smtp(smtp) => smtp::send(smtp, message, self.timeout).await,
            Target::Slack {
                webhook_url,
                channel,
            } => {
                let payload = http::slack_payload(message, channel.as_deref());
                http::post(
                    &self.http,
                    target,
                    webhook_url,
                    WebhookMethod::POST,
                    &[],
                    &payload,
                    self.timeout,
                )
                .await
            }
            Target::Webhook {
                url,
                method,
                headers,
            } => {
                let payload = http::webhook_payload(message);
                http::post(
                    &self.http,
                    target,
                    url,
                    *method,
                    headers,
                    &payload,
                    self.timeout,
                )
                .await
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::Message;
    use crate::api::alert::Severity;

    /// An alert rule's notification with one firing alert whose value holds HTML.
    pub fn with_alert(message: Message) -> Message {
        use crate::alert::alertmanager::{Rule, group};
        use crate::alert::timing::Notification;
        use crate::api::alert::{ActiveAlert, AlertState};
        let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-04T10:00:00Z".parse().unwrap(),
        );
        let notification = Notification {
            channel: "ops".into(),
            firing: vec![ActiveAlert {
                subject: "api".into(),
                state: AlertState::Firing,
                since: time.clone(),
                fired_at: Some(time),
                cleared_at: None,
                message: "exit code 1 <script>".into(),
                labels: BTreeMap::new(),
            }],
            resolved: vec![],
        };
        let rule = Rule {
            namespace: "shop",
            name: "crashes",
            condition: "containerCrash",
            severity: Severity::Critical,
        };
        Message {
            alerts: Some(Box::new(group(&rule, &notification))),
            ..message
        }
    }
}
