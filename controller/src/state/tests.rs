use std::collections::BTreeSet;

use sqlx::Row;

use super::*;
use crate::audit::{self, AuditKey, AuditLog};
use crate::standalone::store::{self, Store};

/// A database made by the last release before versioning, as its own code made it: the DDL is
/// that release's statements, the rows were dumped from a state directory its binary filled
/// (`infrapilot run` on AlertChannels, one delivering, one failing, one not verifying; a
/// Tenant; a broken manifest), and the audit key is that directory's.
const BEFORE_VERSIONING: &str = include_str!("testdata/before-versioning.sql");
const BEFORE_VERSIONING_KEY: &str = include_str!("testdata/before-versioning.audit.key");
const FIXTURE_OBJECTS: [&str; 4] = [
    "AlertChannel default/ops",
    "AlertChannel default/pager",
    "AlertChannel team-a/quiet",
    "Tenant acme",
];
const FIXTURE_OPS_UID: &str = "553d75e8-b987-4528-a1c7-4c98b6e7de56";

async fn database() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::open(&sqlite_url(&dir.path().join("state/state.db")))
        .await
        .unwrap();
    (dir, database)
}

async fn tables(database: &Database) -> BTreeSet<String> {
    sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table'")
        .fetch_all(&database.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect()
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

async fn applied(database: &Database, schema: &Schema) -> Vec<i64> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {} ORDER BY version",
        schema.table()
    )))
    .fetch_all(&database.pool())
    .await
    .unwrap()
    .iter()
    .map(|row| row.get::<i64, _>(0))
    .collect()
}

fn key() -> AuditKey {
    AuditKey::from_bytes(&hex::decode(BEFORE_VERSIONING_KEY.trim()).unwrap()).unwrap()
}

#[tokio::test]
async fn the_audit_log_alone_creates_only_its_own_tables() {
    let (_dir, database) = database().await;
    AuditLog::open(database.pool(), key()).await.unwrap();
    assert_eq!(
        tables(&database).await,
        names(&["audit_records", "audit_head", "_sqlx_migrations_audit"])
    );
    assert_eq!(applied(&database, &audit::SCHEMA).await, [1]);

    Store::open(database.pool()).await.unwrap();
    assert_eq!(
        tables(&database).await,
        names(&[
            "audit_records",
            "audit_head",
            "_sqlx_migrations_audit",
            "objects",
            "problems",
            "events",
            "_sqlx_migrations_store",
        ])
    );
    assert_eq!(applied(&database, &store::SCHEMA).await, [1]);
}

/// The columns, types, nullability and keys of each table, and the indexes: what a
/// migration must reproduce.
async fn shape(database: &Database) -> Vec<String> {
    let pool = database.pool();
    let mut shape = Vec::new();
    for table in [
        "objects",
        "problems",
        "events",
        "audit_records",
        "audit_head",
    ] {
        for row in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}')"
        )))
        .fetch_all(&pool)
        .await
        .unwrap()
        {
            shape.push(format!(
                "{table}.{} {} notnull={} pk={}",
                row.get::<String, _>(0),
                row.get::<String, _>(1),
                row.get::<i64, _>(2),
                row.get::<i64, _>(3)
            ));
        }
    }
    for row in sqlx::query(
        "SELECT name, tbl_name, sql FROM sqlite_master
         WHERE type = 'index' AND tbl_name NOT LIKE '\\_sqlx%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    {
        shape.push(format!(
            "index {} on {}: {:?}",
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<Option<String>, _>(2)
        ));
    }
    shape
}

/// The DDL of `BEFORE_VERSIONING`, without its rows.
fn ddl_before_versioning() -> String {
    BEFORE_VERSIONING
        .split_inclusive(";\n")
        .filter(|statement| !statement.starts_with("INSERT"))
        .collect()
}

#[tokio::test]
async fn the_first_migrations_make_exactly_the_schema_of_the_release_before_versioning() {
    let (_old_dir, old) = database().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl_before_versioning()))
        .execute(&old.pool())
        .await
        .unwrap();
    let (_new_dir, new) = database().await;
    Store::open(new.pool()).await.unwrap();
    AuditLog::open(new.pool(), key()).await.unwrap();

    let expected = shape(&old).await;
    assert!(
        expected.len() > 40,
        "the release's tables were not read: {expected:?}"
    );
    assert_eq!(shape(&new).await, expected);
}

#[tokio::test]
async fn a_database_made_before_versioning_is_adopted_with_every_record() {
    let (_dir, database) = database().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(BEFORE_VERSIONING))
        .execute(&database.pool())
        .await
        .unwrap();
    let count = |table: &'static str| {
        let pool = database.pool();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let before = (
        count("objects").await,
        count("problems").await,
        count("events").await,
        count("audit_records").await,
    );

    let store = Store::open(database.pool()).await.unwrap();
    let log = AuditLog::open(database.pool(), key()).await.unwrap();
    assert_eq!(applied(&database, &store::SCHEMA).await, [1]);
    assert_eq!(applied(&database, &audit::SCHEMA).await, [1]);
    assert_eq!(
        (
            count("objects").await,
            count("problems").await,
            count("events").await,
            count("audit_records").await,
        ),
        before
    );

    let objects = store.list(None, None).await.unwrap();
    let keys: Vec<String> = objects.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(keys, FIXTURE_OBJECTS, "{keys:?}");
    let ops = objects.iter().find(|o| o.key.name == "ops").unwrap();
    assert_eq!(ops.uid, FIXTURE_OPS_UID);
    assert_eq!(
        ops.status.as_ref().unwrap()["conditions"][0]["status"],
        "True"
    );
    assert!(!store.events(&ops.key, 10).await.unwrap().is_empty());
    let problems = store.problems().await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, "manifests/broken.yaml");

    let records = log.verify().await.unwrap();
    assert_eq!(i64::try_from(records).unwrap(), before.3);
    assert!(records >= 2, "the fixture has a chain of {records}");

    // The chain goes on from the adopted head.
    let appended = log
        .append(audit::NewRecord {
            controller: "alertchannel".to_owned(),
            object: ops.object_ref(),
            action: "notification.send".to_owned(),
            target: "webhook".to_owned(),
            outcome: audit::Outcome::Success,
            detail: "after adoption".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(appended.seq, before.3 + 1);
    assert_eq!(log.verify().await.unwrap(), records + 1);
}

#[tokio::test]
async fn opening_again_applies_nothing_and_keeps_the_rows() {
    let (_dir, database) = database().await;
    let log = AuditLog::open(database.pool(), key()).await.unwrap();
    let record = log
        .append(audit::NewRecord {
            controller: "proxy".to_owned(),
            object: audit::ObjectRef {
                kind: "Proxy".to_owned(),
                namespace: Some("default".to_owned()),
                name: "web".to_owned(),
                uid: "u".to_owned(),
                generation: 1,
            },
            action: "nginx.reload".to_owned(),
            target: "edge".to_owned(),
            outcome: audit::Outcome::Success,
            detail: String::new(),
        })
        .await
        .unwrap();
    let again = AuditLog::open(database.pool(), key()).await.unwrap();
    assert_eq!(again.verify().await.unwrap(), 1);
    assert_eq!(
        again.list(&audit::Filter::default()).await.unwrap(),
        [record]
    );
    assert_eq!(applied(&database, &audit::SCHEMA).await, [1]);
}

#[tokio::test]
async fn a_database_a_newer_release_migrated_is_refused_with_the_reason() {
    let (_dir, database) = database().await;
    Store::open(database.pool()).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations_store (version, description, success, checksum, execution_time)
         VALUES (2, 'from the future', 1, x'00', 0)",
    )
    .execute(&database.pool())
    .await
    .unwrap();
    let error = Store::open(database.pool()).await.unwrap_err().to_string();
    assert!(
        error.contains("store migration 2") && error.contains("newer release"),
        "{error}"
    );
    // The other owner's migrations are not affected.
    AuditLog::open(database.pool(), key()).await.unwrap();
}

#[tokio::test]
async fn two_processes_opening_a_new_database_at_once_both_succeed() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("state.db"));
        // Two pools stand for two processes: sqlx's SQLite migrator takes no lock.
        let (a, b) = tokio::join!(Database::open(&url), Database::open(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        let (first, second) = tokio::join!(Store::open(a.pool()), Store::open(b.pool()));
        first.unwrap();
        second.unwrap();
        assert_eq!(applied(&a, &store::SCHEMA).await, [1]);
    }
}

#[test]
fn every_migration_file_is_listed_in_its_owners_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for schema in [&audit::SCHEMA, &store::SCHEMA] {
        let mut files: Vec<(String, String)> = std::fs::read_dir(root.join(schema.owner))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        files.sort();
        let listed: Vec<(String, String)> = schema
            .migrations
            .iter()
            .enumerate()
            .map(|(i, step)| {
                assert_eq!(
                    step.version,
                    i64::try_from(i).unwrap() + 1,
                    "{} migrations are numbered from 1 without gaps",
                    schema.owner
                );
                (
                    format!(
                        "{:04}_{}.sql",
                        step.version,
                        step.description.replace(' ', "_")
                    ),
                    step.sql.to_owned(),
                )
            })
            .collect();
        assert_eq!(listed, files, "controller/migrations/{}", schema.owner);
    }
}

#[test]
fn passwords_in_database_urls_are_redacted() {
    assert_eq!(
        redact_url("postgres://app:s3cret@db:5432/state"),
        "postgres://app:***@db:5432/state"
    );
    assert_eq!(
        redact_url("sqlite://.infrapilot/state.db"),
        "sqlite://.infrapilot/state.db"
    );
}
