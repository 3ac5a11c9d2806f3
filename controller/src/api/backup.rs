//! `BackupValidationPolicy` and `BackupValidationRun`: scheduled proof that a PostgreSQL
//! backup really restores.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Conditions, DURATION_PATTERN, LocalObjectReference, NAME_PATTERN, SIZE_PATTERN,
};

/// Validates the newest backup matching `source.path` on a schedule: format, SQL syntax,
/// checksum, freshness, a real restore into a throwaway container, and data assertions.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrapilot.io",
    version = "v1alpha1",
    kind = "BackupValidationPolicy",
    namespaced,
    status = "BackupValidationPolicyStatus",
    shortname = "bvp",
    category = "infrapilot",
    doc = "A BackupValidationPolicy proves on a schedule that the newest backup restores and holds the expected data.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
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
        name = "Last Run",
        type_ = "date",
        json_path = ".status.lastRun.completionTime"
    ),
    printcolumn(
        name = "Next Run",
        type_ = "date",
        json_path = ".status.nextRunTime",
        priority = 1
    ),
    printcolumn(
        name = "Failures",
        type_ = "integer",
        json_path = ".status.consecutiveFailures",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupValidationPolicySpec {
    /// Where the backups are.
    pub source: BackupSource,
    /// The database engine that restores them.
    #[serde(default)]
    pub engine: Engine,
    /// When to validate, as a cron expression (`minute hour day-of-month month day-of-week`,
    /// UTC), such as `30 3 * * *`. A sixth, leading field of seconds is accepted.
    #[schemars(length(min = 9, max = 100), regex(pattern = r"^[0-9*/,\-A-Za-z? ]+$"))]
    pub schedule: String,
    /// Skip scheduled runs while set; on-demand runs still happen.
    #[serde(default)]
    pub suspend: bool,
    /// Run once as soon as the policy is created, not only on schedule.
    #[serde(default)]
    pub run_on_create: bool,
    /// What to check. Every check is on by default.
    #[serde(default)]
    pub checks: Checks,
    /// How many finished runs to keep.
    #[serde(default)]
    pub history_limit: HistoryLimit,
    /// AlertChannels told about failures and recoveries, by name in this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<LocalObjectReference>,
}

/// Where the backups are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSource {
    /// An absolute file path or glob, such as `/backups/app/*.dump`; the newest match (by
    /// modification time) is validated.
    #[schemars(regex(pattern = r"^/[^\x00\n]*$"), length(max = 4096))]
    pub path: String,
}

/// The engine that restores the backups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Engine {
    /// The database engine.
    #[serde(default, rename = "type")]
    pub type_: EngineType,
    /// The image of the throwaway server, following the official `postgres` image's contract.
    /// Its major version must be able to read the dump.
    #[serde(default = "default_postgres_image")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9._/:@\-]{0,254}$"))]
    pub image: String,
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            type_: EngineType::default(),
            image: default_postgres_image(),
        }
    }
}

fn default_postgres_image() -> String {
    "postgres:16".to_owned()
}

/// Supported engines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EngineType {
    #[default]
    PostgreSQL,
}

/// The checks of a validation run, in the order they run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    /// Magic bytes, archive header, dump version and a readable table of contents.
    #[serde(default = "default_true")]
    pub format: bool,
    /// Parse every statement of a plain SQL dump with PostgreSQL's own parser.
    #[serde(default = "default_true")]
    pub sql_syntax: bool,
    /// Record the SHA-256; compare with a `.sha256` or `.md5` file next to the backup.
    #[serde(default = "default_true")]
    pub checksum: bool,
    /// Fail when the newest backup is older than this, such as `26h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
    /// Fail when the backup is smaller than this, such as `1M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub min_size: Option<String>,
    /// Restore into a throwaway container.
    #[serde(default)]
    pub restore: RestoreCheck,
    /// Tables that must exist after the restore (`schema.table` or `table` in `public`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(
        pattern = r"^([a-zA-Z_][a-zA-Z0-9_$]{0,62}\.)?[a-zA-Z_][a-zA-Z0-9_$]{0,62}$"
    )))]
    pub expect_tables: Vec<String>,
    /// The fewest rows a table must hold after the restore, by table (`schema.table` or
    /// `table` in `public`), such as `{orders: 1000}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(k, k.matches('^([a-zA-Z_][a-zA-Z0-9_$]{0,62}\\\\.)?[a-zA-Z_][a-zA-Z0-9_$]{0,62}$'))",
        "message": "keys are table names: `table` or `schema.table`",
    }]))]
    pub min_rows: BTreeMap<String, u64>,
    /// Queries whose single value must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryAssertion>,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            format: true,
            sql_syntax: true,
            checksum: true,
            max_age: None,
            min_size: None,
            restore: RestoreCheck::default(),
            expect_tables: Vec::new(),
            min_rows: BTreeMap::new(),
            queries: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// The restore check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCheck {
    /// Restore at all (the data checks need it).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The longest a restore may take.
    #[serde(default = "default_restore_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: String,
}

impl Default for RestoreCheck {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: default_restore_timeout(),
        }
    }
}

fn default_restore_timeout() -> String {
    "30m".to_owned()
}

/// A query run against the restored database; its single value is compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.expect) || has(self.min) || has(self.max)", "message": "set expect, min or max"},
]))]
pub struct QueryAssertion {
    /// Names the assertion in the report.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9 _.\-]{0,62}$"))]
    pub name: String,
    /// A read-only query returning one row with one column. It runs in a read-only
    /// transaction against the throwaway copy.
    #[schemars(length(min = 1, max = 10000))]
    pub sql: String,
    /// The value, compared as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// The smallest acceptable numeric value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest acceptable numeric value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// How many finished runs to keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryLimit {
    /// Successful runs kept.
    #[serde(default = "default_successful")]
    #[schemars(range(max = 1000))]
    pub successful: u32,
    /// Failed runs kept.
    #[serde(default = "default_failed")]
    #[schemars(range(max = 1000))]
    pub failed: u32,
}

impl Default for HistoryLimit {
    fn default() -> Self {
        Self {
            successful: default_successful(),
            failed: default_failed(),
        }
    }
}

fn default_successful() -> u32 {
    3
}

fn default_failed() -> u32 {
    5
}

/// The observed state of a BackupValidationPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupValidationPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the last run succeeded) and the conditions behind it.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// The most recent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunSummary>,
    /// The most recent finished run: the one `consecutiveFailures` and the notifications
    /// have taken into account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed_run: Option<RunSummary>,
    /// The most recent scheduled time a run was due (created or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the next scheduled run is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// Failed runs in a row.
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// A run, as its policy's status shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// The BackupValidationRun's name.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
    pub phase: RunPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// One validation of one backup file: created by its policy on schedule, or by hand for an
/// on-demand run.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrapilot.io",
    version = "v1alpha1",
    kind = "BackupValidationRun",
    namespaced,
    status = "BackupValidationRunStatus",
    shortname = "bvr",
    category = "infrapilot",
    doc = "A BackupValidationRun is one validation of one backup file against its policy.",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policyRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
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
        name = "Completed",
        type_ = "date",
        json_path = ".status.completionTime"
    ),
    printcolumn(
        name = "File",
        type_ = "string",
        json_path = ".status.backup.file",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "a run's spec is immutable"}]))]
pub struct BackupValidationRunSpec {
    /// The policy whose checks and engine the run uses.
    pub policy_ref: LocalObjectReference,
    /// Validate this file instead of the policy's newest match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\x00\n]*$"), length(max = 4096))]
    pub file: Option<String>,
}

/// The phase of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// The observed state of a BackupValidationRun.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupValidationRunStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the run succeeded) and the conditions behind it.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    #[serde(default)]
    pub phase: RunPhase,
    /// The backup that was validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupInfo>,
    /// Each check with its result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The throwaway server's container while the run has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Where the full report is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportFiles>,
}

/// The report of a run, as files on the operator's report volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportFiles {
    /// The machine-readable report.
    pub json: String,
    /// The same as a page for people.
    pub html: String,
}

/// The validated backup file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupInfo {
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// custom, tar, directory or plain, with the compression if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// When the file was last modified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<Time>,
    /// The PostgreSQL version the dump was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// format, sqlSyntax, checksum, freshness, restore, data or report.
    pub name: String,
    pub result: CheckOutcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub duration_ms: u64,
}

/// Passed, Failed or Skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CheckOutcome {
    Passed,
    Failed,
    Skipped,
}
