//! The database engine that restores a dump into a throwaway server and answers the data
//! checks. PostgreSQL on Docker is the only one today ([`postgres::Postgres`]); MySQL is
//! expected next, so nothing outside this module knows which engine runs.

#[cfg(test)]
pub mod fake;
pub mod postgres;

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::Dump;

/// Makes throwaway servers.
#[async_trait]
pub trait RestoreEngine: Send + Sync {
    /// Creates and starts a throwaway server. Returns once the container runs; the server
    /// itself may still be initialising (see [`Throwaway::ready`]).
    async fn start(&self, spec: &ServerSpec) -> Result<Box<dyn Throwaway>, EngineError>;
    /// Removes the throwaway server named `name`, if there is one.
    async fn remove(&self, name: &str) -> Result<(), EngineError>;
    /// The names of every throwaway server carrying all of `labels` (to clean up after a
    /// restart); a label with an empty value matches any value.
    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<String>, EngineError>;
}

/// What a throwaway server is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Deterministic per run, so that a restarted operator finds and removes it.
    pub name: String,
    /// Follows the official `postgres` image's contract.
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

/// One throwaway server. Dropping it does not remove it: call [`Throwaway::remove`].
#[async_trait]
pub trait Throwaway: Send + Sync {
    fn name(&self) -> &str;
    /// The version of the image's server and tools.
    async fn version(&self) -> Result<ServerVersion, EngineError>;
    /// Reads an archive's table of contents (`pg_restore --list`). Needs the container, not a
    /// ready server. Not for plain dumps.
    async fn list_contents(&self, dump: &Dump) -> Result<TableOfContents, EngineError>;
    /// Waits until the server accepts connections, at most `timeout`.
    async fn ready(&self, timeout: std::time::Duration) -> Result<(), EngineError>;
    /// Restores the dump into the database [`Throwaway::database`] names; any failing
    /// statement fails the restore. `roles` are created first (a plain dump's owners and
    /// grantees, which the throwaway server does not have).
    async fn restore(&self, dump: &Dump, roles: &[String]) -> Result<RestoreStats, EngineError>;
    /// The database the dump was restored into (and the data checks run against).
    fn database(&self) -> &str;
    /// Every table of the restored database with its exact row count, by schema and name.
    async fn tables(&self) -> Result<Vec<TableRows>, EngineError>;
    /// Runs one read-only statement; returns its rows (each a list of text values, NULL as
    /// `None`) with the column names.
    async fn query(&self, sql: &str) -> Result<QueryRows, EngineError>;
    /// Removes the server and its data.
    async fn remove(&self) -> Result<(), EngineError>;
}

/// A server version: `15.18` is major 15.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    pub major: u32,
    /// As the server prints it: `15.18`.
    pub text: String,
}

/// An archive's table of contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableOfContents {
    /// The number of entries.
    pub entries: usize,
    /// Entries with table data (`TABLE DATA`).
    pub table_data: usize,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Bytes of dump read (after the outer compression was removed).
    pub bytes_read: u64,
    /// The restored database's size (`pg_database_size`).
    pub database_bytes: u64,
}

/// A table and its exact row count.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    pub rows: u64,
}

/// A query's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// Why the engine failed. The message is precise and says what the server or tool said
/// (never a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Docker (or whatever runs the server) could not be reached or refused.
    #[error("{0}")]
    Unavailable(String),
    /// The server or tool ran and failed: the dump, the query or the image is at fault.
    #[error("{0}")]
    Failed(String),
}
