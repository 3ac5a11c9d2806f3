//! From a scan of the manifests to changes of the stored objects, the way the API server
//! would make them (pure: no I/O).
//!
//! - A new object gets a fresh uid and generation 1.
//! - `generation` increases only when the spec changes; label or annotation edits update the
//!   object without a new generation.
//! - An object whose manifest disappeared is deleted: its cleanup runs, then its record goes.
//! - An object whose file currently has an invalid or unreadable document is *held*: it keeps
//!   its last good version, since the broken document may be that very object mid-edit.
//!   Nothing is deleted because of a typo.
//! - Objects the operator made itself (a policy's runs) have no file ([`OPERATOR_MADE`]) and
//!   are never deleted for being absent from the manifests; they go with their owner.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Identifies an object: kind, namespace (empty for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What the store knows of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub uid: String,
    pub generation: i64,
    pub spec_hash: String,
    /// Hash of the whole manifest (metadata included), to notice label edits.
    pub object_hash: String,
    pub file: String,
    /// Already being deleted (its cleanup has not finished yet).
    pub deleting: bool,
}

/// One valid document of the scan.
#[derive(Clone, Debug, PartialEq)]
pub struct Scanned {
    pub key: Key,
    pub file: String,
    pub line: u64,
    /// The manifest as JSON, status removed.
    pub object: Value,
}

/// A change to make to the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Create {
        key: Key,
        uid: String,
        object: Value,
        file: String,
        line: u64,
    },
    /// A new version; `generation` is the one to store (unchanged when only metadata changed).
    Update {
        key: Key,
        generation: i64,
        object: Value,
        file: String,
        line: u64,
    },
    /// Start deleting: run the cleanup, then forget the record.
    Delete { key: Key },
    /// A deletion was started but its manifest is back: it is an object again.
    Revive {
        key: Key,
        generation: i64,
        object: Value,
        file: String,
        line: u64,
    },
}

/// The changes a scan calls for, and the objects held back because their file is broken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub held: Vec<Key>,
}

/// The `file` of objects the operator made itself rather than read from a manifest.
pub const OPERATOR_MADE: &str = "";

/// Hash of a JSON value (keys are ordered by serde_json's map, so equal values hash equal).
pub fn hash(value: &Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

/// Plans the changes from `stored` records to the `scanned` documents. `broken_files` are
/// files with at least one document that could not be read or checked. `new_uid` makes uids.
pub fn plan(
    stored: &BTreeMap<Key, Stored>,
    scanned: &[Scanned],
    broken_files: &BTreeSet<String>,
    mut new_uid: impl FnMut() -> String,
) -> Plan {
    let mut plan = Plan::default();
    let mut seen = BTreeSet::new();
    for doc in scanned {
        if !seen.insert(doc.key.clone()) {
            // Defined twice: the first definition wins; `validate` reports the duplicate.
            continue;
        }
        let spec_hash = hash(doc.object.get("spec").unwrap_or(&Value::Null));
        let object_hash = hash(&doc.object);
        let (key, object, file, line) = (
            doc.key.clone(),
            doc.object.clone(),
            doc.file.clone(),
            doc.line,
        );
        match stored.get(&doc.key) {
            None => plan.changes.push(Change::Create {
                key,
                uid: new_uid(),
                object,
                file,
                line,
            }),
            Some(old) => {
                let generation = if old.spec_hash == spec_hash {
                    old.generation
                } else {
                    old.generation + 1
                };
                if old.deleting {
                    plan.changes.push(Change::Revive {
                        key,
                        generation,
                        object,
                        file,
                        line,
                    });
                } else if old.object_hash != object_hash || old.file != doc.file {
                    plan.changes.push(Change::Update {
                        key,
                        generation,
                        object,
                        file,
                        line,
                    });
                }
            }
        }
    }
    for (key, old) in stored {
        if seen.contains(key) || old.deleting || old.file == OPERATOR_MADE {
            continue;
        }
        if broken_files.contains(&old.file) {
            plan.held.push(key.clone());
        } else {
            plan.changes.push(Change::Delete { key: key.clone() });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(name: &str) -> Key {
        Key {
            kind: "AlertChannel".to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
        }
    }

    fn doc(name: &str, spec: Value, labels: Value, file: &str) -> Scanned {
        Scanned {
            key: key(name),
            file: file.to_owned(),
            line: 1,
            object: json!({"kind": "AlertChannel", "metadata": {"name": name, "labels": labels}, "spec": spec}),
        }
    }

    fn stored_from(plan: &Plan, before: &BTreeMap<Key, Stored>) -> BTreeMap<Key, Stored> {
        let mut after = before.clone();
        for change in &plan.changes {
            match change {
                Change::Create {
                    key,
                    uid,
                    object,
                    file,
                    ..
                } => {
                    after.insert(key.clone(), record(uid, 1, object, file));
                }
                Change::Update {
                    key,
                    generation,
                    object,
                    file,
                    ..
                }
                | Change::Revive {
                    key,
                    generation,
                    object,
                    file,
                    ..
                } => {
                    let uid = after[key].uid.clone();
                    after.insert(key.clone(), record(&uid, *generation, object, file));
                }
                Change::Delete { key } => {
                    after.get_mut(key).unwrap().deleting = true;
                }
            }
        }
        after
    }

    fn record(uid: &str, generation: i64, object: &Value, file: &str) -> Stored {
        Stored {
            uid: uid.to_owned(),
            generation,
            spec_hash: hash(&object["spec"]),
            object_hash: hash(object),
            file: file.to_owned(),
            deleting: false,
        }
    }

    fn uids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("uid-{n}")
        }
    }

    #[test]
    fn new_objects_get_a_uid_and_generation_one() {
        let plan = plan(
            &BTreeMap::new(),
            &[doc("a", json!({"verify": true}), json!({}), "a.yaml")],
            &BTreeSet::new(),
            uids(),
        );
        assert!(matches!(&plan.changes[..], [Change::Create { uid, .. }] if uid == "uid-1"));
    }

    #[test]
    fn generation_moves_with_the_spec_only() {
        let first = [doc("a", json!({"verify": true}), json!({}), "a.yaml")];
        let stored = stored_from(
            &plan(&BTreeMap::new(), &first, &BTreeSet::new(), uids()),
            &BTreeMap::new(),
        );

        // Unchanged: nothing to do.
        assert_eq!(
            plan(&stored, &first, &BTreeSet::new(), uids()),
            Plan::default()
        );

        // A label edit: a new version, same generation.
        let relabelled = [doc(
            "a",
            json!({"verify": true}),
            json!({"team": "ops"}),
            "a.yaml",
        )];
        let p = plan(&stored, &relabelled, &BTreeSet::new(), uids());
        assert!(
            matches!(&p.changes[..], [Change::Update { generation: 1, .. }]),
            "{p:?}"
        );
        let stored = stored_from(&p, &stored);

        // A spec edit: generation 2, the uid is kept.
        let changed = [doc(
            "a",
            json!({"verify": false}),
            json!({"team": "ops"}),
            "a.yaml",
        )];
        let p = plan(&stored, &changed, &BTreeSet::new(), uids());
        assert!(
            matches!(&p.changes[..], [Change::Update { generation: 2, .. }]),
            "{p:?}"
        );
        assert_eq!(stored_from(&p, &stored)[&key("a")].uid, "uid-1");
    }

    #[test]
    fn a_vanished_manifest_deletes_but_a_broken_file_holds() {
        let docs = [
            doc("a", json!({}), json!({}), "a.yaml"),
            doc("b", json!({}), json!({}), "b.yaml"),
        ];
        let stored = stored_from(
            &plan(&BTreeMap::new(), &docs, &BTreeSet::new(), uids()),
            &BTreeMap::new(),
        );

        // b.yaml now fails to parse and a.yaml was removed.
        let broken = BTreeSet::from(["b.yaml".to_owned()]);
        let p = plan(&stored, &[], &broken, uids());
        assert_eq!(p.changes, [Change::Delete { key: key("a") }]);
        assert_eq!(p.held, [key("b")]);
    }

    #[test]
    fn an_object_whose_manifest_returns_during_deletion_is_revived() {
        let docs = [doc("a", json!({"x": 1}), json!({}), "a.yaml")];
        let stored = stored_from(
            &plan(&BTreeMap::new(), &docs, &BTreeSet::new(), uids()),
            &BTreeMap::new(),
        );
        let deleting = stored_from(&plan(&stored, &[], &BTreeSet::new(), uids()), &stored);
        assert!(deleting[&key("a")].deleting);
        // Still being cleaned up and still absent: no new change.
        assert_eq!(
            plan(&deleting, &[], &BTreeSet::new(), uids()),
            Plan::default()
        );
        let p = plan(&deleting, &docs, &BTreeSet::new(), uids());
        assert!(
            matches!(&p.changes[..], [Change::Revive { generation: 1, .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn a_duplicate_definition_does_not_flip_the_object() {
        let docs = [
            doc("a", json!({"x": 1}), json!({}), "a.yaml"),
            doc("a", json!({"x": 2}), json!({}), "z.yaml"),
        ];
        let p = plan(&BTreeMap::new(), &docs, &BTreeSet::new(), uids());
        assert_eq!(p.changes.len(), 1);
        assert!(matches!(&p.changes[0], Change::Create { file, .. } if file == "a.yaml"));
    }
}
