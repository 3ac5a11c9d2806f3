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

/// Parses a duration written in [`DURATION_PATTERN`]'s grammar (`90s`, `1h30m`, `7d`, `250ms`).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else {
            let seconds = match rest.chars().next()? {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return None,
            };
            (std::time::Duration::from_secs(seconds), 1)
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_parse_in_the_documented_grammar() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_duration("1m30s250ms"),
            Some(Duration::from_millis(90_250))
        );
        for bad in ["", "5", "m", "5x", "-5s", "5 s", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
