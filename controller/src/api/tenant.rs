//! `Tenant`: an organisation with its own PostgreSQL database or schema, roles and quotas.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, NAME_PATTERN, SIZE_PATTERN};

/// An organisation using the platform: its PostgreSQL database (or schema), the roles and
/// credentials to reach it, its quotas, and whether it is cordoned. Cluster-scoped.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrapilot.io",
    version = "v1alpha1",
    kind = "Tenant",
    status = "TenantStatus",
    shortname = "tnt",
    category = "infrapilot",
    doc = "A Tenant is an organisation with its own PostgreSQL database or schema, roles and quotas.",
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
        name = "Database",
        type_ = "string",
        json_path = ".status.database.name",
        priority = 1
    ),
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    /// Who administers the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<Owner>,
    /// Namespaces whose objects count against this tenant's quotas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")))]
    pub namespaces: Vec<String>,
    /// The tenant's PostgreSQL database.
    #[serde(default)]
    pub database: TenantDatabase,
    /// Limits on what the tenant may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,
    /// Suspend the tenant: its roles may not log in and its objects are not reconciled further.
    #[serde(default)]
    pub cordoned: bool,
    /// Refuse deletion of this Tenant while set.
    #[serde(default)]
    pub prevent_deletion: bool,
}

/// A tenant owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// User or Group.
    pub kind: OwnerKind,
    /// The user's or group's name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
}

/// The kind of a tenant owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OwnerKind {
    User,
    Group,
}

/// How the tenant's data is stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantDatabase {
    /// A database of its own, or a schema in a shared database. Cannot be changed later.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "isolation is immutable"}]))]
    pub isolation: Isolation,
    /// The most connections the tenant's role may hold at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub connection_limit: Option<u32>,
    /// What happens to the data when the Tenant is deleted: kept (the default) or dropped.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

/// Database or schema isolation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Isolation {
    #[default]
    Database,
    Schema,
}

/// What happens to external data on deletion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReclaimPolicy {
    /// Keep the data; only InfraPilot's bookkeeping goes.
    #[default]
    Retain,
    /// Drop the database or schema and the roles.
    Delete,
}

/// Limits on a tenant's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Most Proxies in the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<u32>,
    /// Most AlertRules in the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_rules: Option<u32>,
    /// Most BackupValidationPolicies in the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_validation_policies: Option<u32>,
    /// The largest the database may grow, such as `10G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub database_size: Option<String>,
    /// Most concurrent database connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
}

/// The observed state of a Tenant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and the conditions behind it.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// Provisioning, Active, Cordoned or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TenantState>,
    /// The names InfraPilot chose for the tenant's database objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<TenantDatabaseStatus>,
    /// Current usage against the quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A tenant's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TenantState {
    Provisioning,
    Active,
    Cordoned,
    Terminating,
}

/// Names of the tenant's database objects (derived from the Tenant's uid, not its name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantDatabaseStatus {
    /// The database (or, with Schema isolation, the schema).
    pub name: String,
    /// The login role.
    pub role: String,
    /// The Secret holding the role's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub secret_name: Option<String>,
}

/// Current usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(default)]
    pub proxies: u32,
    #[serde(default)]
    pub alert_rules: u32,
    #[serde(default)]
    pub backup_validation_policies: u32,
    /// Database size in bytes.
    #[serde(default)]
    pub database_size_bytes: u64,
    #[serde(default)]
    pub connections: u32,
    /// When usage was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Time>,
}
