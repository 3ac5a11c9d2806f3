//! The operator's ClusterRole, from the registry: every registered controller reads its kind
//! and writes its status (and patches its finalizer when it has one), plus the rules it
//! declares ([`crate::reconcile::Reconciler::RBAC`]); the runtime adds what it needs itself
//! (the CRDs it waits for, Events). `infrapilot rbac` prints it, and the install test checks
//! that `config/` and the chart grant exactly this.

use std::collections::{BTreeMap, BTreeSet};

use super::registry::{self, Register};
use crate::api::{GROUP, Kind};
use crate::reconcile::Reconciler;

/// One rule: these verbs on these resources of one API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

impl Rule {
    /// A rule on resources of `infrapilot.io`.
    pub const fn infrapilot(
        resources: &'static [&'static str],
        verbs: &'static [&'static str],
    ) -> Self {
        Self {
            group: GROUP,
            resources,
            verbs,
        }
    }

    /// Secrets, read one at a time by the name an object references: never listed or watched.
    pub const fn secrets() -> Self {
        Self {
            group: "",
            resources: &["secrets"],
            verbs: &["get"],
        }
    }
}

/// A ClusterRole rule as Kubernetes has it.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
}

/// Collects the kinds and rules of the registered controllers.
#[derive(Default)]
struct Collect {
    kinds: Vec<Kind>,
    /// (group, resource) → verbs.
    grants: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Collect {
    fn grant(&mut self, group: &str, resource: &str, verbs: &[&str]) {
        self.grants
            .entry((group.to_owned(), resource.to_owned()))
            .or_default()
            .extend(verbs.iter().map(|v| (*v).to_owned()));
    }
}

impl Register for Collect {
    fn add<R: Reconciler>(&mut self, _build: registry::Build<R>)
    where
        R::Object: crate::kubernetes::controller::ScopedApi,
    {
        let Some(kind) = Kind::from_name(&<R::Object as kube::Resource>::kind(&())) else {
            return;
        };
        self.kinds.push(kind);
        let plural = kind.plural();
        let mut verbs = vec!["get", "list", "watch"];
        if R::FINALIZER.is_some() {
            // Finalizers are added and removed by JSON patch of metadata.finalizers.
            verbs.push("patch");
        }
        self.grant(GROUP, plural, &verbs);
        self.grant(GROUP, &format!("{plural}/status"), &["get", "patch"]);
        for relation in R::relations() {
            self.grant(GROUP, relation.from.plural(), &["get", "list", "watch"]);
        }
        for rule in R::RBAC {
            for resource in rule.resources {
                self.grant(rule.group, resource, rule.verbs);
            }
        }
    }
}

/// The rules of the operator's ClusterRole.
pub fn cluster_rules() -> Vec<PolicyRule> {
    let mut collect = Collect::default();
    registry::register(&mut collect);
    // Events for actions, failures and audit records.
    collect.grant("events.k8s.io", "events", &["create", "patch"]);
    let mut rules = vec![PolicyRule {
        // Start-up waits until the CRDs of its controllers are established.
        api_groups: vec!["apiextensions.k8s.io".to_owned()],
        resources: vec!["customresourcedefinitions".to_owned()],
        resource_names: collect
            .kinds
            .iter()
            .map(|kind| kind.crd().metadata.name.clone().unwrap_or_default())
            .collect(),
        verbs: vec!["get".to_owned()],
    }];
    rules.extend(
        collect
            .grants
            .into_iter()
            .map(|((group, resource), verbs)| PolicyRule {
                api_groups: vec![group],
                resources: vec![resource],
                resource_names: Vec::new(),
                verbs: verbs.into_iter().collect(),
            }),
    );
    rules
}

/// Every (group, resource, resource name, verb) a set of rules grants: rules compared this
/// way are equal however they are grouped.
pub fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String, String)> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        let names = if rule.resource_names.is_empty() {
            vec![String::new()]
        } else {
            rule.resource_names.clone()
        };
        for group in &rule.api_groups {
            for resource in &rule.resources {
                for name in &names {
                    for verb in &rule.verbs {
                        grants.insert((
                            group.clone(),
                            resource.clone(),
                            name.clone(),
                            verb.clone(),
                        ));
                    }
                }
            }
        }
    }
    grants
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_reads_its_kind_and_writes_its_status_and_secrets_are_only_got() {
        let grants = grants(&cluster_rules());
        let has = |group: &str, resource: &str, verb: &str| {
            grants.contains(&(group.into(), resource.into(), String::new(), verb.into()))
        };
        for kind in registry::kinds() {
            assert!(has(GROUP, kind.plural(), "watch"), "{kind:?}");
            assert!(has(GROUP, &format!("{}/status", kind.plural()), "patch"));
        }
        assert!(has(GROUP, "proxies", "patch"), "the Proxy finalizer");
        assert!(
            !has(GROUP, "alertchannels", "patch"),
            "no finalizer, no patch"
        );
        assert!(has("", "secrets", "get"));
        assert!(!has("", "secrets", "list") && !has("", "secrets", "watch"));
        assert!(grants.iter().all(|(_, _, _, verb)| verb != "*"));
    }
}
