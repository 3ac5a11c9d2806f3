//! The audit log: one record for every side effect the operator performs (a container changed,
//! nginx reloaded, a grant given, a notification sent...).
//!
//! Records live in SQL (SQLite or PostgreSQL, through [`sqlx::AnyPool`]), are only ever
//! appended, and are numbered from 1. Each record's `hash` is an HMAC-SHA256, under an
//! [`AuditKey`] kept outside the database, of its contents and the previous record's hash. So
//! whoever can write to the database but does not hold the key cannot edit, delete, reorder or
//! truncate records without [`AuditLog::verify`] naming the first bad one.
//!
//! A separate one-row table, the head, holds the last appended number and hash. It is what
//! makes a removed tail visible: without it, a log cut after record 5 would look like a
//! complete log of 5 records.
//!
//! The tables are made and versioned by [`SCHEMA`]'s migrations (see [`crate::state`]); the
//! audit log is the only owner of tables in Kubernetes mode.

mod export;
mod key;
mod sink;

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, anyhow, bail};
use hmac::Mac;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use tokio::sync::Mutex;

use crate::state::{Schema, Step};

pub use self::export::ExportFormat;
pub use self::key::AuditKey;
pub use self::sink::Audit;

/// Whether the side effect took place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "Success",
            Outcome::Failure => "Failure",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Outcome> {
        match text {
            "Success" => Ok(Outcome::Success),
            "Failure" => Ok(Outcome::Failure),
            other => bail!("unknown outcome {other:?}"),
        }
    }
}

/// The object whose reconciliation caused the side effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub kind: String,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    /// The `metadata.generation` that was being reconciled.
    pub generation: i64,
}

/// A record to append: what [`AuditLog::append`] numbers, timestamps and hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewRecord {
    /// The reconciler that acted, such as `proxy`.
    pub controller: String,
    pub object: ObjectRef,
    /// What was done, such as `nginx.reload`.
    pub action: String,
    /// What it was done to, such as a container or database name.
    pub target: String,
    pub outcome: Outcome,
    /// Free text: the error on failure, or what changed.
    pub detail: String,
}

/// A stored audit record.
///
/// In JSON the object stays nested: `{"seq": 1, "time": "...", "controller": "...",
/// "object": {"kind": ..., "namespace": ..., "name": ..., "uid": ..., "generation": ...},
/// "action": ..., "target": ..., "outcome": "Success", "detail": ..., "hash": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// 1 for the first record, then one more for each.
    pub seq: i64,
    pub time: Timestamp,
    pub controller: String,
    pub object: ObjectRef,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
    /// The record's HMAC-SHA256, in lower-case hexadecimal.
    pub hash: String,
}

/// Which records [`AuditLog::list`] and [`AuditLog::export`] return. The default is all of
/// them; each field set narrows the selection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<Timestamp>,
    /// Records about objects of this kind (exact match).
    pub kind: Option<String>,
    /// Records about objects of this name (exact match).
    pub name: Option<String>,
    /// At most this many records, the oldest first.
    pub limit: Option<u32>,
}

/// Why [`AuditLog::verify`] failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log was changed behind our back (or is checked with the wrong key). `seq` is the
    /// first bad record: for a removed record, the one that should follow it.
    #[error("audit record {seq} failed verification: {reason}")]
    Tampered { seq: i64, reason: String },
    #[error("the audit log cannot be read: {0}")]
    Database(#[from] sqlx::Error),
}

/// How many rows are read at a time, so that neither verifying nor exporting a long log holds
/// it all in memory.
const PAGE: i64 = 1000;

/// The audit log's tables, versioned (see [`crate::state`]).
pub const SCHEMA: Schema = Schema {
    owner: "audit",
    migrations: &[Step {
        version: 1,
        description: "audit log",
        sql: include_str!("../../migrations/audit/0001_audit_log.sql"),
    }],
};

const INSERT_RECORD: &str = "INSERT INTO audit_records
    (seq, time, controller, kind, namespace, name, uid, generation, action, target, outcome,
     detail, prev_hash, hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

const UPSERT_HEAD: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2)
    ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";

const SELECT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";

const SELECT_PAGE: &str = "SELECT seq, time, controller, kind, namespace, name, uid, generation,
    action, target, outcome, detail, prev_hash, hash
    FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2";

// One fixed statement rather than SQL assembled per filter: an unset filter binds NULL and
// matches everything. `time` compares as text, which orders correctly because every stored
// time has the same width (see `format_time`).
const SELECT_FILTERED_PAGE: &str = "SELECT seq, time, controller, kind, namespace, name, uid,
    generation, action, target, outcome, detail, prev_hash, hash
    FROM audit_records
    WHERE seq > $1
      AND ($2 IS NULL OR time >= $2)
      AND ($3 IS NULL OR kind = $3)
      AND ($4 IS NULL OR name = $4)
    ORDER BY seq LIMIT $5";

/// An append-only, tamper-evident audit log in a SQL database.
#[derive(Debug)]
pub struct AuditLog {
    pool: AnyPool,
    key: AuditKey,
    /// Appends from this process take turns; another process appending at the same time
    /// makes one of the two fail on the primary key instead of forking the chain.
    append_lock: Mutex<()>,
}

/// How often an append is tried again when another writer got in its way.
const APPEND_ATTEMPTS: u32 = 20;

/// Whether an append failed only because another writer got in its way, so that trying again
/// appends it: on SQLite, a write that follows the head's read while another connection (the
/// store writing a status) committed in between fails with SQLITE_BUSY_SNAPSHOT (517) at once,
/// whatever the busy timeout; on PostgreSQL another process may have appended the same seq
/// (a unique violation) or a serialization failure may occur.
fn contended(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|error| error.as_database_error())
            .and_then(|error| error.code())
            .is_some_and(|code| {
                matches!(code.as_ref(), "5" | "6" | "517" | "261" | "23505" | "40001")
            })
    })
}

impl AuditLog {
    /// Opens the log in `pool`'s database (see [`crate::state::Database`]), its tables created
    /// or brought up to date first. The pool's drivers must be installed
    /// (`sqlx::any::install_default_drivers`).
    pub async fn open(pool: AnyPool, key: AuditKey) -> anyhow::Result<AuditLog> {
        SCHEMA.migrate(&pool).await?;
        Ok(AuditLog {
            pool,
            key,
            append_lock: Mutex::new(()),
        })
    }

    /// Appends a record, timestamped now, and returns it as stored.
    pub async fn append(&self, new: NewRecord) -> anyhow::Result<Record> {
        let _turn = self.append_lock.lock().await;
        let mut attempt: u32 = 0;
        loop {
            match self.try_append(new.clone()).await {
                // Nothing was written: read the head again and append after it.
                Err(error) if attempt < APPEND_ATTEMPTS && contended(&error) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt)))
                        .await;
                }
                result => return result,
            }
        }
    }

    /// One attempt at [`Self::append`], with the append lock held.
    async fn try_append(&self, new: NewRecord) -> anyhow::Result<Record> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot append to the audit log")?;
        let head = sqlx::query(SELECT_HEAD)
            .fetch_optional(&mut *tx)
            .await
            .context("cannot read the audit log head")?;
        // The chain continues from the head rather than from the last record, so that records
        // removed from the end stay visible as a gap after the next append.
        let (last_seq, last_hash) = match head {
            Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
            None => {
                let any = sqlx::query("SELECT seq FROM audit_records LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .context("cannot read the audit log")?;
                if any.is_some() {
                    bail!("the audit log has records but no head: it has been tampered with");
                }
                (0, String::new())
            }
        };
        let time = Timestamp::now();
        let mut stored = StoredRecord {
            seq: last_seq + 1,
            time: format_time(time),
            controller: new.controller,
            kind: new.object.kind,
            namespace: new.object.namespace,
            name: new.object.name,
            uid: new.object.uid,
            generation: new.object.generation,
            action: new.action,
            target: new.target,
            outcome: new.outcome.as_str().to_owned(),
            detail: new.detail,
            prev_hash: last_hash,
            hash: String::new(),
        };
        stored.hash = hex::encode(stored.mac(&self.key).finalize().into_bytes());
        sqlx::query(INSERT_RECORD)
            .bind(stored.seq)
            .bind(&stored.time)
            .bind(&stored.controller)
            .bind(&stored.kind)
            .bind(&stored.namespace)
            .bind(&stored.name)
            .bind(&stored.uid)
            .bind(stored.generation)
            .bind(&stored.action)
            .bind(&stored.target)
            .bind(&stored.outcome)
            .bind(&stored.detail)
            .bind(&stored.prev_hash)
            .bind(&stored.hash)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("cannot append audit record {}", stored.seq))?;
        sqlx::query(UPSERT_HEAD)
            .bind(stored.seq)
            .bind(&stored.hash)
            .execute(&mut *tx)
            .await
            .context("cannot update the audit log head")?;
        tx.commit()
            .await
            .with_context(|| format!("cannot append audit record {}", stored.seq))?;
        Ok(Record {
            seq: stored.seq,
            time,
            controller: stored.controller,
            object: ObjectRef {
                kind: stored.kind,
                namespace: stored.namespace,
                name: stored.name,
                uid: stored.uid,
                generation: stored.generation,
            },
            action: stored.action,
            target: stored.target,
            outcome: new.outcome,
            detail: stored.detail,
            hash: stored.hash,
        })
    }

    /// Checks the whole chain and returns how many records it holds. The error names the
    /// first record that was edited, removed, reordered or cut off, or that does not match
    /// the key.
    pub async fn verify(&self) -> Result<u64, VerifyError> {
        let mut chain = Chain::default();
        self.verify_from(&mut chain).await?;
        // The records appended while the scan ran are checked with appends held off, so that
        // the head read next matches the records read rather than a newer append.
        let _turn = self.append_lock.lock().await;
        self.verify_from(&mut chain).await?;
        let head = sqlx::query(SELECT_HEAD).fetch_optional(&self.pool).await?;
        let head = match head {
            Some(row) => Some((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?)),
            None => None,
        };
        check_head(head, chain.last_seq, &chain.last_hash)?;
        Ok(chain.verified)
    }

    /// Checks the records after `chain`'s last one, a page at a time.
    async fn verify_from(&self, chain: &mut Chain) -> Result<(), VerifyError> {
        loop {
            let rows = sqlx::query(SELECT_PAGE)
                .bind(chain.last_seq)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let record = StoredRecord::from_row(&row)?;
                check_link(&record, chain.last_seq, &chain.last_hash, &self.key)?;
                chain.last_seq = record.seq;
                chain.last_hash = record.hash;
                chain.verified += 1;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// The records that `filter` selects, oldest first.
    pub async fn list(&self, filter: &Filter) -> anyhow::Result<Vec<Record>> {
        let mut records = Vec::new();
        self.for_each_page(filter, |page| {
            records.extend(page);
            Ok(())
        })
        .await?;
        Ok(records)
    }

    /// Writes the records that `filter` selects to `out`, oldest first. See [`ExportFormat`]
    /// for the formats.
    pub async fn export(
        &self,
        filter: &Filter,
        format: ExportFormat,
        out: &mut impl std::io::Write,
    ) -> anyhow::Result<()> {
        let mut exporter = export::Exporter::new(format, out)?;
        self.for_each_page(filter, |page| {
            page.iter().try_for_each(|record| exporter.write(record))
        })
        .await?;
        exporter.finish()
    }

    async fn for_each_page(
        &self,
        filter: &Filter,
        mut each: impl FnMut(Vec<Record>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let since = filter.since.map(format_time);
        let mut remaining = filter.limit.map_or(i64::MAX, i64::from);
        let mut after = 0;
        while remaining > 0 {
            let page_size = remaining.min(PAGE);
            let rows = sqlx::query(SELECT_FILTERED_PAGE)
                .bind(after)
                .bind(&since)
                .bind(&filter.kind)
                .bind(&filter.name)
                .bind(page_size)
                .fetch_all(&self.pool)
                .await
                .context("cannot read the audit log")?;
            let count = rows.len() as i64;
            let page = rows
                .iter()
                .map(|row| StoredRecord::from_row(row)?.into_record())
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(last) = page.last() {
                after = last.seq;
            }
            each(page)?;
            if count < page_size {
                break;
            }
            remaining -= count;
        }
        Ok(())
    }
}

/// RFC 3339 in UTC with all nine fractional digits, so that every stored time has the same
/// width and text order is time order.
fn format_time(time: Timestamp) -> String {
    format!("{time:.9}")
}

/// How far [`AuditLog::verify`] has got: the last good record (0 and "" before the first).
#[derive(Debug, Default)]
struct Chain {
    last_seq: i64,
    last_hash: String,
    verified: u64,
}

/// A record as its columns hold it: what the hash covers, byte for byte.
#[derive(Debug)]
struct StoredRecord {
    seq: i64,
    time: String,
    controller: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    uid: String,
    generation: i64,
    action: String,
    target: String,
    outcome: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

impl StoredRecord {
    fn from_row(row: &AnyRow) -> Result<StoredRecord, sqlx::Error> {
        Ok(StoredRecord {
            seq: row.try_get("seq")?,
            time: row.try_get("time")?,
            controller: row.try_get("controller")?,
            kind: row.try_get("kind")?,
            namespace: row.try_get("namespace")?,
            name: row.try_get("name")?,
            uid: row.try_get("uid")?,
            generation: row.try_get("generation")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            outcome: row.try_get("outcome")?,
            detail: row.try_get("detail")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }

    /// The HMAC input is a JSON array: unlike concatenated fields, it cannot read the same
    /// for two different records.
    fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::json!([
            self.seq,
            self.time,
            self.controller,
            self.kind,
            self.namespace,
            self.name,
            self.uid,
            self.generation,
            self.action,
            self.target,
            self.outcome,
            self.detail,
            self.prev_hash,
        ])
        .to_string()
        .into_bytes()
    }

    fn mac(&self, key: &AuditKey) -> hmac::Hmac<sha2::Sha256> {
        let mut mac = key.mac();
        mac.update(&self.canonical_bytes());
        mac
    }

    fn into_record(self) -> anyhow::Result<Record> {
        let seq = self.seq;
        let bad = |what: &str| anyhow!("audit record {seq} has an invalid {what}");
        Ok(Record {
            seq,
            time: self.time.parse().map_err(|_| bad("time"))?,
            controller: self.controller,
            object: ObjectRef {
                kind: self.kind,
                namespace: self.namespace,
                name: self.name,
                uid: self.uid,
                generation: self.generation,
            },
            action: self.action,
            target: self.target,
            outcome: self.outcome.parse().map_err(|_| bad("outcome"))?,
            detail: self.detail,
            hash: self.hash,
        })
    }
}

/// Checks that `record` follows the record numbered `last_seq` with hash `last_hash` (0 and ""
/// before the first) and that its hash matches its contents.
fn check_link(
    record: &StoredRecord,
    last_seq: i64,
    last_hash: &str,
    key: &AuditKey,
) -> Result<(), VerifyError> {
    let tampered = |reason: String| VerifyError::Tampered {
        seq: record.seq,
        reason,
    };
    let expected = last_seq + 1;
    if record.seq != expected {
        let missing = record.seq - 1;
        return Err(tampered(if missing == expected {
            format!("record {missing} is missing")
        } else {
            format!("records {expected} to {missing} are missing")
        }));
    }
    if record.prev_hash != last_hash {
        return Err(tampered(if last_seq == 0 {
            "the first record does not start the chain (records reordered or replaced)".to_owned()
        } else {
            format!("it does not follow record {last_seq} (records reordered or replaced)")
        }));
    }
    let hash_matches =
        hex::decode(&record.hash).is_ok_and(|hash| record.mac(key).verify_slice(&hash).is_ok());
    if !hash_matches {
        return Err(tampered(
            "its hash does not match its contents: the record was modified (or the key is wrong)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Checks the head against the last record read (`last_seq` 0 when there was none).
fn check_head(
    head: Option<(i64, String)>,
    last_seq: i64,
    last_hash: &str,
) -> Result<(), VerifyError> {
    let removed = |reason: String| {
        Err(VerifyError::Tampered {
            seq: last_seq + 1,
            reason,
        })
    };
    match head {
        None if last_seq == 0 => Ok(()),
        None => removed(format!(
            "the head is missing, so records after {last_seq} may have been removed"
        )),
        Some((head_seq, _)) if head_seq > last_seq => removed(format!(
            "records after {last_seq} were removed (the head names record {head_seq})"
        )),
        Some((head_seq, _)) if head_seq < last_seq => Err(VerifyError::Tampered {
            seq: head_seq + 1,
            reason: format!(
                "the record is past the head (record {head_seq}): it was not appended by the audit log"
            ),
        }),
        Some((_, head_hash)) if head_hash != last_hash => Err(VerifyError::Tampered {
            seq: last_seq,
            reason: "the head's hash does not match the record (the record was replaced)"
                .to_owned(),
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
