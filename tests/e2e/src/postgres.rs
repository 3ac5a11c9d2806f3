//! The throwaway PostgreSQL 15 server of the run: a fresh database per test.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions};

use crate::Result;

/// The server's superuser URL (`INFRAPILOT_TEST_PG_URL`).
pub fn server_url() -> String {
    crate::env::required("INFRAPILOT_TEST_PG_URL", "the test PostgreSQL server")
}

/// A PostgreSQL 15 client tool (`pg_dump`, `pg_restore`, `psql`) of the host's server version.
pub fn tool(name: &str) -> PathBuf {
    crate::env::required_path("INFRAPILOT_TEST_PG_BIN", "the PostgreSQL 15 client tools").join(name)
}

/// Quotes an identifier for SQL: wrapped in double quotes, inner quotes doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A database created for one test and dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    options: PgConnectOptions,
    pool: PgPool,
}

impl TestDatabase {
    pub async fn create(test: &str) -> Result<Self> {
        let admin: PgConnectOptions = server_url().parse().context("INFRAPILOT_TEST_PG_URL")?;
        let name = crate::names::unique(test);
        let mut connection = admin.connect().await.with_context(
            || "connecting to the test PostgreSQL server (INFRAPILOT_TEST_PG_URL): is it running?",
        )?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(&name)
        )))
        .execute(&mut connection)
        .await?;
        let options = admin.database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        Ok(Self {
            name,
            options,
            pool,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A URL for this database, for tools and the operator.
    pub fn url(&self) -> String {
        let server = server_url();
        let (base, _) = server.rsplit_once('/').expect("a URL with a database path");
        format!("{base}/{}", self.name)
    }

    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// Runs one or more `;`-separated statements. The SQL is the test's own text, so it is
    /// asserted safe rather than bound.
    pub async fn execute(&self, sql: &str) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .with_context(|| format!("running {sql}"))?;
        Ok(())
    }

    /// The first column of the first row of `sql`.
    pub async fn scalar<T>(&self, sql: &str) -> Result<T>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("running {sql}"))
    }
}

impl Drop for TestDatabase {
    /// Drops the database on a thread of its own with its own connection: the test's runtime
    /// may be unwinding, and it is blocked while this waits, so the pool (whose connections
    /// that runtime drives) must not be touched here. `WITH (FORCE)` ends its connections.
    fn drop(&mut self) {
        let name = self.name.clone();
        let Ok(admin) = server_url().parse::<PgConnectOptions>() else {
            return;
        };
        let result = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connection = admin.connect().await?;
                let drop = format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&name)
                );
                sqlx::raw_sql(AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await?;
                Ok(())
            })
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!(
                "warning: could not drop test database {}: {result:?}",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
    }
}
