//! The store's reads of single objects and its status writes, gathered from concurrent
//! reconciles into a few statements.
//!
//! Every reconcile reads its object and writes its status. One statement each made a cold
//! start of 10,000 objects cost 15,000 round trips to SQLite's worker thread and as many
//! commits: the operator spent more time switching threads than reconciling (40% of its CPU in
//! the kernel's scheduler). One task takes whatever has gathered since its last trip: the reads
//! go in one SELECT per [`ROWS`] keys, the writes in one UPDATE per [`ROWS`] objects, all the
//! writes of a trip in one transaction. A lone request costs what it did before; under load
//! about 64 (the reconciles running at once) share a trip.
//!
//! Requests are taken in the order they came and a trip's reads run before its writes: a
//! reconcile reads its object only after its own previous write returned, so it never reads
//! an older status than it wrote.

use std::collections::{HashMap, HashSet};

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{StoredObject, stored_object};
use crate::standalone::sync::Key;

/// Objects per statement: 3 or 5 parameters each, few enough that SQLite's driver, which looks
/// each parameter up by name among the statement's, spends little on binding (see
/// `CREATE_ROWS`).
const ROWS: usize = 20;

/// Requests one trip takes at most.
const TRIP: usize = 256;

/// What a reconcile asks of the store.
pub(super) enum Request {
    Get {
        key: Key,
        done: oneshot::Sender<Result<Option<StoredObject>, String>>,
    },
    /// Store `text` as the status of `key` if its uid is still `uid`; says whether it changed.
    Status {
        key: Key,
        uid: String,
        text: String,
        done: oneshot::Sender<Result<bool, String>>,
    },
}

/// Starts the task that serves requests on `pool`, until every sender is gone.
pub(super) fn start(pool: AnyPool) -> mpsc::UnboundedSender<Request> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
    tokio::spawn(async move {
        let mut requests = Vec::new();
        while rx.recv_many(&mut requests, TRIP).await > 0 {
            serve(&pool, std::mem::take(&mut requests)).await;
        }
    });
    tx
}

/// One trip: the reads, then the writes, each answered with its own result or the trip's error.
async fn serve(pool: &AnyPool, requests: Vec<Request>) {
    let mut gets = Vec::new();
    let mut writes = Vec::new();
    for request in requests {
        match request {
            Request::Get { key, done } => gets.push((key, done)),
            Request::Status {
                key,
                uid,
                text,
                done,
            } => writes.push((key, uid, text, done)),
        }
    }
    if !gets.is_empty() {
        let keys: Vec<&Key> = gets.iter().map(|(key, _)| key).collect();
        match read(pool, &keys).await {
            Ok(mut found) => {
                // A key asked for twice in one trip gets a copy, the last asker the original.
                let mut askers: HashMap<Key, usize> = HashMap::new();
                for (key, _) in &gets {
                    *askers.entry(key.clone()).or_default() += 1;
                }
                for (key, done) in gets {
                    let left = askers.get_mut(&key).map(|n| {
                        *n -= 1;
                        *n
                    });
                    let object = if left == Some(0) {
                        found.remove(&key)
                    } else {
                        found.get(&key).cloned()
                    };
                    let _ = done.send(Ok(object));
                }
            }
            Err(error) => {
                let message = format!("{error:#}");
                for (_, done) in gets {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }
    if !writes.is_empty() {
        let rows: Vec<(&Key, &str, &str)> = writes
            .iter()
            .map(|(key, uid, text, _)| (key, uid.as_str(), text.as_str()))
            .collect();
        match write(pool, &rows).await {
            Ok(changed) => {
                for (i, (.., done)) in writes.into_iter().enumerate() {
                    let _ = done.send(Ok(changed.contains(&i)));
                }
            }
            Err(error) => {
                let message = format!("{error:#}");
                for (.., done) in writes {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }
}

/// The stored objects among `keys`.
async fn read(pool: &AnyPool, keys: &[&Key]) -> anyhow::Result<HashMap<Key, StoredObject>> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(ROWS) {
        // A join on the primary key: SQLite answers `(kind, namespace, name) IN (VALUES ...)`
        // with a scan of the whole table.
        let sql = format!(
            "SELECT {} FROM (VALUES {}) AS v JOIN objects
             ON objects.kind = v.column1 AND objects.namespace = v.column2 AND objects.name = v.column3",
            object_columns!(),
            placeholders(chunk.len(), 3)
        );
        // The statement holds placeholders only; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for key in chunk {
            query = query
                .bind(key.kind.clone())
                .bind(key.namespace.clone())
                .bind(key.name.clone());
        }
        for row in query.fetch_all(pool).await? {
            let object = stored_object(&row)?;
            found.insert(object.key.clone(), object);
        }
    }
    Ok(found)
}

/// Writes each (key, uid, status) whose object still has that uid and another status, in one
/// transaction; returns the indexes of the rows it changed.
async fn write(pool: &AnyPool, rows: &[(&Key, &str, &str)]) -> anyhow::Result<HashSet<usize>> {
    let mut changed = HashSet::new();
    let mut tx = pool.begin().await?;
    let mut start = 0;
    while start < rows.len() {
        // An object written twice in one trip (which one reconcile at a time per object makes
        // rare) is written twice in order, by two statements: one UPDATE ... FROM would take
        // either of its rows.
        let mut seen = HashSet::new();
        let end = (start..rows.len())
            .take(ROWS)
            .take_while(|&i| seen.insert(rows[i].0))
            .last()
            .map_or(start + 1, |last| last + 1);
        let chunk = &rows[start..end];
        let sql = format!(
            "UPDATE objects SET status = v.column5 FROM (VALUES {}) AS v
             WHERE objects.kind = v.column1 AND objects.namespace = v.column2 AND objects.name = v.column3
             AND objects.uid = v.column4 AND (objects.status IS NULL OR objects.status <> v.column5)
             RETURNING objects.kind, objects.namespace, objects.name",
            placeholders(chunk.len(), 5)
        );
        // The statement holds placeholders only; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (key, uid, text) in chunk {
            query = query
                .bind(key.kind.clone())
                .bind(key.namespace.clone())
                .bind(key.name.clone())
                .bind((*uid).to_owned())
                .bind((*text).to_owned());
        }
        let written: HashSet<Key> = query
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok(Key {
                    kind: row.try_get(0)?,
                    namespace: row.try_get(1)?,
                    name: row.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        changed.extend(
            chunk
                .iter()
                .enumerate()
                .filter(|(_, (key, ..))| written.contains(*key))
                .map(|(i, _)| start + i),
        );
        start = end;
    }
    tx.commit().await?;
    Ok(changed)
}

/// `($1, $2, $3), ($4, $5, $6)` for 2 rows of 3.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let row: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
