//! The resource types of group `infrapilot.io`, version `v1alpha1`.
//!
//! Doc comments on these types are user documentation: they become the CRD descriptions that
//! `kubectl explain` shows. Notes for developers go in `//` comments.

// kube's `#[kube(printcolumn(name = .., type_ = .., json_path = ..))]` repeats the same keys
// once per column, which clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod alert;
pub mod backup;
pub mod common;
pub mod proxy;
pub mod tenant;

/// The API group of every InfraPilot kind.
pub const GROUP: &str = "infrapilot.io";
/// The version of every InfraPilot kind.
pub const VERSION: &str = "v1alpha1";

use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every kind InfraPilot serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Proxy,
    AlertChannel,
    AlertRule,
    Tenant,
    BackupValidationPolicy,
    BackupValidationRun,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Proxy,
        Kind::AlertChannel,
        Kind::AlertRule,
        Kind::Tenant,
        Kind::BackupValidationPolicy,
        Kind::BackupValidationRun,
    ];

    /// The kind's name as manifests spell it (`kind:`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Proxy => "Proxy",
            Kind::AlertChannel => "AlertChannel",
            Kind::AlertRule => "AlertRule",
            Kind::Tenant => "Tenant",
            Kind::BackupValidationPolicy => "BackupValidationPolicy",
            Kind::BackupValidationRun => "BackupValidationRun",
        }
    }

    /// The kind named exactly `name` (as in a manifest's `kind:`).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind a person means by `word`: its name, plural, singular or a short name, in any
    /// case, optionally qualified with `.infrapilot.io` (as `kubectl get` accepts them).
    pub fn lookup(word: &str) -> Option<Kind> {
        let word = word.to_ascii_lowercase();
        let word = word.strip_suffix(&format!(".{GROUP}")).unwrap_or(&word);
        Kind::ALL.into_iter().find(|kind| {
            let names = &kind.crd().spec.names;
            names.kind.to_ascii_lowercase() == word
                || names.plural == word
                || names.singular.as_deref() == Some(word)
                || names.short_names.iter().flatten().any(|s| s == word)
        })
    }

    /// The generated CustomResourceDefinition.
    pub fn crd(self) -> &'static CustomResourceDefinition {
        static CRDS: OnceLock<Vec<CustomResourceDefinition>> = OnceLock::new();
        let crds = CRDS.get_or_init(|| {
            Kind::ALL
                .into_iter()
                .map(|kind| match kind {
                    Kind::Proxy => proxy::Proxy::crd(),
                    Kind::AlertChannel => alert::AlertChannel::crd(),
                    Kind::AlertRule => alert::AlertRule::crd(),
                    Kind::Tenant => tenant::Tenant::crd(),
                    Kind::BackupValidationPolicy => backup::BackupValidationPolicy::crd(),
                    Kind::BackupValidationRun => backup::BackupValidationRun::crd(),
                })
                .collect()
        });
        &crds[self as usize]
    }

    pub fn plural(self) -> &'static str {
        &self.crd().spec.names.plural
    }

    pub fn namespaced(self) -> bool {
        self.crd().spec.scope == "Namespaced"
    }

    /// Whether the schema has transition rules (`oldSelf`, such as immutable fields), which
    /// an update must be checked against with the previous version.
    pub fn has_transition_rules(self) -> bool {
        static WITH_RULES: OnceLock<Vec<bool>> = OnceLock::new();
        WITH_RULES.get_or_init(|| {
            Kind::ALL
                .into_iter()
                .map(|kind| {
                    serde_json::to_string(kind.schema()).is_ok_and(|text| text.contains("oldSelf"))
                })
                .collect()
        })[self as usize]
    }

    /// The `openAPIV3Schema` of the kind's only version.
    pub fn schema(
        self,
    ) -> &'static k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps
    {
        self.crd().spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("every derived CRD has a schema")
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn kinds_are_found_by_every_name_kubectl_accepts() {
        for word in ["Proxy", "proxy", "proxies", "px", "proxies.infrapilot.io"] {
            assert_eq!(Kind::lookup(word), Some(Kind::Proxy), "{word}");
        }
        assert_eq!(Kind::lookup("bvr"), Some(Kind::BackupValidationRun));
        assert_eq!(Kind::lookup("tenants"), Some(Kind::Tenant));
        assert_eq!(Kind::lookup("pods"), None);
    }

    #[test]
    fn immutable_fields_make_transition_rules() {
        let with_rules: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| k.has_transition_rules())
            .collect();
        assert_eq!(with_rules, [Kind::Tenant, Kind::BackupValidationRun]);
    }

    #[test]
    fn every_kind_has_its_crd_with_status_category_and_ready_column() {
        for kind in Kind::ALL {
            let crd = kind.crd();
            assert_eq!(crd.spec.names.kind, kind.name());
            assert_eq!(crd.spec.group, super::GROUP);
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&["infrapilot".to_owned()][..])
            );
            assert!(
                !crd.spec
                    .names
                    .short_names
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
            );
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, super::VERSION);
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            let columns = version
                .additional_printer_columns
                .as_deref()
                .unwrap_or_default();
            assert!(
                columns.iter().any(|c| c.name == "Ready"),
                "{kind} has no Ready column"
            );
        }
        assert!(!Kind::Tenant.namespaced());
        assert!(Kind::Proxy.namespaced());
    }
}
