//! What each step of a restore runs in the server: `postgres --version`, `pg_restore
//! --list`, `pg_isready` until the server is up, the restore with `pg_restore` or `psql`, and
//! `psql --csv` for row counts and data checks.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::exec::Input;
use super::output::{ERROR_LINES, last_lines, parse_csv, parse_toc, parse_version, server_error};
use super::{DATABASE, engine_error};
use crate::backup::engine::{
    EngineError, QueryRows, RestoreStats, ServerVersion, TableOfContents, TableRows, Throwaway,
};
use crate::backup::{Dump, DumpFormat};
use crate::docker::Runner;

/// Printed by the official image's entry point once the temporary init server has stopped;
/// only after it is the server that answers the final one.
const INIT_COMPLETE: &str = "PostgreSQL init process complete; ready for start up.";
/// Printed instead when the data directory was already initialised (a restarted container).
const INIT_SKIPPED: &str = "Skipping initialization";
/// A data check's statement runs at most this long (PostgreSQL's own limit, as PGOPTIONS).
const STATEMENT_TIMEOUT: &str = "5min";

/// A directory dump uploaded into the container.
#[derive(Debug)]
pub(super) struct Uploaded {
    pub source: PathBuf,
    /// Where it is in the container.
    pub target: String,
    /// The size of its files.
    pub bytes: u64,
}

/// One throwaway PostgreSQL container.
pub(super) struct Server {
    pub docker: Arc<dyn Runner>,
    pub name: String,
    /// Started from a warm image: its data directory is initialised already.
    warm: bool,
    /// Set by the restore of a plain dump that makes its own database.
    database: OnceLock<String>,
    pub uploaded: tokio::sync::Mutex<Vec<Uploaded>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.name)
    }
}

impl Server {
    pub(super) fn new(docker: Arc<dyn Runner>, name: String, warm: bool) -> Self {
        Self {
            docker,
            name,
            warm,
            database: OnceLock::new(),
            uploaded: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    fn database_name(&self) -> &str {
        self.database.get().map_or(DATABASE, String::as_str)
    }

    /// The container's last log lines.
    async fn log_tail(&self, lines: usize) -> Result<String, EngineError> {
        self.docker
            .log_tail(&self.name, lines)
            .await
            .map_err(|e| engine_error(&format!("reading the log of {}", self.name), e))
    }

    /// `psql --csv` of one statement in `database`, NULL told from the empty string by a
    /// marker no value can guess (psql prints both as an empty field otherwise).
    async fn psql_rows(
        &self,
        database: &str,
        sql: &str,
        statement_timeout: &str,
    ) -> Result<QueryRows, EngineError> {
        let marker = format!("NULL-{}", uuid::Uuid::new_v4().simple());
        let null = format!("null={marker}");
        let options = format!(
            "PGOPTIONS=-c default_transaction_read_only=on -c statement_timeout={statement_timeout}"
        );
        let finished = self
            .run(
                &[
                    "psql", "-X", "--csv", "-P", &null, "-d", database, "-c", sql,
                ],
                &[options],
                None,
                true,
            )
            .await?;
        if finished.exit_code != 0 {
            let message = server_error(&finished.tail);
            return Err(EngineError::Failed(if message.is_empty() {
                format!(
                    "psql failed with exit code {} and printed nothing",
                    finished.exit_code
                )
            } else {
                message
            }));
        }
        parse_csv(&finished.stdout, &marker)
    }

    /// Creates the roles that are missing, without login.
    async fn create_roles(&self, roles: &[String]) -> Result<(), EngineError> {
        let wanted: BTreeSet<&str> = roles.iter().map(String::as_str).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let existing = self
            .psql_rows(DATABASE, "SELECT rolname FROM pg_catalog.pg_roles", "0")
            .await?;
        let existing: BTreeSet<&str> = existing
            .rows
            .iter()
            .filter_map(|row| row.first().and_then(|v| v.as_deref()))
            .collect();
        let statements: Vec<String> = wanted
            .difference(&existing)
            .map(|role| format!("CREATE ROLE {} NOLOGIN", quote_ident(role)))
            .collect();
        if statements.is_empty() {
            return Ok(());
        }
        let mut argv = vec!["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE];
        for statement in &statements {
            argv.push("-c");
            argv.push(statement);
        }
        let finished = self.run(&argv, &[], None, false).await?;
        if finished.exit_code != 0 {
            return Err(EngineError::Failed(format!(
                "creating the dump's roles failed: {}",
                finished.error_text()
            )));
        }
        Ok(())
    }
}

/// The `pg_restore -F` letter of an archive format.
fn archive_format(format: DumpFormat) -> Option<&'static str> {
    match format {
        DumpFormat::Custom => Some("c"),
        DumpFormat::Tar => Some("t"),
        DumpFormat::Directory => Some("d"),
        DumpFormat::Plain => None,
    }
}

#[async_trait]
impl Throwaway for Server {
    fn name(&self) -> &str {
        &self.name
    }

    async fn version(&self) -> Result<ServerVersion, EngineError> {
        let finished = self
            .run(&["postgres", "--version"], &[], None, true)
            .await?;
        let text = String::from_utf8_lossy(&finished.stdout);
        if finished.exit_code != 0 {
            return Err(EngineError::Failed(format!(
                "postgres --version failed: {}",
                finished.error_text()
            )));
        }
        parse_version(&text).ok_or_else(|| {
            EngineError::Failed(format!(
                "postgres --version printed no version: {}",
                text.trim()
            ))
        })
    }

    async fn list_contents(&self, dump: &Dump) -> Result<TableOfContents, EngineError> {
        let Some(format) = archive_format(dump.format) else {
            return Err(EngineError::Failed(
                "a plain dump has no table of contents (pg_restore reads archives only)".to_owned(),
            ));
        };
        let format = format!("-F{format}");
        let finished = if dump.format == DumpFormat::Directory {
            let (target, _) = self.upload(dump).await?;
            self.run(&["pg_restore", "--list", &format, &target], &[], None, true)
                .await?
        } else {
            let input = Input::of(dump);
            self.run(&["pg_restore", "--list", &format], &[], Some(input), true)
                .await?
        };
        if finished.exit_code != 0 {
            return Err(EngineError::Failed(format!(
                "pg_restore --list failed: {}",
                finished.error_text()
            )));
        }
        Ok(parse_toc(&String::from_utf8_lossy(&finished.stdout)))
    }

    async fn ready(&self, timeout: Duration) -> Result<(), EngineError> {
        let deadline = Instant::now() + timeout;
        let mut initialised = self.warm;
        loop {
            let exited = self
                .docker
                .exited(&self.name)
                .await
                .map_err(|e| engine_error(&format!("inspecting {}", self.name), e))?;
            if let Some(exit_code) = exited {
                let log = self.log_tail(ERROR_LINES).await.unwrap_or_default();
                return Err(EngineError::Failed(format!(
                    "the throwaway server {} stopped before it was ready (exit code {exit_code}): {}",
                    self.name,
                    last_lines(&log)
                )));
            }
            if !initialised {
                // The entry point runs a temporary server to initialise, then stops it and
                // starts the real one: a connection before its message may reach the former.
                let log = self.log_tail(10_000).await?;
                initialised = log.contains(INIT_COMPLETE) || log.contains(INIT_SKIPPED);
            }
            if initialised {
                let finished = self
                    .run(&["pg_isready", "-q", "-d", DATABASE], &[], None, false)
                    .await?;
                if finished.exit_code == 0 {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let log = self.log_tail(ERROR_LINES).await.unwrap_or_default();
                return Err(EngineError::Failed(format!(
                    "the throwaway server {} was not ready after {}s: {}",
                    self.name,
                    timeout.as_secs(),
                    last_lines(&log)
                )));
            }
            // Often: each look is a cheap exec, and every run waits here.
            tokio::time::sleep(Duration::from_millis(50).min(deadline - now)).await;
        }
    }

    async fn restore(&self, dump: &Dump, roles: &[String]) -> Result<RestoreStats, EngineError> {
        self.create_roles(roles).await?;
        let input = Input::of(dump);
        let (finished, tool, bytes_read) = match archive_format(dump.format) {
            Some(format) => {
                let format = format!("-F{format}");
                // One transaction: with wal_level=minimal, COPY into a table created in the
                // same transaction writes no WAL (about 25% faster on pgbench data).
                let mut argv = vec![
                    "pg_restore",
                    "--single-transaction",
                    "--exit-on-error",
                    "--no-owner",
                    "--no-privileges",
                    // The source's tablespaces do not exist here.
                    "--no-tablespaces",
                    &format,
                    "-d",
                    DATABASE,
                ];
                if dump.format == DumpFormat::Directory {
                    let (target, bytes) = self.upload(dump).await?;
                    argv.push(&target);
                    let finished = self.run(&argv, &[], None, false).await?;
                    (finished, "pg_restore", bytes)
                } else {
                    let finished = self.run(&argv, &[], Some(input), false).await?;
                    let fed = finished.fed;
                    (finished, "pg_restore", fed)
                }
            }
            None => {
                if let Some(database) = &dump.database {
                    // The dump makes and switches to this database itself.
                    let _ = self.database.set(database.clone());
                }
                let argv = [
                    "psql",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    DATABASE,
                    "-f",
                    "-",
                ];
                let finished = self.run(&argv, &[], Some(input), false).await?;
                let fed = finished.fed;
                (finished, "psql", fed)
            }
        };
        if finished.exit_code != 0 {
            let text = finished.error_text();
            return Err(EngineError::Failed(if text.is_empty() {
                format!("{tool} failed with exit code {}", finished.exit_code)
            } else {
                text
            }));
        }
        let size = self
            .psql_rows(
                self.database_name(),
                "SELECT pg_catalog.pg_database_size(pg_catalog.current_database())",
                "0",
            )
            .await?;
        let database_bytes = size
            .rows
            .first()
            .and_then(|row| row.first())
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                EngineError::Failed(format!(
                    "pg_database_size of {} gave no number",
                    self.database_name()
                ))
            })?;
        Ok(RestoreStats {
            bytes_read,
            database_bytes,
        })
    }

    fn database(&self) -> &str {
        self.database_name()
    }

    async fn tables(&self) -> Result<Vec<TableRows>, EngineError> {
        let result = self
            .psql_rows(self.database_name(), TABLES_SQL, "0")
            .await?;
        let mut tables = Vec::with_capacity(result.rows.len());
        for row in &result.rows {
            let [Some(schema), Some(name), Some(rows)] = row.as_slice() else {
                return Err(EngineError::Failed(format!(
                    "counting rows gave an unexpected row: {row:?}"
                )));
            };
            let rows = rows.parse().map_err(|e| {
                EngineError::Failed(format!("counting rows of {schema}.{name} gave {rows}: {e}"))
            })?;
            tables.push(TableRows {
                schema: schema.clone(),
                name: name.clone(),
                rows,
            });
        }
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        Ok(tables)
    }

    async fn query(&self, sql: &str) -> Result<QueryRows, EngineError> {
        self.psql_rows(self.database_name(), sql, STATEMENT_TIMEOUT)
            .await
    }

    async fn remove(&self) -> Result<(), EngineError> {
        self.docker
            .remove(&self.name)
            .await
            .map_err(|e| engine_error(&format!("removing {}", self.name), e))
    }
}

/// Every user table (ordinary and partitioned; a partitioned table counts its partitions'
/// rows) with its exact row count, in one statement: `query_to_xml` runs a `count(*)` per
/// table.
const TABLES_SQL: &str = "\
SELECT n.nspname, c.relname, \
 (pg_catalog.xpath('/row/n/text()', pg_catalog.query_to_xml(\
 pg_catalog.format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')\
 ))[1]::text::bigint \
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p') \
 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
 AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' \
ORDER BY n.nspname, c.relname";

/// Quotes an identifier: double quotes around it, inner double quotes doubled.
fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("app_owner"), "\"app_owner\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\" NOLOGIN; DROP ROLE y; --"),
            "\"x\"\" NOLOGIN; DROP ROLE y; --\""
        );
    }
}
