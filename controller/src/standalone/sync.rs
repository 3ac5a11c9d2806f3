//! From a scan of the manifests to changes of the stored objects, the way the API server
//! would make them (pure: no I/O).
//!
//! - A new object gets a fresh uid and generation 1.
//! - `generation` increases only when the spec changes; label or annotation edits update the
//!   object without a new generation.
//! - Creations and updates apply at once. An object whose file is gone or no longer defines it
//!   is deleted only when a second scan, at least [`DELETE_AFTER`] later, agrees
//!   ([`Missing`]): a file caught between truncation and rewrite deletes nothing.
//! - An object read from a place the scan could not read completely ([`Unread`]: a file with
//!   an invalid document or that cannot be read, a directory that cannot be read, a missing
//!   manifest root) is *held*: it keeps its last good version, since the broken document may be
//!   that very object mid-edit. Nothing is deleted because of a typo or a read error.
//! - An object defined in two places is a conflict: it keeps its stored version (a new one is
//!   not created) until only one place defines it.
//! - Objects the operator made itself (a policy's runs) have no file ([`OPERATOR_MADE`]) and
//!   are never deleted for being absent from the manifests; they go with their owner.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::manifest::Problem;
use crate::manifest::body::Body;

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
    /// The manifest, status removed.
    pub object: Body,
}

/// A change to make to the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Create {
        key: Key,
        uid: String,
        object: Body,
        file: String,
        line: u64,
    },
    /// A new version; `generation` is the one to store (unchanged when only metadata changed).
    Update {
        key: Key,
        generation: i64,
        object: Body,
        file: String,
        line: u64,
    },
    /// Start deleting: run the cleanup, then forget the record.
    Delete { key: Key },
    /// A deletion was started but its manifest is back: it is an object again.
    Revive {
        key: Key,
        generation: i64,
        object: Body,
        file: String,
        line: u64,
    },
}

/// The changes a scan calls for, and what it leaves alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Kept at their stored version: their place could not be read, or they are in conflict.
    pub held: Vec<Key>,
    /// Missing from the manifests, deleted if a later scan agrees.
    pub waiting: Vec<Key>,
    /// Conflicts between places that define the same object.
    pub problems: Vec<Problem>,
}

/// How long after a scan first misses an object a scan that still misses it may delete it.
pub const DELETE_AFTER: Duration = Duration::from_millis(250);

/// Places the scan could not read completely: files, directories and manifest roots, each
/// covering the files at or below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unread(BTreeSet<String>);

impl Unread {
    pub fn insert(&mut self, path: &str) {
        let trimmed = path.trim_end_matches('/');
        self.0
            .insert(if trimmed.is_empty() { "/" } else { trimmed }.to_owned());
    }

    /// Whether `file` is one of the places or below one.
    pub fn covers(&self, file: &str) -> bool {
        self.0.contains(file)
            || file.match_indices('/').any(|(at, _)| {
                let dir = if at == 0 { "/" } else { &file[..at] };
                self.0.contains(dir)
            })
    }
}

/// Objects a scan missed, with when a scan first missed them, until a later scan deletes them
/// or finds them again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Missing {
    since: BTreeMap<Key, Instant>,
}

impl Missing {
    /// When a scan can next confirm a deletion, if one is waiting.
    pub fn recheck_at(&self) -> Option<Instant> {
        self.since.values().min().map(|since| *since + DELETE_AFTER)
    }
}

/// What a scan says of one object that was known before or is defined now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Defined by exactly one place: this one (an index into the scan's places).
    Defined(usize),
    /// Keeps its last good version, or stays absent when it had none.
    Held,
    /// Missing from this scan; not yet confirmed by a second one.
    Waiting,
    /// Missing from two scans at least [`DELETE_AFTER`] apart: to be deleted.
    Gone,
}

/// One definition found by a scan.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    pub key: &'a Key,
    pub file: &'a str,
    pub line: u64,
}

/// Judges every object `known` before (key → the file it was read from; objects that may be
/// deleted for being absent) and every one `places` define. Records the missing in `missing`
/// and returns the conflicts as problems.
pub fn judge(
    known: &BTreeMap<&Key, &str>,
    places: &[Place<'_>],
    unread: &Unread,
    missing: &mut Missing,
    now: Instant,
) -> (BTreeMap<Key, Verdict>, Vec<Problem>) {
    let mut defined: BTreeMap<&Key, Vec<usize>> = BTreeMap::new();
    for (i, place) in places.iter().enumerate() {
        defined.entry(place.key).or_default().push(i);
    }
    let mut verdicts = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, at) in &defined {
        missing.since.remove(*key);
        let old = known.get(key).copied();
        let verdict = match at[..] {
            [one] => match old {
                Some(old) if old != places[one].file && unread.covers(old) => {
                    let place = places[one];
                    problems.push(Problem {
                        file: place.file.to_owned(),
                        line: place.line,
                        column: 1,
                        field: "metadata.name".to_owned(),
                        reason: format!(
                            "{key} was read from {old}, which cannot be read now: it keeps its version from there, and this definition waits until {old} can be read"
                        ),
                    });
                    Verdict::Held
                }
                _ => Verdict::Defined(one),
            },
            _ => {
                let outcome = if old.is_some() {
                    "it keeps its current version"
                } else {
                    "it is not created"
                };
                for &i in at {
                    let others: Vec<String> = at
                        .iter()
                        .filter(|&&j| j != i)
                        .map(|&j| format!("{}:{}", places[j].file, places[j].line))
                        .collect();
                    problems.push(Problem {
                        file: places[i].file.to_owned(),
                        line: places[i].line,
                        column: 1,
                        field: "metadata.name".to_owned(),
                        reason: format!(
                            "{key} is also defined at {}; {outcome} until only one place defines it",
                            others.join(", ")
                        ),
                    });
                }
                Verdict::Held
            }
        };
        verdicts.insert((*key).clone(), verdict);
    }
    for (key, file) in known {
        if defined.contains_key(key) {
            continue;
        }
        let verdict = if unread.covers(file) {
            missing.since.remove(*key);
            Verdict::Held
        } else {
            let since = *missing.since.entry((*key).clone()).or_insert(now);
            if now.saturating_duration_since(since) >= DELETE_AFTER {
                missing.since.remove(*key);
                Verdict::Gone
            } else {
                Verdict::Waiting
            }
        };
        verdicts.insert((*key).clone(), verdict);
    }
    // Objects deleted or made by the operator since are no longer waited for.
    missing
        .since
        .retain(|key, _| verdicts.get(key) == Some(&Verdict::Waiting));
    (verdicts, problems)
}

/// The `file` of objects the operator made itself rather than read from a manifest.
pub const OPERATOR_MADE: &str = "";

/// Plans the changes from `stored` records to the `scanned` documents, at `now`. `unread` are
/// the places the scan could not read completely; `missing` carries what earlier scans missed.
/// `new_uid` makes uids.
pub fn plan(
    stored: &BTreeMap<Key, Stored>,
    scanned: &[Scanned],
    unread: &Unread,
    missing: &mut Missing,
    now: Instant,
    mut new_uid: impl FnMut() -> String,
) -> Plan {
    // Objects being deleted already, or made by the operator, are not deleted for their absence.
    let known: BTreeMap<&Key, &str> = stored
        .iter()
        .filter(|(_, old)| !old.deleting && old.file != OPERATOR_MADE)
        .map(|(key, old)| (key, old.file.as_str()))
        .collect();
    let places: Vec<Place<'_>> = scanned
        .iter()
        .map(|doc| Place {
            key: &doc.key,
            file: &doc.file,
            line: doc.line,
        })
        .collect();
    let (verdicts, problems) = judge(&known, &places, unread, missing, now);
    let mut plan = Plan {
        problems,
        ..Plan::default()
    };
    for (key, verdict) in verdicts {
        match verdict {
            Verdict::Defined(i) => {
                if let Some(change) = change_to(stored.get(&key), &scanned[i], &mut new_uid) {
                    plan.changes.push(change);
                }
            }
            Verdict::Held => plan.held.push(key),
            Verdict::Waiting => plan.waiting.push(key),
            Verdict::Gone => plan.changes.push(Change::Delete { key }),
        }
    }
    plan
}

/// The change that brings `old` (if any) to `doc`, if it takes one.
fn change_to(
    old: Option<&Stored>,
    doc: &Scanned,
    new_uid: &mut impl FnMut() -> String,
) -> Option<Change> {
    let spec_hash = doc.object.spec_hash();
    let object_hash = doc.object.object_hash();
    let (key, object, file, line) = (
        doc.key.clone(),
        doc.object.clone(),
        doc.file.clone(),
        doc.line,
    );
    let Some(old) = old else {
        return Some(Change::Create {
            key,
            uid: new_uid(),
            object,
            file,
            line,
        });
    };
    let generation = if old.spec_hash == spec_hash {
        old.generation
    } else {
        old.generation + 1
    };
    if old.deleting {
        Some(Change::Revive {
            key,
            generation,
            object,
            file,
            line,
        })
    } else if old.object_hash != object_hash || old.file != doc.file {
        Some(Change::Update {
            key,
            generation,
            object,
            file,
            line,
        })
    } else {
        None
    }
}

/// An AlertChannel's key in the default namespace, for tests.
#[cfg(test)]
pub(super) fn channel_key(name: &str) -> Key {
    Key {
        kind: "AlertChannel".to_owned(),
        namespace: "default".to_owned(),
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::channel_key as key;
    use super::*;

    fn doc(name: &str, spec: Value, labels: Value, file: &str) -> Scanned {
        Scanned {
            key: key(name),
            file: file.to_owned(),
            line: 1,
            object: Body::new(
                &json!({"kind": "AlertChannel", "metadata": {"name": name, "labels": labels}, "spec": spec}),
            ),
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

    fn record(uid: &str, generation: i64, object: &Body, file: &str) -> Stored {
        Stored {
            uid: uid.to_owned(),
            generation,
            spec_hash: object.spec_hash(),
            object_hash: object.object_hash(),
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

    fn unread(paths: &[&str]) -> Unread {
        let mut unread = Unread::default();
        for path in paths {
            unread.insert(path);
        }
        unread
    }

    /// A plan at `now` with nothing unread and nothing missing before.
    fn plan_now(stored: &BTreeMap<Key, Stored>, scanned: &[Scanned]) -> Plan {
        plan(
            stored,
            scanned,
            &Unread::default(),
            &mut Missing::default(),
            Instant::now(),
            uids(),
        )
    }

    fn created(scanned: &[Scanned]) -> BTreeMap<Key, Stored> {
        stored_from(&plan_now(&BTreeMap::new(), scanned), &BTreeMap::new())
    }

    #[test]
    fn new_objects_get_a_uid_and_generation_one() {
        let plan = plan_now(
            &BTreeMap::new(),
            &[doc("a", json!({"verify": true}), json!({}), "a.yaml")],
        );
        assert!(matches!(&plan.changes[..], [Change::Create { uid, .. }] if uid == "uid-1"));
    }

    #[test]
    fn generation_moves_with_the_spec_only() {
        let first = [doc("a", json!({"verify": true}), json!({}), "a.yaml")];
        let stored = created(&first);

        // Unchanged: nothing to do.
        assert_eq!(plan_now(&stored, &first), Plan::default());

        // A label edit: a new version, same generation.
        let relabelled = [doc(
            "a",
            json!({"verify": true}),
            json!({"team": "ops"}),
            "a.yaml",
        )];
        let p = plan_now(&stored, &relabelled);
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
        let p = plan_now(&stored, &changed);
        assert!(
            matches!(&p.changes[..], [Change::Update { generation: 2, .. }]),
            "{p:?}"
        );
        assert_eq!(stored_from(&p, &stored)[&key("a")].uid, "uid-1");
    }

    #[test]
    fn a_missing_object_is_deleted_only_when_a_second_scan_agrees_after_the_delay() {
        let docs = [
            doc("a", json!({}), json!({}), "a.yaml"),
            doc("b", json!({}), json!({}), "b.yaml"),
        ];
        let stored = created(&docs);
        let mut missing = Missing::default();
        let start = Instant::now();
        let at = |scanned: &[Scanned], after_ms: u64, missing: &mut Missing| {
            plan(
                &stored,
                scanned,
                &Unread::default(),
                missing,
                start + Duration::from_millis(after_ms),
                uids(),
            )
        };

        // a.yaml is truncated: the first scan only notes it; so does one soon after.
        let p = at(&docs[1..], 0, &mut missing);
        assert_eq!((p.changes.len(), &p.waiting[..]), (0, &[key("a")][..]));
        assert_eq!(missing.recheck_at(), Some(start + DELETE_AFTER));
        let p = at(&docs[1..], 100, &mut missing);
        assert_eq!((p.changes.len(), &p.waiting[..]), (0, &[key("a")][..]));

        // Its content is back: nothing happened, and nothing waits.
        assert_eq!(at(&docs, 200, &mut missing), Plan::default());
        assert_eq!(missing.recheck_at(), None);

        // Missing again: the delay counts from this scan, not the first one.
        assert_eq!(at(&docs[1..], 300, &mut missing).waiting, [key("a")]);
        assert_eq!(at(&docs[1..], 500, &mut missing).waiting, [key("a")]);
        let p = at(&docs[1..], 550, &mut missing);
        assert_eq!(p.changes, [Change::Delete { key: key("a") }]);
        assert_eq!(missing.recheck_at(), None);
    }

    #[test]
    fn objects_below_an_unread_place_are_held_and_not_waited_for() {
        let docs = [
            doc("a", json!({}), json!({}), "m/a.yaml"),
            doc("b", json!({}), json!({}), "m/team/b.yaml"),
            doc("c", json!({}), json!({}), "m/teams.yaml"),
            doc("d", json!({}), json!({}), "other/d.yaml"),
        ];
        let stored = created(&docs);
        let mut missing = Missing::default();
        let start = Instant::now();

        // The directory m/team cannot be read, and a.yaml fails to parse.
        let unread_now = unread(&["m/team/", "m/a.yaml"]);
        for after_ms in [0, 1_000] {
            let p = plan(
                &stored,
                &docs[2..],
                &unread_now,
                &mut missing,
                start + Duration::from_millis(after_ms),
                uids(),
            );
            assert_eq!(p.held, [key("a"), key("b")]);
            assert!(p.changes.is_empty() && p.waiting.is_empty(), "{p:?}");
        }

        // The whole root m is missing: everything read from it is held, the rest goes on.
        for after_ms in [0, 1_000] {
            let p = plan(
                &stored,
                &[],
                &unread(&["m"]),
                &mut missing,
                start + Duration::from_millis(after_ms),
                uids(),
            );
            assert_eq!(p.held, [key("a"), key("b"), key("c")]);
            if after_ms == 0 {
                assert_eq!(p.waiting, [key("d")]);
            } else {
                assert_eq!(p.changes, [Change::Delete { key: key("d") }]);
            }
        }
    }

    #[test]
    fn unread_covers_a_place_and_what_is_below_it_only() {
        let unread = unread(&["m/team", "/abs/", "x.yaml"]);
        assert!(unread.covers("m/team"));
        assert!(unread.covers("m/team/b.yaml"));
        assert!(!unread.covers("m/teams.yaml"));
        assert!(!unread.covers("m/tea"));
        assert!(unread.covers("/abs/a/b.yaml"));
        assert!(unread.covers("x.yaml"));
        assert!(!unread.covers("x.yaml.bak"));
        assert!(!Unread::default().covers("/"));
    }

    #[test]
    fn an_object_whose_manifest_returns_during_deletion_is_revived() {
        let docs = [doc("a", json!({"x": 1}), json!({}), "a.yaml")];
        let stored = created(&docs);
        let mut deleting = stored.clone();
        deleting.get_mut(&key("a")).unwrap().deleting = true;
        // Still being cleaned up and still absent: no new change, nothing waits.
        let mut missing = Missing::default();
        let p = plan(
            &deleting,
            &[],
            &Unread::default(),
            &mut missing,
            Instant::now(),
            uids(),
        );
        assert_eq!(p, Plan::default());
        assert_eq!(missing.recheck_at(), None);
        let p = plan_now(&deleting, &docs);
        assert!(
            matches!(&p.changes[..], [Change::Revive { generation: 1, .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn an_object_defined_twice_is_a_conflict_and_keeps_its_stored_version() {
        let a1 = doc("a", json!({"x": 1}), json!({}), "a.yaml");
        let a2 = doc("a", json!({"x": 2}), json!({}), "z.yaml");

        // New and defined twice: neither definition is created, both places are named.
        let p = plan_now(&BTreeMap::new(), &[a1.clone(), a2.clone()]);
        assert!(p.changes.is_empty(), "{p:?}");
        let reasons: Vec<String> = p.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            [
                "a.yaml:1:1: metadata.name: AlertChannel default/a is also defined at z.yaml:1; it is not created until only one place defines it",
                "z.yaml:1:1: metadata.name: AlertChannel default/a is also defined at a.yaml:1; it is not created until only one place defines it",
            ]
        );

        // Stored from a.yaml, then defined again in z.yaml: held at the stored version.
        let stored = created(std::slice::from_ref(&a1));
        let p = plan_now(&stored, &[a1.clone(), a2.clone()]);
        assert_eq!((p.changes.len(), &p.held[..]), (0, &[key("a")][..]));
        assert!(
            p.problems[0]
                .reason
                .ends_with("it keeps its current version until only one place defines it"),
            "{p:?}"
        );

        // a.yaml now has a typo: the object does not switch to z.yaml's definition.
        let mut missing = Missing::default();
        let p = plan(
            &stored,
            std::slice::from_ref(&a2),
            &unread(&["a.yaml"]),
            &mut missing,
            Instant::now(),
            uids(),
        );
        assert_eq!((p.changes.len(), &p.held[..]), (0, &[key("a")][..]));
        assert_eq!(
            p.problems[0].to_string(),
            "z.yaml:1:1: metadata.name: AlertChannel default/a was read from a.yaml, which cannot be read now: it keeps its version from there, and this definition waits until a.yaml can be read"
        );

        // Once a.yaml is readable and no longer defines it, the object moves to z.yaml.
        let p = plan_now(&stored, std::slice::from_ref(&a2));
        assert!(
            matches!(&p.changes[..], [Change::Update { generation: 2, file, .. }] if file == "z.yaml"),
            "{p:?}"
        );
        assert_eq!(stored_from(&p, &stored)[&key("a")].uid, "uid-1");
    }

    #[test]
    fn objects_the_operator_made_are_never_deleted_for_their_absence() {
        let mut stored = created(&[doc("a", json!({}), json!({}), "a.yaml")]);
        stored.get_mut(&key("a")).unwrap().file = OPERATOR_MADE.to_owned();
        let mut missing = Missing::default();
        let start = Instant::now();
        for after_ms in [0, 1_000] {
            let p = plan(
                &stored,
                &[],
                &Unread::default(),
                &mut missing,
                start + Duration::from_millis(after_ms),
                uids(),
            );
            assert_eq!(p, Plan::default());
        }
    }
}
