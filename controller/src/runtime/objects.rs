//! Other objects, as reconcilers read and write them: one port for every kind, implemented once
//! per runtime (the API server in a cluster, the state database standalone).
//!
//! The port speaks JSON so that it stays object-safe; [`Objects`] puts the types back on. Objects
//! being deleted are left out of what it returns: to a reconciler they are gone.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::Kind;
use crate::reconcile::Failure;
use crate::retry::Category;

/// Which objects of a kind in a namespace a list returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Objects carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Objects one of whose ownerReferences names this uid.
    pub owner: Option<String>,
    /// Objects whose field at each of these dotted paths (`spec.policyRef.name`) is this
    /// string. Matched by the operator in both runtimes: a CRD's `selectableFields` would let
    /// the API server do it, but only from Kubernetes 1.31 on.
    pub fields: BTreeMap<String, String>,
    /// Objects that have a value at each of these dotted paths (`spec.tls`).
    pub present: Vec<String>,
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether `object` (JSON with `metadata`) is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let labels_match = self
            .labels
            .iter()
            .all(|(key, value)| meta["labels"][key].as_str() == Some(value.as_str()));
        let owner_matches = self.owner.as_ref().is_none_or(|uid| {
            meta["ownerReferences"]
                .as_array()
                .is_some_and(|owners| owners.iter().any(|o| o["uid"].as_str() == Some(uid)))
        });
        let fields_match = self.fields.iter().all(|(path, value)| {
            path.split('.')
                .try_fold(object, |at, segment| at.get(segment))
                .and_then(Value::as_str)
                == Some(value.as_str())
        });
        let present = self.present.iter().all(|path| {
            path.split('.')
                .try_fold(object, |at, segment| at.get(segment))
                .is_some_and(|value| !value.is_null())
        });
        labels_match && owner_matches && fields_match && present
    }

    /// Pieces of text that the compact JSON of every object this selector matches contains
    /// (`"tls":` for `present: [spec.tls]`, `"name":"nightly"` for a field). A store of
    /// JSON text narrows a list with them before [`Self::matches`] decides: a row that lacks
    /// one cannot match, and is never read. They may let through objects that do not match
    /// (the text can sit at another depth), never the other way round.
    pub fn fragments(&self) -> Vec<String> {
        // serde_json writes a key or a string the same way wherever it sits, and its compact
        // form has no space after the colon.
        let text = |s: &str| Value::from(s).to_string();
        let last = |path: &str| path.rsplit('.').next().unwrap_or(path).to_owned();
        let pair = |key: &str, value: &str| format!("{}:{}", text(key), text(value));
        let labels = self.labels.iter().map(|(key, value)| pair(key, value));
        let owner = self.owner.iter().map(|uid| pair("uid", uid));
        let fields = self
            .fields
            .iter()
            .map(|(path, value)| pair(&last(path), value));
        let present = self
            .present
            .iter()
            .map(|path| format!("{}:", text(&last(path))));
        labels.chain(owner).chain(fields).chain(present).collect()
    }
}

/// Objects of any kind in one runtime.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The object, unless it is missing or being deleted.
    async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Value>, Failure>;
    /// The selected objects of `kind` in `namespace`, except those being deleted.
    async fn list(
        &self,
        kind: Kind,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Vec<Value>, Failure>;
    /// The selected objects of `kind` in every namespace, except those being deleted.
    async fn list_all(&self, kind: Kind, selector: &Selector) -> Result<Vec<Value>, Failure>;
    /// Creates an object (JSON with apiVersion, kind and metadata). One of that name that
    /// exists already is fine: a restarted operator may create the same object again, and the
    /// name makes it the same object.
    async fn create(&self, kind: Kind, object: Value) -> Result<(), Failure>;
    /// Deletes an object, and what it owns; one already gone is fine.
    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), Failure>;
}

/// Typed access to the objects of a runtime.
#[derive(Clone)]
pub struct Objects(pub Arc<dyn ObjectStore>);

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Objects")
    }
}

/// A kind as Rust type.
pub trait Typed:
    kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned + Send + Sync
{
    fn kind_of() -> Kind;
}

impl<K> Typed for K
where
    K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned + Send + Sync,
{
    fn kind_of() -> Kind {
        let name = K::kind(&());
        Kind::from_name(&name).unwrap_or_else(|| panic!("{name} is not an InfraPilot kind"))
    }
}

impl Objects {
    pub async fn get<K: Typed>(&self, namespace: &str, name: &str) -> Result<Option<K>, Failure> {
        let kind = K::kind_of();
        match self.0.get(kind, namespace, name).await? {
            // One this version cannot read is as good as missing to the reconciler that asks.
            Some(value) => Ok(serde_json::from_value(value).ok()),
            None => Ok(None),
        }
    }

    pub async fn list<K: Typed>(
        &self,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Vec<K>, Failure> {
        let values = self.0.list(K::kind_of(), namespace, selector).await?;
        Ok(values
            .into_iter()
            .filter_map(|value| serde_json::from_value(value).ok())
            .collect())
    }

    /// [`Objects::list`] across every namespace.
    pub async fn list_all<K: Typed>(&self, selector: &Selector) -> Result<Vec<K>, Failure> {
        let values = self.0.list_all(K::kind_of(), selector).await?;
        Ok(values
            .into_iter()
            .filter_map(|value| serde_json::from_value(value).ok())
            .collect())
    }

    pub async fn create<K: Typed>(&self, object: &K) -> Result<(), Failure> {
        let kind = K::kind_of();
        let mut value = serde_json::to_value(object).map_err(|error| Failure {
            category: Category::Internal,
            message: format!("a {} cannot be written: {error}", kind.name()),
        })?;
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".to_owned(), K::api_version(&()).into());
            map.insert("kind".to_owned(), kind.name().into());
            map.remove("status");
        }
        self.0.create(kind, value).await
    }

    pub async fn delete<K: Typed>(&self, namespace: &str, name: &str) -> Result<(), Failure> {
        self.0.delete(K::kind_of(), namespace, name).await
    }
}

/// The name a [`Relation`] gives for "every object of the reconciler's kind in that
/// namespace" (a name no object can have).
pub const EVERY: &str = "*";

/// "Reconcile a `to` object when an object of kind `from` changes": which objects of the
/// reconciler's kind an object of `from` concerns, as (namespace, name), or
/// (namespace, [`EVERY`]). Declared by the reconciler
/// ([`crate::reconcile::Reconciler::relations`]); both runtimes honour it.
#[derive(Clone, Copy, Debug)]
pub struct Relation {
    pub from: Kind,
    pub map: fn(&Value) -> Vec<(String, String)>,
    /// With [`EVERY`]: only the objects of the namespace whose manifest (without status) this
    /// accepts, so that a change reaches the few objects it can concern and not every one.
    pub every: Option<fn(&Value) -> bool>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Whatever matches contains every fragment: the store may drop a row for lacking one.
    #[test]
    fn every_object_a_selector_matches_contains_its_fragments() {
        let objects = [
            json!({"metadata": {"name": "a", "labels": {"team": "shop", "x\"y": "1%_"},
                "ownerReferences": [{"apiVersion": "v1", "uid": "u-1"}]},
                "spec": {"policyRef": {"name": "nightly"}, "tls": {"secretName": "s"}}}),
            json!({"metadata": {"name": "b", "labels": {"team": "ops"}},
                "spec": {"policyRef": {"name": "weekly"}, "tls": null}}),
            json!({"metadata": {"name": "c"}, "spec": {"name": "nightly"}}),
        ];
        let selectors = [
            Selector::everything(),
            Selector {
                labels: [
                    ("team".into(), "shop".into()),
                    ("x\"y".into(), "1%_".into()),
                ]
                .into(),
                owner: Some("u-1".into()),
                fields: [("spec.policyRef.name".into(), "nightly".into())].into(),
                present: vec!["spec.tls".into()],
            },
            Selector {
                fields: [("spec.policyRef.name".into(), "weekly".into())].into(),
                ..Selector::everything()
            },
            Selector {
                present: vec!["spec.tls".into()],
                ..Selector::everything()
            },
        ];
        let mut matched = 0;
        for selector in &selectors {
            for object in &objects {
                let text = object.to_string();
                let contains = selector
                    .fragments()
                    .iter()
                    .all(|f| text.contains(f.as_str()));
                if selector.matches(object) {
                    matched += 1;
                    assert!(
                        contains,
                        "{selector:?} matches {text} without its fragments"
                    );
                }
            }
        }
        // Matches both ways, so the assertion above had something to check.
        assert_eq!(matched, 3 + 1 + 1 + 1);
        // And the fragments narrow: `present` drops the object without the key at all.
        let tls = &selectors[3].fragments();
        assert!(
            !tls.iter()
                .all(|f| objects[2].to_string().contains(f.as_str()))
        );
    }

    #[test]
    fn a_selector_matches_labels_and_owner() {
        let object = json!({"metadata": {"labels": {"a": "1", "b": "2"},
            "ownerReferences": [{"uid": "u-1"}]}});
        assert!(Selector::everything().matches(&object));
        let mut selector = Selector::everything();
        selector.labels.insert("a".into(), "1".into());
        assert!(selector.matches(&object));
        selector.owner = Some("u-1".into());
        assert!(selector.matches(&object));
        selector.owner = Some("u-2".into());
        assert!(!selector.matches(&object));
        selector.owner = None;
        selector.labels.insert("c".into(), "3".into());
        assert!(!selector.matches(&object));
    }

    #[test]
    fn a_selector_matches_a_field_by_its_dotted_path_and_string_value() {
        let run = json!({"metadata": {}, "spec": {"policyRef": {"name": "nightly"}, "n": 1}});
        let field = |path: &str, value: &str| Selector {
            fields: [(path.to_owned(), value.to_owned())].into(),
            ..Selector::everything()
        };
        assert!(field("spec.policyRef.name", "nightly").matches(&run));
        assert!(!field("spec.policyRef.name", "weekly").matches(&run));
        assert!(!field("spec.policyRef", "nightly").matches(&run));
        assert!(!field("spec.missing.name", "nightly").matches(&run));
        let present = |path: &str| Selector {
            present: vec![path.to_owned()],
            ..Selector::everything()
        };
        assert!(present("spec.policyRef").matches(&run));
        assert!(!present("spec.tls").matches(&run));
        // Strings only: a number is not its decimal text.
        assert!(!field("spec.n", "1").matches(&run));
    }
}
