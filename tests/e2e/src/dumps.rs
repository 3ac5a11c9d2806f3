//! Real pg_dump output to restore: a small seeded database dumped by the host's pg_dump in
//! every format InfraPilot validates, with the row counts a correct restore must show.
//!
//! ```no_run
//! # async fn example() -> infrapilot_e2e::Result<()> {
//! use infrapilot_e2e::dumps::{Fixture, Kind};
//! let fixture = Fixture::make("my-test", Kind::ALL).await?;
//! let dump = fixture.dump(Kind::Custom); // an `infrapilot::backup::Dump`
//! assert_eq!(fixture.rows("public", "orders"), Some(5000));
//! # Ok(()) }
//! ```
//!
//! The source database holds:
//! - `public.customers` (1000 rows; `email` is NULL for every tenth id and `''` for id 5),
//!   `public.orders` (5000 rows, a foreign key to customers and an index on it),
//!   `public.archived_orders` (empty), `sales.regions` (12 rows, a non-public schema) and
//!   `public.audit_log` (50 rows, owned by `app_owner`, SELECT granted to `app_reader`);
//! - a view `public.customer_totals`, a sequence `public.invoice_number` (set to 42), and a
//!   PL/pgSQL function `public.order_count(integer)` whose `$$` body contains semicolons.
//!
//! The roles [`ROLES`] are created on the test server when missing and never dropped (roles
//! belong to the whole server; every fixture shares them).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use infrapilot::backup::{Compression, Dump, DumpFormat};

use crate::Result;
use crate::postgres::{TestDatabase, tool};

/// The roles the dumps refer to (owner and grantee); a plain dump restores only where they
/// exist.
pub const ROLES: &[&str] = &["app_owner", "app_reader"];

/// The tables of the source database with their row counts, by schema and name.
pub const TABLES: &[(&str, &str, u64)] = &[
    ("public", "archived_orders", 0),
    ("public", "audit_log", 50),
    ("public", "customers", 1000),
    ("public", "orders", 5000),
    ("sales", "regions", 12),
];

/// The schema and data, one script.
const SEED: &str = r#"
CREATE SCHEMA sales;
CREATE TABLE sales.regions (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO sales.regions SELECT i, 'region ' || i FROM generate_series(1, 12) AS i;

CREATE TABLE public.customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text,
    region_id integer REFERENCES sales.regions (id)
);
INSERT INTO public.customers
SELECT i, 'customer ' || i,
       CASE WHEN i % 10 = 0 THEN NULL WHEN i = 5 THEN '' ELSE 'c' || i || '@example.com' END,
       1 + i % 12
FROM generate_series(1, 1000) AS i;

CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES public.customers (id),
    amount numeric(10, 2) NOT NULL,
    note text
);
INSERT INTO public.orders (customer_id, amount, note)
SELECT 1 + i % 1000, (i % 97) * 1.25, CASE WHEN i % 3 = 0 THEN 'note; with "quotes"' END
FROM generate_series(1, 5000) AS i;
CREATE INDEX orders_customer_id ON public.orders (customer_id);

CREATE TABLE public.archived_orders (LIKE public.orders);

CREATE TABLE public.audit_log (id integer PRIMARY KEY, event text NOT NULL);
INSERT INTO public.audit_log SELECT i, 'event ' || i FROM generate_series(1, 50) AS i;
ALTER TABLE public.audit_log OWNER TO app_owner;
GRANT SELECT ON public.audit_log TO app_reader;

CREATE VIEW public.customer_totals AS
SELECT c.id, c.name, count(o.id) AS orders, coalesce(sum(o.amount), 0) AS total
FROM public.customers c LEFT JOIN public.orders o ON o.customer_id = c.id
GROUP BY c.id, c.name;

CREATE SEQUENCE public.invoice_number;
SELECT setval('public.invoice_number', 42);

CREATE FUNCTION public.order_count(customer integer) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM public.orders WHERE customer_id = customer;
    RETURN n;
END;
$$;
"#;

/// A dump file (or directory) of the fixture: a pg_dump format and an outer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `pg_dump -Fc`.
    Custom,
    /// `pg_dump -Ft`.
    Tar,
    /// `pg_dump -Fd` (its table files are gzip-compressed by pg_dump itself).
    Directory,
    /// `pg_dump -Fp`.
    Plain,
    /// `pg_dump -Fp -C`: the script creates the source database and `\connect`s to it.
    PlainWithCreate,
    /// `pg_dump -Fp -Z6`: a gzip-compressed SQL script.
    PlainGz,
    /// `pg_dump -Fc` compressed again with the zstd CLI.
    CustomZst,
    /// `pg_dump -Ft` compressed again with gzip.
    TarGz,
}

impl Kind {
    pub const ALL: &[Kind] = &[
        Kind::Custom,
        Kind::Tar,
        Kind::Directory,
        Kind::Plain,
        Kind::PlainWithCreate,
        Kind::PlainGz,
        Kind::CustomZst,
        Kind::TarGz,
    ];

    pub fn format(self) -> DumpFormat {
        match self {
            Kind::Custom | Kind::CustomZst => DumpFormat::Custom,
            Kind::Tar | Kind::TarGz => DumpFormat::Tar,
            Kind::Directory => DumpFormat::Directory,
            Kind::Plain | Kind::PlainWithCreate | Kind::PlainGz => DumpFormat::Plain,
        }
    }

    pub fn compression(self) -> Compression {
        match self {
            Kind::PlainGz | Kind::TarGz => Compression::Gzip,
            Kind::CustomZst => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The file name in the fixture's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Custom => "dump.custom",
            Kind::Tar => "dump.tar",
            Kind::Directory => "dump.dir",
            Kind::Plain => "dump.sql",
            Kind::PlainWithCreate => "dump-create.sql",
            Kind::PlainGz => "dump.sql.gz",
            Kind::CustomZst => "dump.custom.zst",
            Kind::TarGz => "dump.tar.gz",
        }
    }
}

/// A seeded source database and its dumps in a directory of the test's own.
#[derive(Debug)]
pub struct Fixture {
    /// The source database (dropped with the fixture).
    pub source: TestDatabase,
    /// Where the dumps are.
    pub dir: PathBuf,
    kinds: Vec<Kind>,
}

impl Fixture {
    /// Seeds a fresh database and writes a dump of each of `kinds` with the host's pg_dump.
    pub async fn make(test: &str, kinds: &[Kind]) -> Result<Self> {
        let source = TestDatabase::create(test).await?;
        create_roles(&source).await?;
        source.execute(SEED).await.context("seeding the source")?;
        let dir = crate::env::test_dir(test);
        for &kind in kinds {
            write_dump(&source, &dir, kind)
                .await
                .with_context(|| format!("writing the {kind:?} dump"))?;
        }
        Ok(Self {
            source,
            dir,
            kinds: kinds.to_vec(),
        })
    }

    /// The dump's path (a directory for [`Kind::Directory`]).
    pub fn path(&self, kind: Kind) -> PathBuf {
        assert!(
            self.kinds.contains(&kind),
            "the fixture has no {kind:?} dump"
        );
        self.dir.join(kind.file_name())
    }

    /// The dump as the backup checks take it.
    pub fn dump(&self, kind: Kind) -> Dump {
        Dump {
            path: self.path(kind),
            format: kind.format(),
            compression: kind.compression(),
            database: (kind == Kind::PlainWithCreate).then(|| self.source.name().to_owned()),
        }
    }

    /// The roles a restore must create first.
    pub fn roles(&self) -> Vec<String> {
        ROLES.iter().map(|r| (*r).to_owned()).collect()
    }

    /// The expected row count of `schema.name`.
    pub fn rows(&self, schema: &str, name: &str) -> Option<u64> {
        TABLES
            .iter()
            .find(|(s, n, _)| *s == schema && *n == name)
            .map(|(_, _, rows)| *rows)
    }
}

/// Creates [`ROLES`] unless they exist; safe when several tests do it at once.
async fn create_roles(db: &TestDatabase) -> Result<()> {
    for role in ROLES {
        db.execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} NOLOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ))
        .await?;
    }
    Ok(())
}

async fn write_dump(source: &TestDatabase, dir: &Path, kind: Kind) -> Result<()> {
    let target = dir.join(kind.file_name());
    match kind {
        Kind::Custom => pg_dump(source, &["-Fc"], &target).await,
        Kind::Tar => pg_dump(source, &["-Ft"], &target).await,
        Kind::Directory => pg_dump(source, &["-Fd"], &target).await,
        Kind::Plain => pg_dump(source, &["-Fp"], &target).await,
        Kind::PlainWithCreate => pg_dump(source, &["-Fp", "-C"], &target).await,
        Kind::PlainGz => pg_dump(source, &["-Fp", "-Z6"], &target).await,
        Kind::CustomZst => {
            let plain = dir.join("dump.custom.for-zstd");
            pg_dump(source, &["-Fc"], &plain).await?;
            let zstd = "/usr/bin/zstd";
            run(tokio::process::Command::new(zstd)
                .args(["-q", "-f", "-o"])
                .arg(&target)
                .arg(&plain))
            .await?;
            std::fs::remove_file(plain)?;
            Ok(())
        }
        Kind::TarGz => {
            let tar = dir.join("dump.tar.for-gzip");
            pg_dump(source, &["-Ft"], &tar).await?;
            run(tokio::process::Command::new("gzip")
                .args(["-f", "-6"])
                .arg(&tar))
            .await?;
            std::fs::rename(dir.join("dump.tar.for-gzip.gz"), target)?;
            Ok(())
        }
    }
}

/// Runs the host's pg_dump of `source` with `args`, writing `target`.
pub async fn pg_dump(source: &TestDatabase, args: &[&str], target: &Path) -> Result<()> {
    run(tokio::process::Command::new(tool("pg_dump"))
        .args(args)
        .arg("-f")
        .arg(target)
        .arg("-d")
        .arg(source.url()))
    .await
}

/// Runs `command`; errors name the program only (pg_dump's URL holds a password).
async fn run(command: &mut tokio::process::Command) -> Result<()> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Copies the first `fraction` of `source` to `target`: a dump cut short, as by a full disk.
pub fn truncated_copy(source: &Path, target: &Path, fraction: f64) -> Result<()> {
    let bytes = std::fs::read(source)?;
    let keep = (bytes.len() as f64 * fraction) as usize;
    std::fs::write(target, &bytes[..keep])?;
    Ok(())
}
