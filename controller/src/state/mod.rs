//! The state database: SQLite (a file, by default) or PostgreSQL (`--state postgres://...`),
//! through sqlx's `Any` driver, and the versioned schema of each part that keeps tables there.
//!
//! **Owners.** The audit log (`audit_records`, `audit_head`; [`crate::audit::SCHEMA`]) and
//! standalone mode's object store (`objects`, `problems`, `events`;
//! [`crate::standalone::store::SCHEMA`]) each own their tables. Each has its migrations under
//! `controller/migrations/<owner>/` and applies them itself when it is opened, so nothing can
//! use tables that are not there yet, and Kubernetes mode, which opens only the audit log,
//! creates only the audit tables.
//!
//! **Two migrators in one database.** sqlx records the migrations it applied in a table
//! (`_sqlx_migrations` by default) and refuses a database that lists a version it does not
//! know. Sharing that table between the two owners would need disjoint version ranges plus
//! `set_ignore_missing(true)`, which would also let an older release write to a database a
//! newer one has migrated; one migrator for both would bring the store's tables back into
//! Kubernetes mode. So each owner's migrator keeps its own table, `_sqlx_migrations_<owner>`
//! (sqlx 0.9's `Migrator::dangerous_set_table_name`: the danger it warns of is renaming the
//! table of a database already migrated, which these fixed names never do). Each owner numbers
//! its migrations from 1, and an older release refuses a database migrated by a newer one
//! rather than misreading it.
//!
//! **Databases made before versioning.** Earlier releases created the same tables with
//! `CREATE TABLE IF NOT EXISTS` and recorded no version. Each owner's migration 1 is that
//! schema, statement for statement, still with `IF NOT EXISTS`: on such a database it creates
//! nothing, every row stays, and version 1 is recorded. (Kubernetes mode used to create the
//! store's tables too; they are left as they are, unused.)
//!
//! **Adding a migration.** Write `controller/migrations/<owner>/NNNN_what.sql` with the next
//! number, in SQL that runs on both SQLite and PostgreSQL (as all of it does today), and list
//! it in the owner's `SCHEMA` with `include_str!` (a unit test fails when a file and the list
//! disagree). Run `cargo nextest run -p infrapilot state::` and, for PostgreSQL, the e2e
//! `state::` tests. Never edit a migration once released: sqlx compares the checksum of every
//! applied migration and refuses a database whose migrations changed.

use std::borrow::Cow;
use std::path::Path;

use anyhow::Context as _;
use sqlx::AnyPool;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};

/// An open state database.
#[derive(Clone, Debug)]
pub struct Database {
    pool: AnyPool,
}

/// The database URL for a SQLite file, created if missing.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

impl Database {
    /// Opens (and if needed creates) the state database at `url`. Its owners create their
    /// tables when they open ([`Schema::migrate`]).
    pub async fn open(url: &str) -> anyhow::Result<Database> {
        sqlx::any::install_default_drivers();
        if let Some(path) = sqlite_path(url)
            && let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let sqlite = url.starts_with("sqlite:");
        let pool = sqlx::any::AnyPoolOptions::new()
            // SQLite lets one connection write at a time, and another that tries waits in its
            // busy handler, which sleeps in steps of milliseconds: with 64 reconciles writing
            // status at once, four connections spent their time asleep. One connection queues
            // them without sleeping, and the write-ahead log keeps other processes' reads
            // (`infrapilot get`) apart.
            .max_connections(if sqlite { 1 } else { 4 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if sqlite {
                        // In WAL mode, NORMAL syncs at checkpoints rather than at every commit:
                        // a commit cost 1.6 ms with FULL and 34 µs with NORMAL here, and every
                        // audit record, batch of status writes and changing scan is a commit.
                        // A crash of the operator loses nothing; an OS crash or power cut may
                        // lose the last commits, whole transactions only (the audit log's record
                        // and head go together), and never corrupts the file. Statuses are
                        // recomputed.
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("cannot open the state database {}", redact_url(url)))?;
        if sqlite {
            // Readers (`infrapilot get`) must not block on, or be blocked by, the operator.
            use_wal(&pool).await?;
        }
        Ok(Database { pool })
    }

    /// Opens an existing state database, failing clearly when there is none: what the
    /// commands that read the state (`get`, `describe`, `audit`) use.
    pub async fn open_existing(url: &str) -> anyhow::Result<Database> {
        if let Some(path) = sqlite_path(url) {
            anyhow::ensure!(
                Path::new(path).exists(),
                "there is no state at {path}: run `infrapilot run --manifests DIR` in this directory first, or pass --state"
            );
        }
        Self::open(url).await
    }

    pub fn pool(&self) -> AnyPool {
        self.pool.clone()
    }
}

/// Switches a SQLite database to write-ahead logging, which persists in the file. The switch
/// takes an exclusive lock that SQLite's busy timeout does not wait for, so a process opening
/// a new database while another does is refused at once: it tries again for a while, and stops
/// as soon as it finds the database switched.
async fn use_wal(pool: &AnyPool) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 100;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .context("cannot read the state database's journal mode")?;
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(());
        }
        match sqlx::query("PRAGMA journal_mode=WAL").execute(pool).await {
            Ok(_) => return Ok(()),
            Err(error) if attempt < ATTEMPTS && is_busy(&error) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => {
                return Err(error).context("cannot switch the state database to WAL");
            }
        }
    }
}

/// Whether SQLite refused because another connection holds a lock (SQLITE_BUSY, SQLITE_LOCKED).
fn is_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "5" || code == "6")
}

/// The file of a `sqlite://` URL.
fn sqlite_path(url: &str) -> Option<&str> {
    let path = url.strip_prefix("sqlite://")?;
    Some(path.split('?').next().unwrap_or(path))
}

/// The tables of one owner, as a list of migrations.
#[derive(Debug)]
pub struct Schema {
    /// Names the migrations table, `_sqlx_migrations_<owner>`, and the error messages.
    pub owner: &'static str,
    /// In version order, numbered from 1.
    pub migrations: &'static [Step],
}

/// One migration: `controller/migrations/<owner>/<version>_<description>.sql`.
#[derive(Debug)]
pub struct Step {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

impl Schema {
    /// The table where this owner's applied migrations are recorded.
    pub fn table(&self) -> String {
        format!("_sqlx_migrations_{}", self.owner)
    }

    fn migrator(&self) -> Migrator {
        let mut migrator = Migrator::with_migrations(
            self.migrations
                .iter()
                .map(|step| {
                    Migration::new(
                        step.version,
                        Cow::Borrowed(step.description),
                        MigrationType::Simple,
                        sqlx::SqlSafeStr::into_sql_str(step.sql),
                        false,
                    )
                })
                .collect(),
        );
        migrator.dangerous_set_table_name(self.table());
        migrator
    }

    /// Applies the migrations `pool`'s database lacks, each in a transaction with its record.
    pub async fn migrate(&self, pool: &AnyPool) -> anyhow::Result<()> {
        let migrator = self.migrator();
        let result = match migrator.run(pool).await {
            // sqlx takes no lock on SQLite: when two processes (the operator and `infrapilot
            // get`, say) migrate a new database at once, the second one's record of a version
            // collides with the first's. Looking again finds the version applied.
            Err(MigrateError::Execute(_)) => migrator.run(pool).await,
            other => other,
        };
        result.map_err(|error| {
            let owner = self.owner;
            match error {
                MigrateError::VersionMissing(version) => anyhow::anyhow!(
                    "the state database has {owner} migration {version}, which this version of InfraPilot ({}) does not know: a newer release migrated it; run that release or newer",
                    crate::VERSION
                ),
                MigrateError::VersionMismatch(version) => anyhow::anyhow!(
                    "{owner} migration {version} in the state database differs from this release's: it was edited after release"
                ),
                other => anyhow::Error::new(other)
                    .context(format!("cannot migrate the {owner} tables of the state database")),
            }
        })
    }
}

/// A database URL with any password replaced, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
