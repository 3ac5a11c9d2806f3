use serde_json::json;

use super::*;
use crate::standalone::sync::{DELETE_AFTER, Missing, Scanned, Unread, plan};
use crate::state::{Database, sqlite_url};

fn key(name: &str) -> Key {
    Key {
        kind: "AlertChannel".to_owned(),
        namespace: "default".to_owned(),
        name: name.to_owned(),
    }
}

fn scanned(name: &str, spec: Value) -> Scanned {
    Scanned {
        key: key(name),
        file: "a.yaml".to_owned(),
        line: 1,
        object: json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel", "metadata": {"name": name, "namespace": "default"}, "spec": spec}).into(),
    }
}

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let state = Database::open(&sqlite_url(&dir.path().join("state/state.db")))
        .await
        .unwrap();
    let store = Store::open(state.pool()).await.unwrap();
    (dir, store)
}

/// Brings the store to `docs` with two scans, the second one confirming deletions.
async fn sync(store: &Store, docs: &[Scanned]) {
    let mut missing = Missing::default();
    let start = std::time::Instant::now();
    for at in [start, start + DELETE_AFTER] {
        let index = store.index().await.unwrap();
        let mut n = 0;
        let p = plan(&index, docs, &Unread::default(), &mut missing, at, || {
            n += 1;
            format!("uid-{n}")
        });
        for change in &p.changes {
            store
                .apply(change, Timestamp::from_second(1_800_000_000).unwrap())
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn objects_are_stored_with_the_metadata_the_api_server_adds() {
    let (_dir, store) = store().await;
    sync(&store, &[scanned("ops", json!({"verify": true}))]).await;
    let stored = store.get(&key("ops")).await.unwrap().unwrap();
    assert_eq!((stored.uid.as_str(), stored.generation), ("uid-1", 1));
    assert_eq!(stored.object["metadata"]["uid"], "uid-1");
    assert_eq!(stored.object["metadata"]["generation"], 1);
    assert_eq!(
        stored.object["metadata"]["creationTimestamp"],
        "2027-01-15T08:00:00Z"
    );

    sync(&store, &[scanned("ops", json!({"verify": false}))]).await;
    let stored = store.get(&key("ops")).await.unwrap().unwrap();
    assert_eq!((stored.uid.as_str(), stored.generation), ("uid-1", 2));
    assert_eq!(
        stored.object["metadata"]["creationTimestamp"],
        "2027-01-15T08:00:00Z"
    );
    assert_eq!(
        store.list(Some("AlertChannel"), None).await.unwrap().len(),
        1
    );
    assert!(store.list(Some("Proxy"), None).await.unwrap().is_empty());
}

#[tokio::test]
async fn status_is_written_only_when_it_changed() {
    let (_dir, store) = store().await;
    sync(&store, &[scanned("ops", json!({}))]).await;
    let status = json!({"verified": true});
    assert!(
        store
            .write_status(&key("ops"), "uid-1", &status)
            .await
            .unwrap()
    );
    assert!(
        !store
            .write_status(&key("ops"), "uid-1", &status)
            .await
            .unwrap()
    );
    // A status for an older incarnation of the name is refused.
    assert!(
        !store
            .write_status(&key("ops"), "uid-0", &json!({"x": 1}))
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(&key("ops")).await.unwrap().unwrap().full()["status"],
        status
    );
}

#[tokio::test]
async fn a_deleted_object_is_kept_until_its_cleanup_finishes() {
    let (_dir, store) = store().await;
    sync(&store, &[scanned("ops", json!({}))]).await;
    sync(&store, &[]).await;
    let stored = store.get(&key("ops")).await.unwrap().unwrap();
    assert!(stored.deleting);
    store.forget(&key("ops"), &stored.uid).await.unwrap();
    assert!(store.get(&key("ops")).await.unwrap().is_none());
}

#[tokio::test]
async fn dependents_are_the_objects_whose_owner_references_name_the_uid() {
    let (_dir, store) = store().await;
    let owned = |uid: &str| {
        json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
               "metadata": {"name": "x", "namespace": "default",
                            "ownerReferences": [{"apiVersion": "infrapilot.io/v1alpha1",
                                                 "kind": "BackupValidationPolicy",
                                                 "name": "nightly", "uid": uid}]},
               "spec": {}})
    };
    let mut docs = vec![scanned("owner", json!({}))];
    for (name, owner) in [("mine", "uid-1"), ("theirs", "uid-9")] {
        let mut doc = scanned(name, json!({}));
        let mut object = owned(owner);
        object["metadata"]["name"] = json!(name);
        doc.object = object.into();
        docs.push(doc);
    }
    sync(&store, &docs).await;
    assert_eq!(
        store.dependents("default", "uid-1").await.unwrap(),
        [key("mine")]
    );
    assert!(
        store
            .dependents("elsewhere", "uid-1")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn problems_are_replaced_and_events_listed_oldest_first() {
    let (_dir, store) = store().await;
    let problem = Problem {
        file: "b.yaml".to_owned(),
        line: 3,
        column: 5,
        field: "spec".to_owned(),
        reason: "bad".to_owned(),
    };
    store
        .replace_problems(std::slice::from_ref(&problem))
        .await
        .unwrap();
    assert_eq!(store.problems().await.unwrap(), [problem]);
    store.replace_problems(&[]).await.unwrap();
    assert!(store.problems().await.unwrap().is_empty());

    sync(&store, &[scanned("ops", json!({}))]).await;
    let object = store.get(&key("ops")).await.unwrap().unwrap().object_ref();
    for (second, reason) in [(1, "First"), (2, "Second")] {
        let event = Event {
            type_: EventType::Normal,
            reason: reason.to_owned(),
            action: "Verify".to_owned(),
            note: String::new(),
        };
        store
            .add_event(
                &object,
                &event,
                Timestamp::from_second(1_800_000_000 + second).unwrap(),
            )
            .await
            .unwrap();
    }
    let events = store.events(&key("ops"), 10).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.event.reason.as_str())
            .collect::<Vec<_>>(),
        ["First", "Second"]
    );
}

#[tokio::test]
async fn a_scan_of_many_changes_is_stored_at_once_in_rows_and_listed_by_kind_and_namespace() {
    let (_dir, store) = store().await;
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    // More creates than one statement holds, and one that is not a whole statement.
    let count = CREATE_ROWS * 2 + 3;
    let docs: Vec<Scanned> = (0..count)
        .map(|i| scanned(&format!("ch-{i:03}"), json!({"n": i})))
        .collect();
    let index = store.index().await.unwrap();
    let mut n = 0;
    let created = plan(
        &index,
        &docs,
        &Unread::default(),
        &mut Missing::default(),
        std::time::Instant::now(),
        || {
            n += 1;
            format!("uid-{n}")
        },
    );
    store.apply_all(&created.changes, now).await.unwrap();
    let listed = store
        .list(Some("AlertChannel"), Some("default"))
        .await
        .unwrap();
    assert_eq!(listed.len(), count);
    for (i, object) in listed.iter().enumerate() {
        assert_eq!(object.key.name, format!("ch-{i:03}"));
        assert_eq!(object.object["spec"]["n"], i);
        assert_eq!(
            object.object["metadata"]["uid"].as_str(),
            Some(object.uid.as_str())
        );
    }
    assert!(store.list(Some("Proxy"), None).await.unwrap().is_empty());
    assert!(store.list(None, Some("other")).await.unwrap().is_empty());
    assert_eq!(store.list(None, None).await.unwrap().len(), count);

    // Creates, updates and deletions together.
    let mut next = docs[1..].to_vec();
    next[0] = scanned("ch-001", json!({"n": "changed"}));
    next.push(scanned("new", json!({})));
    let mut missing = Missing::default();
    let start = std::time::Instant::now();
    for at in [start, start + DELETE_AFTER] {
        let index = store.index().await.unwrap();
        let changes = plan(&index, &next, &Unread::default(), &mut missing, at, || {
            "uid-new".to_owned()
        });
        store.apply_all(&changes.changes, now).await.unwrap();
    }
    let changed = store.get(&key("ch-001")).await.unwrap().unwrap();
    assert_eq!(
        (changed.generation, &changed.object["spec"]["n"]),
        (2, &json!("changed"))
    );
    assert!(store.get(&key("ch-000")).await.unwrap().unwrap().deleting);
    assert_eq!(
        store.get(&key("new")).await.unwrap().unwrap().uid,
        "uid-new"
    );
}

#[tokio::test]
async fn concurrent_reads_and_status_writes_each_get_their_own_answer() {
    let (_dir, store) = store().await;
    // More objects than one statement of the batch holds.
    let names: Vec<String> = (0..45).map(|i| format!("ch-{i:03}")).collect();
    let docs: Vec<Scanned> = names.iter().map(|n| scanned(n, json!({}))).collect();
    sync(&store, &docs).await;
    let uid = |name: &str| {
        let store = store.clone();
        let key = key(name);
        async move { store.get(&key).await.unwrap().unwrap().uid }
    };
    let uids: Vec<String> = futures::future::join_all(names.iter().map(|n| uid(n))).await;
    store
        .write_status(&key("ch-001"), &uids[1], &json!({"n": 1}))
        .await
        .unwrap();

    // Asked all at once, so that they share trips: a new status for each, except ch-001's
    // (unchanged) and ch-002's (a stale uid); ch-000 twice, the later write last.
    let writes = names.iter().enumerate().map(|(i, name)| {
        let store = store.clone();
        let (key, uid) = (key(name), uids[i].clone());
        async move {
            let uid = if i == 2 { "stale".to_owned() } else { uid };
            store.write_status(&key, &uid, &json!({"n": i})).await
        }
    });
    let (first, again_status) = (key("ch-000"), json!({"n": "again"}));
    let again = store.write_status(&first, &uids[0], &again_status);
    let (written, again) = futures::join!(futures::future::join_all(writes), again);
    let written: Vec<bool> = written.into_iter().map(Result::unwrap).collect();
    assert!(again.unwrap());
    for (i, written) in written.iter().enumerate() {
        assert_eq!(*written, i != 1 && i != 2, "{}", names[i]);
    }

    let mut asked: Vec<Key> = names.iter().map(|n| key(n)).collect();
    asked.push(key("ch-000"));
    asked.push(key("absent"));
    let read = futures::future::join_all(asked.iter().map(|k| store.get(k))).await;
    let statuses: Vec<Option<Value>> = read
        .into_iter()
        .map(|r| r.unwrap().and_then(|o| o.status))
        .collect();
    assert_eq!(statuses[0], Some(json!({"n": "again"})));
    assert_eq!(statuses[1], Some(json!({"n": 1})));
    assert_eq!(statuses[2], None);
    for (i, status) in statuses.iter().enumerate().take(names.len()).skip(3) {
        assert_eq!(*status, Some(json!({"n": i})), "{}", names[i]);
    }
    // Asked twice in one trip: both askers get the object.
    assert_eq!(statuses[names.len()], statuses[0]);
    assert_eq!(statuses[names.len() + 1], None);
}

/// The selector's fragments narrow a list in the database, with `LIKE`'s wildcards and its
/// escape character taken as text: `a_b` does not select `axb`, `a%b` does not select `a%xb`.
#[tokio::test]
async fn a_list_is_narrowed_by_fragments_taken_as_text() {
    use crate::runtime::objects::Selector;
    let (_dir, store) = store().await;
    let tags = ["a%b", "a%xb", "a_b", "axb", "a\\b", "A_B"];
    let mut docs: Vec<Scanned> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| scanned(&format!("ch-{i}"), json!({"tag": tag})))
        .collect();
    docs.push(scanned("untagged", json!({})));
    sync(&store, &docs).await;
    let listed = |selector: Selector| {
        let store = &store;
        async move {
            let fragments = selector.fragments();
            let kept = store
                .list_where(Some("AlertChannel"), Some("default"), &fragments, |o| {
                    selector.matches(o)
                })
                .await
                .unwrap();
            // What the database let through before the exact match: never fewer.
            let narrowed = store
                .list_where(Some("AlertChannel"), Some("default"), &fragments, |_| true)
                .await
                .unwrap();
            let names = |objects: Vec<StoredObject>| -> Vec<String> {
                objects.into_iter().map(|o| o.key.name).collect()
            };
            (names(kept), names(narrowed))
        }
    };
    let tag = |value: &str| Selector {
        fields: [("spec.tag".to_owned(), value.to_owned())].into(),
        ..Selector::everything()
    };
    for (i, value) in tags.iter().enumerate() {
        let (kept, narrowed) = listed(tag(value)).await;
        assert_eq!(kept, vec![format!("ch-{i}")], "{value}");
        // SQLite's LIKE ignores ASCII case, so `A_B` and `a_b` find each other; nothing else.
        assert!(narrowed.len() <= 2, "{value}: {narrowed:?}");
    }
    let present = Selector {
        present: vec!["spec.tag".to_owned()],
        ..Selector::everything()
    };
    let (kept, narrowed) = listed(present).await;
    assert_eq!(kept.len(), tags.len());
    assert_eq!(
        narrowed.len(),
        tags.len(),
        "the untagged one stays in the database"
    );
    let (all, _) = listed(Selector::everything()).await;
    assert_eq!(all.len(), tags.len() + 1);
}
