//! Types shared by every kind: conditions, references, and the grammars of user values.
//!
//! The grammars are applied twice from the same constants: in the CRD schema (so the API
//! server rejects bad values) and by the operator's own validation (so standalone mode, which
//! has no API server, rejects them the same way).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DNS name or a wildcard (`*.example.com`), lower case, as nginx and ACME accept them.
pub const HOSTNAME_PATTERN: &str =
    r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A duration as Go and Prometheus write it: `90s`, `5m`, `1h30m`, `7d`, `250ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

/// A size in bytes with an optional binary unit: `512`, `10k`, `5M`, `2G` (nginx's grammar).
pub const SIZE_PATTERN: &str = r"^[0-9]+[kKmMgG]?$";

/// A Kubernetes object name (RFC 1123 subdomain).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$";

/// The conditions every status carries: the standard Kubernetes `Condition`, one per `type`
/// (a map-list, so server-side apply merges them by type), each with `observedGeneration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
pub struct Conditions(pub Vec<Condition>);

impl Conditions {
    pub fn get(&self, kind: &str) -> Option<&Condition> {
        self.0.iter().find(|c| c.type_ == kind)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A key of a Secret in the object's namespace (in standalone mode: a `v1` Secret manifest).
/// Secrets are only ever referenced, never written into a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to another object of ours in the same namespace, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the object.
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 253))]
    pub name: String,
}
