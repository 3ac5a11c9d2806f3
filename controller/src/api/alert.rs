//! `AlertChannel` and `AlertRule`: where alerts go, and when they fire.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Conditions, DURATION_PATTERN, LocalObjectReference, NAME_PATTERN, SecretKeySelector,
};

/// A destination for alerts and reports: an SMTP server, a Slack incoming webhook, or any
/// HTTP webhook. Exactly one of `smtp`, `slack` or `webhook` is set.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrapilot.io",
    version = "v1alpha1",
    kind = "AlertChannel",
    namespaced,
    status = "AlertChannelStatus",
    shortname = "ach",
    category = "infrapilot",
    doc = "An AlertChannel is a destination for alerts: SMTP, Slack or a webhook.",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.type"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    printcolumn(
        name = "Last Delivery",
        type_ = "date",
        json_path = ".status.lastDelivery.time"
    ),
    printcolumn(
        name = "Failures",
        type_ = "integer",
        json_path = ".status.deliveryFailures",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.smtp), has(self.slack), has(self.webhook)].filter(x, x).size() == 1",
     "message": "exactly one of smtp, slack or webhook must be set"},
]))]
pub struct AlertChannelSpec {
    /// Deliver by e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpChannel>,
    /// Deliver to a Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackChannel>,
    /// Deliver as JSON to an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookChannel>,
    /// Send a verification message when the channel is created and whenever its spec changes;
    /// the channel is Ready only once it was delivered.
    #[serde(default)]
    pub verify: bool,
}

/// E-mail through an SMTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmtpChannel {
    /// The SMTP server's host name or address.
    #[schemars(regex(pattern = r"^[A-Za-z0-9.\-:\[\]]+$"), length(min = 1, max = 253))]
    pub host: String,
    /// The SMTP server's port (587 for STARTTLS, 465 for TLS, 25 for none).
    #[serde(default = "default_smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// The sender, such as `InfraPilot <alerts@example.com>`.
    #[schemars(length(min = 3, max = 320))]
    pub from: String,
    /// Recipients.
    #[schemars(
        length(min = 1, max = 100),
        inner(regex(pattern = r"^[^@\s,;<>]+@[^@\s,;<>]+$"))
    )]
    pub to: Vec<String>,
    /// Transport security: `StartTLS` upgrades a plain connection, `TLS` starts encrypted.
    #[serde(default)]
    pub tls: SmtpTls,
    /// PEM certificates of the CAs that sign the relay's certificate, trusted besides the
    /// system's: for a relay with a private CA. Certificates are public; no Secret is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub ca_bundle: Option<String>,
    /// The user name for SMTP authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeySelector>,
    /// The password for SMTP authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
}

fn default_smtp_port() -> u16 {
    587
}

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SmtpTls {
    /// No encryption (only for a relay on a trusted network).
    None,
    /// Upgrade with STARTTLS; fail if the server does not offer it.
    #[default]
    StartTLS,
    /// Implicit TLS from the first byte.
    TLS,
}

/// A Slack incoming webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackChannel {
    /// The incoming webhook's URL, which is a secret.
    pub webhook_url_secret_ref: SecretKeySelector,
    /// Override the webhook's default channel, such as `#ops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[#@]?[a-z0-9._\-]{1,80}$"))]
    pub channel: Option<String>,
}

/// An HTTP endpoint receiving alerts as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.url) != has(self.urlSecretRef)", "message": "exactly one of url or urlSecretRef must be set"},
]))]
pub struct WebhookChannel {
    /// The endpoint's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub url: Option<String>,
    /// The endpoint's URL from a Secret, when the URL itself carries a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeySelector>,
    /// Headers sent with every request; a value may come from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WebhookHeader>,
    /// The HTTP method.
    #[serde(default)]
    pub method: WebhookMethod,
}

/// A header of a webhook request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.value) != has(self.valueFrom)", "message": "exactly one of value or valueFrom must be set"},
]))]
pub struct WebhookHeader {
    /// The header's name, an HTTP token.
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 256))]
    pub name: String,
    /// The header's value (printable ASCII).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\x20-\x7e]*$"), length(max = 4096))]
    pub value: Option<String>,
    /// The header's value from a Secret, such as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<SecretKeySelector>,
}

/// HTTP methods a webhook may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WebhookMethod {
    #[default]
    POST,
    PUT,
}

/// The observed state of an AlertChannel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertChannelStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and the conditions behind it.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// `smtp`, `slack` or `webhook`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Whether a verification message was delivered for the current spec.
    #[serde(default)]
    pub verified: bool,
    /// The last delivery attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<Delivery>,
    /// Failed deliveries since the last success.
    #[serde(default)]
    pub delivery_failures: u32,
}

/// One delivery attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// When it was attempted.
    pub time: Time,
    /// Whether it was delivered.
    pub success: bool,
    /// What the server answered, or why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// When to alert, and whom. Exactly one condition (`containerCrash`, `certificateExpiry`,
/// `errorRate`, `errorSpike` or `backupValidationFailed`) is set; notification timing follows
/// Prometheus Alertmanager (`for`, `keepFiringFor`, `groupWait`, `repeatInterval`).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrapilot.io",
    version = "v1alpha1",
    kind = "AlertRule",
    namespaced,
    status = "AlertRuleStatus",
    shortname = "arule",
    category = "infrapilot",
    doc = "An AlertRule says when to alert and which AlertChannels to notify.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    printcolumn(
        name = "Last Notified",
        type_ = "date",
        json_path = ".status.lastNotificationTime"
    ),
    printcolumn(
        name = "Severity",
        type_ = "string",
        json_path = ".spec.severity",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.containerCrash), has(self.certificateExpiry), has(self.errorRate), has(self.errorSpike), has(self.backupValidationFailed)].filter(x, x).size() == 1",
     "message": "exactly one of containerCrash, certificateExpiry, errorRate, errorSpike or backupValidationFailed must be set"},
]))]
pub struct AlertRuleSpec {
    /// Fire when a container exits unexpectedly or restarts repeatedly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_crash: Option<ContainerCrash>,
    /// Fire when a Proxy's certificate expires within `within`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expiry: Option<CertificateExpiry>,
    /// Fire when a Proxy's share of 5xx responses exceeds a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRate>,
    /// Fire when a Proxy's 5xx responses jump compared with their recent baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_spike: Option<ErrorSpike>,
    /// Fire when a BackupValidationPolicy's run fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_validation_failed: Option<BackupValidationFailed>,

    /// How long the condition must hold before the alert fires (pending until then).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub for_: Option<String>,
    /// How long the alert keeps firing after the condition cleared, to ride out flapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub keep_firing_for: Option<String>,
    /// The severity shown in notifications.
    #[serde(default)]
    pub severity: Severity,
    /// The AlertChannels to notify, by name in this namespace.
    #[schemars(length(min = 1, max = 20))]
    pub channels: Vec<LocalObjectReference>,
    /// How long to wait before the first notification, to gather alerts that fire together.
    #[serde(default = "default_group_wait")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub group_wait: String,
    /// How often to notify again while the alert keeps firing.
    #[serde(default = "default_repeat_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub repeat_interval: String,
    /// Also notify when the alert resolves.
    #[serde(default = "default_true")]
    pub send_resolved: bool,
    /// Evaluate but do not notify until this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_until: Option<Time>,
}

fn default_group_wait() -> String {
    "30s".to_owned()
}

fn default_repeat_interval() -> String {
    "4h".to_owned()
}

fn default_true() -> bool {
    true
}

/// Severity of an alert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Severity {
    Critical,
    #[default]
    Warning,
    Info,
}

/// Containers watched for crashes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerCrash {
    /// Container names to watch; with neither names nor selector, every container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")))]
    pub names: Vec<String>,
    /// Docker labels selecting the containers to watch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Restarts within `window` that count as a crash loop.
    #[serde(default = "default_restarts")]
    #[schemars(range(min = 1, max = 1000))]
    pub restarts: u32,
    /// The window restarts are counted over.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub window: String,
}

fn default_restarts() -> u32 {
    3
}

fn default_window() -> String {
    "10m".to_owned()
}

/// Certificates watched for expiry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateExpiry {
    /// Fire when a certificate expires within this duration.
    #[serde(default = "default_expiry_within")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub within: String,
    /// Proxies to watch by name; empty means every Proxy in the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = NAME_PATTERN)))]
    pub proxies: Vec<String>,
}

fn default_expiry_within() -> String {
    "14d".to_owned()
}

/// A threshold on the share of 5xx responses, from the Proxy's access log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRate {
    /// The Proxy whose responses are counted.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub proxy: String,
    /// Percentage of responses that are 5xx, above which the condition holds.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub threshold_percent: f64,
    /// The window responses are counted over.
    #[serde(default = "default_rate_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub window: String,
    /// Fewer requests than this in the window never fire (avoids alerts on tiny samples).
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
}

fn default_rate_window() -> String {
    "5m".to_owned()
}

fn default_min_requests() -> u32 {
    20
}

/// A sudden rise in 5xx responses compared with the recent baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorSpike {
    /// The Proxy whose responses are counted.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub proxy: String,
    /// How many times the baseline error count the current window must reach.
    #[serde(default = "default_spike_factor")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub factor: f64,
    /// The current window.
    #[serde(default = "default_rate_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub window: String,
    /// The baseline the current window is compared with.
    #[serde(default = "default_baseline")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub baseline: String,
    /// Fewer errors than this in the window never fire.
    #[serde(default = "default_min_requests")]
    pub min_errors: u32,
}

fn default_spike_factor() -> f64 {
    3.0
}

fn default_baseline() -> String {
    "1h".to_owned()
}

/// Failed backup validations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupValidationFailed {
    /// Policies to watch by name; empty means every policy in the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = NAME_PATTERN)))]
    pub policies: Vec<String>,
    /// Consecutive failures needed to fire.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 100))]
    pub consecutive_failures: u32,
}

fn default_one() -> u32 {
    1
}

/// The observed state of an AlertRule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRuleStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and the conditions behind it.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// Inactive, Pending (condition holds, `for` not yet elapsed) or Firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AlertState>,
    /// The alerts currently pending or firing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_alerts: Vec<ActiveAlert>,
    /// When the rule was last evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation_time: Option<Time>,
    /// When a notification was last sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_notification_time: Option<Time>,
    /// Alerts that resolved and whose resolution a channel told of their firing has not yet
    /// been told; kept until it has (or, without `sendResolved`, dropped at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_alerts: Vec<ResolvedAlert>,
    /// Per channel, the notification log: what it was last told and whether delivery fails.
    /// It lives in the status so that a restarted operator, or a new leader, neither sends a
    /// notification again nor forgets one it owes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelNotifications>,
}

/// The state of an alert rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

/// One pending or firing alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveAlert {
    /// What the alert is about: a container, Proxy or policy name.
    pub subject: String,
    /// Pending or Firing.
    pub state: AlertState,
    /// Since when the condition holds (the alert's `startsAt`).
    pub since: Time,
    /// When it started firing (`for` after `since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<Time>,
    /// When the condition stopped holding while `keepFiringFor` keeps the alert firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<Time>,
    /// A short description of the measured value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What the alert concerns, as notification labels: `container`, `proxy`, `policy`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// An alert that fired and resolved, kept until every channel told of it has been told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedAlert {
    /// What the alert was about.
    pub subject: String,
    /// Since when the condition held.
    pub since: Time,
    /// When it resolved (the alert's `endsAt`).
    pub resolved_at: Time,
    /// The last measured value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Its notification labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One channel's notification log for a rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelNotifications {
    /// The AlertChannel's name.
    pub name: String,
    /// When a notification last reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_notification_time: Option<Time>,
    /// The subjects it was last told are firing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notified: Vec<String>,
    /// Failed deliveries since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// Why the last delivery failed (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// When delivery is tried again after a failure (the runtime's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
