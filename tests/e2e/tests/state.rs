//! The state database's versioned schema: a database made by the last release before
//! versioning is adopted by the commands that read it, on SQLite and on the test PostgreSQL
//! server, without losing a record.

use std::path::Path;

use infrapilot_e2e::operator::cli;
use infrapilot_e2e::postgres::TestDatabase;
use infrapilot_e2e::{Result, env};
use serde_json::Value;
use sqlx::{AnyPool, AssertSqlSafe, Row};

/// The release's DDL and the rows its binary wrote, with the directory's audit key (see
/// `controller/src/state/tests.rs`).
const BEFORE_VERSIONING: &str =
    include_str!("../../../controller/src/state/testdata/before-versioning.sql");
const BEFORE_VERSIONING_KEY: &str =
    include_str!("../../../controller/src/state/testdata/before-versioning.audit.key");

/// Every row of every table, each column read as text, in a stable order.
async fn rows(pool: &AnyPool) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for (table, columns, order) in [
        (
            "objects",
            "kind, namespace, name, uid, generation, spec_hash, object_hash, object, status, file, line, deleting, created, updated",
            "kind, namespace, name",
        ),
        (
            "problems",
            "file, line, col, field, reason",
            "file, line, col",
        ),
        (
            "events",
            "time, kind, namespace, name, uid, type, reason, action, note",
            "time, kind, namespace, name, reason",
        ),
        (
            "audit_records",
            "seq, time, controller, kind, namespace, name, uid, generation, action, target, outcome, detail, prev_hash, hash",
            "seq",
        ),
        ("audit_head", "id, seq, hash", "id"),
    ] {
        let select = columns
            .split(", ")
            .map(|c| format!("CAST({c} AS TEXT)"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT {select} FROM {table} ORDER BY {order}");
        for row in sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await? {
            let values = (0..row.len())
                .map(|i| row.try_get::<Option<String>, _>(i))
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(format!("{table}: {values:?}"));
        }
    }
    Ok(rows)
}

async fn applied(pool: &AnyPool, owner: &str) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM _sqlx_migrations_{owner} ORDER BY version"
    )))
    .fetch_all(pool)
    .await?)
}

/// Loads the release's database into `pool`, runs `audit verify`, `get` and `describe` on it
/// through `url`, and checks that every row is still there and both owners are at version 1.
async fn adopted_by_the_commands(dir: &Path, url: &str, pool: &AnyPool) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(BEFORE_VERSIONING))
        .execute(pool)
        .await?;
    let before = rows(pool).await?;
    let records = before
        .iter()
        .filter(|r| r.starts_with("audit_records:"))
        .count();
    assert!(
        before.len() > 10 && records >= 2,
        "the fixture was not loaded: {before:?}"
    );
    std::fs::create_dir_all(dir.join(".infrapilot"))?;
    std::fs::write(dir.join(".infrapilot/audit.key"), BEFORE_VERSIONING_KEY)?;

    let verify = cli(dir, &["audit", "verify", "--state", url]).await?;
    assert!(verify.status.success(), "{verify:?}");
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout),
        format!("the audit log is intact: {records} records verified\n")
    );

    let get = cli(dir, &["get", "all", "-A", "-o", "json", "--state", url]).await?;
    assert!(get.status.success(), "{get:?}");
    let listed: Value = serde_json::from_slice(&get.stdout)?;
    let items = listed["items"].as_array().cloned().unwrap_or_default();
    let uids: Vec<&str> = items
        .iter()
        .filter_map(|o| o["metadata"]["uid"].as_str())
        .collect();
    let stored: Vec<&String> = before
        .iter()
        .filter(|r| r.starts_with("objects:"))
        .collect();
    assert_eq!(uids.len(), stored.len(), "{items:?} against {stored:?}");
    for uid in uids {
        assert!(
            stored.iter().any(|row| row.contains(&format!("\"{uid}\""))),
            "{uid} is not a stored object's"
        );
    }
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(stderr.contains("manifests/broken.yaml"), "{stderr}");

    let describe = cli(
        dir,
        &[
            "describe",
            "alertchannel",
            "ops",
            "-n",
            "default",
            "--state",
            url,
        ],
    )
    .await?;
    assert!(describe.status.success(), "{describe:?}");
    let described = String::from_utf8_lossy(&describe.stdout);
    assert!(described.contains("Events:"), "{described}");

    assert_eq!(rows(pool).await?, before);
    assert_eq!(applied(pool, "audit").await?, [1]);
    assert_eq!(applied(pool, "store").await?, [1]);
    Ok(())
}

#[tokio::test]
async fn a_sqlite_state_made_before_versioning_is_adopted_without_losing_a_record() {
    sqlx::any::install_default_drivers();
    let dir = env::test_dir("state-adopt-sqlite");
    std::fs::create_dir_all(dir.join(".infrapilot")).unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.join(".infrapilot/state.db").display()
    );
    let pool = AnyPool::connect(&url).await.unwrap();
    adopted_by_the_commands(&dir, &url, &pool).await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_postgresql_state_made_before_versioning_is_adopted_without_losing_a_record() {
    sqlx::any::install_default_drivers();
    let db = TestDatabase::create("state-adopt").await.unwrap();
    let dir = env::test_dir("state-adopt-postgres");
    let pool = AnyPool::connect(&db.url()).await.unwrap();
    adopted_by_the_commands(&dir, &db.url(), &pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn the_audit_log_on_postgresql_creates_only_its_own_tables() {
    sqlx::any::install_default_drivers();
    let db = TestDatabase::create("state-audit-only").await.unwrap();
    let state = infrapilot::state::Database::open(&db.url()).await.unwrap();
    let key = infrapilot::audit::AuditKey::from_bytes(&[9u8; 32]).unwrap();
    infrapilot::audit::AuditLog::open(state.pool(), key)
        .await
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        tables,
        ["_sqlx_migrations_audit", "audit_head", "audit_records"]
    );
}

/// Columns with their types, nullability and defaults, and the indexes, of InfraPilot's tables.
async fn shape(db: &TestDatabase) -> Result<Vec<String>> {
    let mut shape: Vec<String> = sqlx::query_scalar(
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
         FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'
         ORDER BY table_name, ordinal_position",
    )
    .fetch_all(db.pool())
    .await?;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename NOT LIKE '\\_sqlx%' ORDER BY indexname",
    )
    .fetch_all(db.pool())
    .await?;
    shape.extend(indexes);
    Ok(shape)
}

#[tokio::test]
async fn the_first_migrations_make_exactly_the_release_schema_on_postgresql() {
    sqlx::any::install_default_drivers();
    let old = TestDatabase::create("state-old-schema").await.unwrap();
    let ddl: String = BEFORE_VERSIONING
        .split_inclusive(";\n")
        .filter(|statement| !statement.starts_with("INSERT"))
        .collect();
    old.execute(&ddl).await.unwrap();
    let new = TestDatabase::create("state-new-schema").await.unwrap();
    let state = infrapilot::state::Database::open(&new.url()).await.unwrap();
    infrapilot::standalone::store::Store::open(state.pool())
        .await
        .unwrap();
    let key = infrapilot::audit::AuditKey::from_bytes(&[9u8; 32]).unwrap();
    infrapilot::audit::AuditLog::open(state.pool(), key)
        .await
        .unwrap();
    let expected = shape(&old).await.unwrap();
    assert!(expected.len() > 40, "{expected:?}");
    assert_eq!(shape(&new).await.unwrap(), expected);
}

/// The store's batched statements (one SELECT or UPDATE ... FROM (VALUES ...) RETURNING for
/// many objects) are portable: on the test PostgreSQL server, concurrent reads and status
/// writes each get their own answer, as on SQLite (`controller/src/standalone/store/tests.rs`).
#[tokio::test]
async fn the_store_batches_reads_and_status_writes_on_postgresql() {
    use infrapilot::standalone::store::Store;
    use infrapilot::standalone::sync::{Key, Missing, Scanned, Unread, plan};
    use serde_json::json;

    sqlx::any::install_default_drivers();
    let db = TestDatabase::create("state-store-batch").await.unwrap();
    let state = infrapilot::state::Database::open(&db.url()).await.unwrap();
    let store = Store::open(state.pool()).await.unwrap();
    let key = |name: &str| Key {
        kind: "AlertChannel".to_owned(),
        namespace: "default".to_owned(),
        name: name.to_owned(),
    };
    let names: Vec<String> = (0..45).map(|i| format!("ch-{i:03}")).collect();
    let docs: Vec<Scanned> = names
        .iter()
        .map(|name| Scanned {
            key: key(name),
            file: "a.yaml".to_owned(),
            line: 1,
            object: json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel", "metadata": {"name": name, "namespace": "default"}, "spec": {}}).into(),
        })
        .collect();
    let mut n = 0;
    let created = plan(
        &store.index().await.unwrap(),
        &docs,
        &Unread::default(),
        &mut Missing::default(),
        std::time::Instant::now(),
        || {
            n += 1;
            format!("uid-{n:03}")
        },
    );
    store
        .apply_all(&created.changes, jiff::Timestamp::now())
        .await
        .unwrap();

    let keys: Vec<Key> = names.iter().map(|n| key(n)).collect();
    let read = futures::future::join_all(keys.iter().map(|k| store.get(k))).await;
    let uids: Vec<String> = read.into_iter().map(|r| r.unwrap().unwrap().uid).collect();
    // ch-001 gets `null`, the others `true`; ch-002's uid is stale, so it is never written.
    let store = &store;
    let write_all = || {
        let writes = keys.iter().zip(&uids).enumerate().map(|(i, (key, uid))| {
            let uid = if i == 2 { "stale" } else { uid.as_str() };
            let status = if i == 1 {
                Value::Null
            } else {
                Value::Bool(true)
            };
            async move { store.write_status(key, uid, &status).await.unwrap() }
        });
        futures::future::join_all(writes)
    };
    let first = write_all().await;
    for (i, written) in first.iter().enumerate() {
        assert_eq!(*written, i != 2, "{}", names[i]);
    }
    // The same again: nothing changes, so nothing is written.
    let again = write_all().await;
    assert_eq!(again, vec![false; names.len()]);
    let mut asked = keys.clone();
    asked.push(key("absent"));
    let read = futures::future::join_all(asked.iter().map(|k| store.get(k))).await;
    let statuses: Vec<Option<Value>> = read
        .into_iter()
        .map(|r| r.unwrap().and_then(|o| o.status))
        .collect();
    assert_eq!(statuses[2], None);
    assert_eq!(statuses[1], Some(Value::Null));
    assert!(
        statuses[3..names.len()]
            .iter()
            .all(|s| *s == Some(Value::Bool(true)))
    );
    assert_eq!(statuses[names.len()], None);

    // Lists narrowed in the database ([`Selector::fragments`]) with PostgreSQL's `LIKE`:
    // `_` is text, not a wildcard.
    let narrowed = |name: &str| {
        let fragments = vec![format!("\"name\":\"{name}\"")];
        async move {
            store
                .list_where(Some("AlertChannel"), Some("default"), &fragments, |_| true)
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(narrowed("ch-001").await, 1);
    assert_eq!(narrowed("ch-00_").await, 0);
}
