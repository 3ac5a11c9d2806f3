//! The state database of standalone mode: what the API server would keep. Objects with their
//! uid, generation, status and deletion state; the problems of the last manifest scan; events.
//! SQLite by default, PostgreSQL through `--state`; the SQL is portable between the two. The
//! tables are made and versioned by [`SCHEMA`]'s migrations (see [`crate::state`]).

use std::collections::BTreeMap;

use anyhow::Context as _;
use jiff::Timestamp;
use serde_json::Value;
use sqlx::{AnyPool, Row};

use super::sync::{Change, Key, Stored};
use crate::audit::ObjectRef;
use crate::manifest::Problem;
use crate::manifest::body::Body;
use crate::reconcile::{Event, EventType};
use crate::state::{Schema, Step};

/// The store's tables, versioned (see [`crate::state`]).
pub const SCHEMA: Schema = Schema {
    owner: "store",
    migrations: &[Step {
        version: 1,
        description: "objects problems events",
        sql: include_str!("../../migrations/store/0001_objects_problems_events.sql"),
    }],
};

/// The columns every object query selects, in the order [`stored_object`] reads them.
macro_rules! object_columns {
    () => {
        "kind, namespace, name, uid, generation, object, status, deleting, file, line"
    };
}

/// An object as stored: its manifest with the metadata the API server adds, and its status.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredObject {
    pub key: Key,
    pub uid: String,
    pub generation: i64,
    /// The manifest with `metadata.uid`, `generation` and `creationTimestamp` set.
    pub object: Value,
    pub status: Option<Value>,
    pub deleting: bool,
    pub file: String,
    pub line: i64,
}

impl StoredObject {
    /// The object with its status, as `infrapilot get -o yaml` shows it and reconcilers read it.
    pub fn full(&self) -> Value {
        let mut full = self.object.clone();
        if let (Some(status), Some(map)) = (&self.status, full.as_object_mut()) {
            map.insert("status".to_owned(), status.clone());
        }
        full
    }

    /// [`Self::full`], without a copy.
    pub fn into_full(self) -> Value {
        let mut full = self.object;
        if let (Some(status), Some(map)) = (self.status, full.as_object_mut()) {
            map.insert("status".to_owned(), status);
        }
        full
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.key.kind.clone(),
            namespace: (!self.key.namespace.is_empty()).then(|| self.key.namespace.clone()),
            name: self.key.name.clone(),
            uid: self.uid.clone(),
            generation: self.generation,
        }
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub time: String,
    pub event: Event,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Single-object reads and status writes, gathered into few statements ([`batch`]).
    batch: tokio::sync::mpsc::UnboundedSender<batch::Request>,
}

impl Store {
    /// The store in `pool`'s state database (see [`crate::state::Database`]), its tables
    /// created or brought up to date first.
    pub async fn open(pool: AnyPool) -> anyhow::Result<Store> {
        SCHEMA.migrate(&pool).await?;
        let batch = batch::start(pool.clone());
        Ok(Store { pool, batch })
    }

    /// What the sync planner needs to know of every object.
    pub async fn index(&self) -> anyhow::Result<BTreeMap<Key, Stored>> {
        let rows = sqlx::query("SELECT kind, namespace, name, uid, generation, spec_hash, object_hash, file, deleting FROM objects")
            .fetch_all(&self.pool)
            .await?;
        let mut index = BTreeMap::new();
        for row in rows {
            let key = Key {
                kind: row.try_get(0)?,
                namespace: row.try_get(1)?,
                name: row.try_get(2)?,
            };
            index.insert(
                key,
                Stored {
                    uid: row.try_get(3)?,
                    generation: row.try_get(4)?,
                    spec_hash: row.try_get(5)?,
                    object_hash: row.try_get(6)?,
                    file: row.try_get(7)?,
                    deleting: row.try_get::<i64, _>(8)? != 0,
                },
            );
        }
        Ok(index)
    }

    /// Applies one planned change.
    pub async fn apply(&self, change: &Change, now: Timestamp) -> anyhow::Result<()> {
        self.apply_all(std::slice::from_ref(change), now).await
    }

    /// Applies a scan's planned changes in one transaction: a cold start of thousands of
    /// objects is one commit, not one per object, and its creates go in rows of
    /// [`CREATE_ROWS`] per statement (each statement is a round trip to the database).
    pub async fn apply_all(&self, changes: &[Change], now: Timestamp) -> anyhow::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = now.to_string();
        let mut tx = self.pool.begin().await?;
        let creates: Vec<&Change> = changes
            .iter()
            .filter(|c| matches!(c, Change::Create { .. }))
            .collect();
        for rows in creates.chunks(CREATE_ROWS) {
            insert_rows(&mut tx, rows, &now).await?;
        }
        for change in changes {
            match change {
                Change::Create { .. } => {}
                Change::Update {
                    key,
                    generation,
                    object,
                    file,
                    line,
                }
                | Change::Revive {
                    key,
                    generation,
                    object,
                    file,
                    line,
                } => {
                    let current = get_on(&mut tx, key)
                        .await?
                        .with_context(|| format!("{key} vanished during an update"))?;
                    let created = current
                        .object
                        .pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or(&now)
                        .to_owned();
                    let stamped = stamp(object, &current.uid, *generation, &created);
                    sqlx::query(
                        "UPDATE objects SET generation = $4, spec_hash = $5, object_hash = $6, object = $7, file = $8, line = $9, deleting = 0, updated = $10
                         WHERE kind = $1 AND namespace = $2 AND name = $3",
                    )
                    .bind(&key.kind)
                    .bind(&key.namespace)
                    .bind(&key.name)
                    .bind(generation)
                    .bind(object.spec_hash())
                    .bind(object.object_hash())
                    .bind(stamped.to_string())
                    .bind(file)
                    .bind(i64::try_from(*line).unwrap_or(0))
                    .bind(&now)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::Delete { key } => {
                    sqlx::query("UPDATE objects SET deleting = 1, updated = $4 WHERE kind = $1 AND namespace = $2 AND name = $3")
                        .bind(&key.kind)
                        .bind(&key.namespace)
                        .bind(&key.name)
                        .bind(&now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get(&self, key: &Key) -> anyhow::Result<Option<StoredObject>> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.ask(batch::Request::Get {
            key: key.clone(),
            done,
        })?;
        answer_of(answer).await
    }

    fn ask(&self, request: batch::Request) -> anyhow::Result<()> {
        self.batch
            .send(request)
            .map_err(|_| anyhow::anyhow!("the state database's batch task has stopped"))
    }

    /// Objects of `kind` (all kinds when `None`) in `namespace` (all when `None`), by name.
    pub async fn list(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
    ) -> anyhow::Result<Vec<StoredObject>> {
        self.list_where(kind, namespace, &[], |_| true).await
    }

    /// [`Self::list`], keeping only the objects whose manifest (without its status) contains
    /// every one of `fragments` as text and that `keep` accepts; the status of the others is
    /// never read.
    ///
    /// The fragments are matched by the database (`LIKE`, in both dialects), so that rows
    /// which cannot be kept never leave it: SQLx's SQLite driver hands each row over from its
    /// worker thread on its own, and at 2,000 Proxies those hand-overs, not the query, were
    /// most of a list's time (1,500 certificate rules listing a namespace's TLS Proxies took
    /// 2.3 s of a cold start).
    pub async fn list_where(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        fragments: &[String],
        keep: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<StoredObject>> {
        // Only the conditions given, so that the primary key (kind, namespace, name) finds the
        // rows: with `$1 IS NULL OR kind = $1` SQLite scanned the whole table for every list.
        let mut sql = format!("SELECT {} FROM objects", object_columns!());
        let mut values: Vec<String> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        for (column, value) in [("kind", kind), ("namespace", namespace)] {
            if let Some(value) = value {
                values.push(value.to_owned());
                conditions.push(format!("{column} = ${}", values.len()));
            }
        }
        for fragment in fragments {
            values.push(format!("%{}%", like_escaped(fragment)));
            conditions.push(format!("object LIKE ${} ESCAPE '\\'", values.len()));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY kind, namespace, name");
        // Column names are the constants above; the values are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in values {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut kept = Vec::new();
        for row in &rows {
            let object: Value = serde_json::from_str(&row.try_get::<String, _>(5)?)?;
            if keep(&object) {
                kept.push(stored_object_with(row, object)?);
            }
        }
        Ok(kept)
    }

    /// Stores `status` for the object with `uid`, unless it is already stored: returns whether
    /// anything was written.
    pub async fn write_status(&self, key: &Key, uid: &str, status: &Value) -> anyhow::Result<bool> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.ask(batch::Request::Status {
            key: key.clone(),
            uid: uid.to_owned(),
            text: status.to_string(),
            done,
        })?;
        answer_of(answer).await
    }

    /// Forgets an object whose deletion finished.
    pub async fn forget(&self, key: &Key, uid: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3 AND uid = $4 AND deleting = 1")
            .bind(&key.kind)
            .bind(&key.namespace)
            .bind(&key.name)
            .bind(uid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The objects in `namespace` whose `metadata.ownerReferences` name `uid`: what goes when
    /// that owner goes, as Kubernetes' garbage collector has it.
    pub async fn dependents(&self, namespace: &str, uid: &str) -> anyhow::Result<Vec<Key>> {
        Ok(self
            .list(None, Some(namespace))
            .await?
            .into_iter()
            .filter(|o| {
                o.object
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|owners| owners.iter().any(|r| r["uid"] == uid))
            })
            .map(|o| o.key)
            .collect())
    }

    /// Replaces the problems of the previous scan with `problems`.
    pub async fn replace_problems(&self, problems: &[Problem]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM problems")
            .execute(&mut *tx)
            .await?;
        for p in problems {
            sqlx::query(
                "INSERT INTO problems (file, line, col, field, reason) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&p.file)
            .bind(i64::try_from(p.line).unwrap_or(0))
            .bind(i64::try_from(p.column).unwrap_or(0))
            .bind(&p.field)
            .bind(&p.reason)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn problems(&self) -> anyhow::Result<Vec<Problem>> {
        let rows = sqlx::query(
            "SELECT file, line, col, field, reason FROM problems ORDER BY file, line, col",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Problem {
                    file: row.try_get(0)?,
                    line: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
                    column: u64::try_from(row.try_get::<i64, _>(2)?).unwrap_or(0),
                    field: row.try_get(3)?,
                    reason: row.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn add_event(
        &self,
        object: &ObjectRef,
        event: &Event,
        now: Timestamp,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO events (time, kind, namespace, name, uid, type, reason, action, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(format!("{now:.9}"))
        .bind(&object.kind)
        .bind(object.namespace.clone().unwrap_or_default())
        .bind(&object.name)
        .bind(&object.uid)
        .bind(match event.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        })
        .bind(&event.reason)
        .bind(&event.action)
        .bind(&event.note)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The most recent `limit` events of an object, oldest first.
    pub async fn events(&self, key: &Key, limit: i64) -> anyhow::Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT time, type, reason, action, note FROM events WHERE kind = $1 AND namespace = $2 AND name = $3 ORDER BY time DESC LIMIT $4",
        )
        .bind(&key.kind)
        .bind(&key.namespace)
        .bind(&key.name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(|row| {
                Ok(StoredEvent {
                    time: row.try_get(0)?,
                    event: Event {
                        type_: if row.try_get::<String, _>(1)? == "Warning" {
                            EventType::Warning
                        } else {
                            EventType::Normal
                        },
                        reason: row.try_get(2)?,
                        action: row.try_get(3)?,
                        note: row.try_get(4)?,
                    },
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }
}

/// What the batch task answered.
async fn answer_of<T>(
    answer: tokio::sync::oneshot::Receiver<Result<T, String>>,
) -> anyhow::Result<T> {
    answer
        .await
        .map_err(|_| anyhow::anyhow!("the state database's batch task has stopped"))?
        .map_err(anyhow::Error::msg)
}

/// Creates per INSERT statement, 10 parameters each. Few enough that SQLite's driver, which
/// looks each parameter up by name among the statement's (quadratic in their number), spends
/// less on binding than the statements saved; and far within both SQLite's (32,766) and
/// PostgreSQL's (65,535) limits on one statement's parameters.
const CREATE_ROWS: usize = 20;

/// Inserts the objects of `rows` (all creates) in one statement.
async fn insert_rows(
    connection: &mut sqlx::AnyConnection,
    rows: &[&Change],
    now: &str,
) -> anyhow::Result<()> {
    let mut sql = String::from(
        "INSERT INTO objects (kind, namespace, name, uid, generation, spec_hash, object_hash, object, status, file, line, deleting, created, updated) VALUES ",
    );
    for i in 0..rows.len() {
        let p = i * 10;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, 1, ${}, ${}, ${}, NULL, ${}, ${}, 0, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9,
            p + 10,
            p + 10
        ));
    }
    // The statement holds placeholders only; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for change in rows {
        let Change::Create {
            key,
            uid,
            object,
            file,
            line,
        } = change
        else {
            continue;
        };
        query = query
            .bind(key.kind.clone())
            .bind(key.namespace.clone())
            .bind(key.name.clone())
            .bind(uid.clone())
            .bind(object.spec_hash())
            .bind(object.object_hash())
            .bind(stamp(object, uid, 1, now).to_string())
            .bind(file.clone())
            .bind(i64::try_from(*line).unwrap_or(0))
            .bind(now.to_owned());
    }
    query.execute(&mut *connection).await?;
    Ok(())
}

async fn get_on(
    connection: &mut sqlx::AnyConnection,
    key: &Key,
) -> anyhow::Result<Option<StoredObject>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        object_columns!(),
        " FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3"
    ))
    .bind(&key.kind)
    .bind(&key.namespace)
    .bind(&key.name)
    .fetch_optional(&mut *connection)
    .await?;
    row.map(|row| stored_object(&row)).transpose()
}

/// Reads a row of the object queries, which select `object_columns!()` in this order.
fn stored_object(row: &sqlx::any::AnyRow) -> anyhow::Result<StoredObject> {
    stored_object_with(row, serde_json::from_str(&row.try_get::<String, _>(5)?)?)
}

/// [`stored_object`], with the row's object already read.
fn stored_object_with(row: &sqlx::any::AnyRow, object: Value) -> anyhow::Result<StoredObject> {
    let status: Option<String> = row.try_get(6)?;
    Ok(StoredObject {
        key: Key {
            kind: row.try_get(0)?,
            namespace: row.try_get(1)?,
            name: row.try_get(2)?,
        },
        uid: row.try_get(3)?,
        generation: row.try_get(4)?,
        object,
        status: status.map(|s| serde_json::from_str(&s)).transpose()?,
        deleting: row.try_get::<i64, _>(7)? != 0,
        file: row.try_get(8)?,
        line: row.try_get(9)?,
    })
}

/// The manifest with the metadata the API server would add.
fn stamp(object: &Body, uid: &str, generation: i64, created: &str) -> Value {
    let mut object = object.value();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("uid".to_owned(), uid.into());
        metadata.insert("generation".to_owned(), generation.into());
        metadata.insert("creationTimestamp".to_owned(), created.into());
    }
    object
}

mod batch;
#[cfg(test)]
mod tests;

/// `text` as a `LIKE` pattern that matches exactly it, with `\` as the escape character.
fn like_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
