//! The PostgreSQL restore engine of backup validation against real Docker: a throwaway
//! container of the PostgreSQL test image restores real pg_dump output of every format, and
//! its answers (listing, row counts, queries) and failures are checked.

use std::time::Duration;

use infrapilot::backup::engine::postgres::Postgres;
use infrapilot::backup::engine::{EngineError, RestoreEngine, ServerSpec, TableRows, Throwaway};
use infrapilot::backup::{Compression, Dump, DumpFormat};
use infrapilot_e2e::docker::{TestDocker, images};
use infrapilot_e2e::dumps::{Fixture, Kind, TABLES, truncated_copy};

/// How long a throwaway server may take to initialise and start.
const READY: Duration = Duration::from_secs(90);

/// A throwaway server of the test image, labelled for the test's Docker scope.
struct Setup {
    docker: TestDocker,
    engine: Postgres,
    spec: ServerSpec,
}

impl Setup {
    async fn new(test: &str, image: &str) -> Self {
        let docker = TestDocker::new(test).await;
        let engine = Postgres::from_engine(
            &infrapilot::docker::Engine::connect().expect("the tests need a Docker engine"),
        );
        let spec = ServerSpec {
            name: docker.unique_name("validation"),
            image: image.to_owned(),
            labels: docker.labels().into_iter().collect(),
        };
        Self {
            docker,
            engine,
            spec,
        }
    }

    async fn start(&self) -> Box<dyn Throwaway> {
        self.engine.start(&self.spec).await.expect("starting")
    }

    async fn ready(&self) -> Box<dyn Throwaway> {
        let server = self.start().await;
        server.ready(READY).await.expect("ready");
        server
    }

    /// The name of the anonymous volume holding the server's PGDATA (images other than
    /// PostgreSQL's have none).
    async fn data_volume(&self) -> Option<String> {
        let inspect = self
            .docker
            .client()
            .inspect_container(&self.spec.name, None)
            .await
            .expect("the container exists");
        inspect
            .mounts
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.destination.as_deref() == Some("/var/lib/postgresql/data"))
            .and_then(|m| m.name)
    }

    /// Removes the server and checks that neither it nor its data volume is left.
    async fn remove_and_check(&self, server: Box<dyn Throwaway>) {
        let volume = self.data_volume().await;
        server.remove().await.expect("removing");
        let client = self.docker.client();
        assert!(
            client
                .inspect_container(&self.spec.name, None)
                .await
                .is_err(),
            "the container is gone"
        );
        if let Some(volume) = volume {
            assert!(
                client.inspect_volume(&volume).await.is_err(),
                "the volume {volume} is gone"
            );
        }
        assert!(
            self.engine
                .list(&self.spec.labels)
                .await
                .expect("listing")
                .is_empty()
        );
        // Removing what is gone is not an error.
        self.engine.remove(&self.spec.name).await.expect("again");
    }
}

fn failed(result: Result<impl std::fmt::Debug, EngineError>) -> String {
    match result {
        Err(EngineError::Failed(message)) => message,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn rows(values: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
    values
        .iter()
        .map(|row| row.iter().map(|v| v.map(str::to_owned)).collect())
        .collect()
}

/// Lists (archives), restores and queries one kind of dump, then removes the server.
async fn restores_and_answers(kind: Kind) {
    let test = format!("backup_engine_{kind:?}");
    let setup = Setup::new(&test, images::POSTGRES).await;
    let fixture = Fixture::make(&test, &[kind]).await.expect("the fixture");
    let dump = fixture.dump(kind);
    let server = setup.start().await;
    assert_eq!(server.name(), setup.spec.name);
    assert!(setup.data_volume().await.is_some(), "PGDATA is a volume");
    assert_eq!(
        setup.engine.list(&setup.spec.labels).await.expect("list"),
        vec![setup.spec.name.clone()]
    );

    if kind.format() != DumpFormat::Plain {
        // The listing needs the tools, not the server.
        let toc = server.list_contents(&dump).await.expect("listing");
        assert_eq!(toc.table_data, TABLES.len(), "{toc:?}");
        assert!(toc.entries > 20, "{toc:?}");
    }
    server.ready(READY).await.expect("ready");
    let version = server.version().await.expect("version");
    assert_eq!(version.major, 15, "{version:?}");
    assert!(version.text.starts_with("15."), "{version:?}");

    let stats = server
        .restore(&dump, &fixture.roles())
        .await
        .expect("restoring");
    if kind.compression() == Compression::None && kind != Kind::Directory && kind != Kind::Tar {
        let size = std::fs::metadata(&dump.path).expect("the dump").len();
        assert_eq!(stats.bytes_read, size, "{stats:?}");
    }
    assert!(stats.bytes_read > 10_000, "{stats:?}");
    assert!(stats.database_bytes > 1_000_000, "{stats:?}");
    let database = match kind {
        Kind::PlainWithCreate => fixture.source.name().to_owned(),
        _ => "validation".to_owned(),
    };
    assert_eq!(server.database(), database);

    let expected: Vec<TableRows> = TABLES
        .iter()
        .map(|(schema, name, rows)| TableRows {
            schema: (*schema).to_owned(),
            name: (*name).to_owned(),
            rows: *rows,
        })
        .collect();
    assert_eq!(server.tables().await.expect("tables"), expected);

    let count = server
        .query("SELECT count(*) AS n FROM public.orders")
        .await
        .expect("a count");
    assert_eq!(count.columns, ["n"]);
    assert_eq!(count.rows, rows(&[&[Some("5000")]]));
    let emails = server
        .query("SELECT id, email FROM public.customers WHERE id IN (4, 5, 10) ORDER BY id")
        .await
        .expect("NULL and empty");
    assert_eq!(
        emails.rows,
        rows(&[
            &[Some("4"), Some("c4@example.com")],
            &[Some("5"), Some("")],
            &[Some("10"), None],
        ])
    );
    let objects = server
        .query(
            "SELECT public.order_count(1), (SELECT last_value FROM public.invoice_number), \
             (SELECT count(*) FROM public.customer_totals), \
             (SELECT tableowner FROM pg_tables WHERE tablename = 'audit_log')",
        )
        .await
        .expect("the function, sequence, view and owner");
    // Archives are restored without owners; a plain script sets them (hence the roles).
    let owner = if kind.format() == DumpFormat::Plain {
        "app_owner"
    } else {
        "postgres"
    };
    assert_eq!(
        objects.rows,
        rows(&[&[Some("5"), Some("42"), Some("1000"), Some(owner)]])
    );

    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn a_custom_dump_is_listed_restored_counted_and_queried() {
    restores_and_answers(Kind::Custom).await;
}

#[tokio::test]
async fn a_tar_dump_is_listed_restored_counted_and_queried() {
    restores_and_answers(Kind::Tar).await;
}

#[tokio::test]
async fn a_directory_dump_is_uploaded_once_listed_restored_counted_and_queried() {
    restores_and_answers(Kind::Directory).await;
}

#[tokio::test]
async fn a_plain_dump_is_restored_with_its_owners_counted_and_queried() {
    restores_and_answers(Kind::Plain).await;
}

#[tokio::test]
async fn a_plain_dump_that_creates_its_database_is_restored_into_that_database() {
    restores_and_answers(Kind::PlainWithCreate).await;
}

#[tokio::test]
async fn a_gzipped_plain_dump_is_restored_counted_and_queried() {
    restores_and_answers(Kind::PlainGz).await;
}

#[tokio::test]
async fn a_zstd_compressed_custom_dump_is_listed_restored_counted_and_queried() {
    restores_and_answers(Kind::CustomZst).await;
}

#[tokio::test]
async fn a_gzipped_tar_dump_is_listed_restored_counted_and_queried() {
    restores_and_answers(Kind::TarGz).await;
}

#[tokio::test]
async fn a_truncated_custom_dump_fails_the_restore_with_pg_restores_reason() {
    let test = "backup_engine_truncated_custom";
    let setup = Setup::new(test, images::POSTGRES).await;
    let fixture = Fixture::make(test, &[Kind::Custom]).await.expect("fixture");
    let path = fixture.dir.join("truncated.custom");
    truncated_copy(&fixture.path(Kind::Custom), &path, 0.6).expect("truncating");
    let dump = Dump {
        path,
        ..fixture.dump(Kind::Custom)
    };
    let server = setup.ready().await;
    let message = failed(server.restore(&dump, &fixture.roles()).await);
    assert!(message.starts_with("pg_restore: error: "), "{message}");
    assert!(
        message.contains("could not read from input file: end of file"),
        "{message}"
    );
    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn a_truncated_gzip_stream_fails_the_restore_with_the_decompression_error() {
    let test = "backup_engine_truncated_gzip";
    let setup = Setup::new(test, images::POSTGRES).await;
    let fixture = Fixture::make(test, &[Kind::TarGz, Kind::PlainGz])
        .await
        .expect("fixture");
    let server = setup.ready().await;
    for kind in [Kind::PlainGz, Kind::TarGz] {
        let path = fixture.dir.join(format!("truncated-{}", kind.file_name()));
        truncated_copy(&fixture.path(kind), &path, 0.5).expect("truncating");
        let dump = Dump {
            path: path.clone(),
            ..fixture.dump(kind)
        };
        let message = failed(server.restore(&dump, &fixture.roles()).await);
        let prefix = format!("reading the dump {} failed after ", path.display());
        assert!(message.starts_with(&prefix), "{kind:?}: {message}");
        assert!(message.contains("bytes: "), "{kind:?}: {message}");
    }
    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn a_failing_statement_in_a_plain_dump_fails_the_restore_with_psqls_error() {
    let test = "backup_engine_failing_statement";
    let setup = Setup::new(test, images::POSTGRES).await;
    let fixture = Fixture::make(test, &[Kind::Plain]).await.expect("fixture");
    let path = fixture.dir.join("failing.sql");
    let mut script = std::fs::read_to_string(fixture.path(Kind::Plain)).expect("the dump");
    let lines = script.lines().count() + 1;
    script.push_str("INSERT INTO public.missing VALUES (1);\n");
    std::fs::write(&path, script).expect("writing");
    let dump = Dump {
        path,
        ..fixture.dump(Kind::Plain)
    };
    let server = setup.ready().await;
    let message = failed(server.restore(&dump, &fixture.roles()).await);
    assert_eq!(
        message,
        format!(
            "psql:<stdin>:{lines}: ERROR:  relation \"public.missing\" does not exist\nLINE 1: INSERT INTO public.missing VALUES (1);\n                    ^"
        )
    );
    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn an_archive_restored_twice_fails_and_a_plain_dump_fails_without_its_roles() {
    let test = "backup_engine_twice_and_roles";
    let setup = Setup::new(test, images::POSTGRES).await;
    let fixture = Fixture::make(test, &[Kind::Custom, Kind::PlainWithCreate])
        .await
        .expect("fixture");
    let server = setup.ready().await;

    // A role name is an identifier, never SQL: quotes and semicolons stay inside the name.
    let odd = "odd\"; DROP ROLE app_owner; --".to_owned();
    server
        .restore(
            &fixture.dump(Kind::Custom),
            &[odd.clone(), "app_owner".to_owned()],
        )
        .await
        .expect("the first restore of the archive");
    let roles = server
        .query("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN ('app_owner', 'odd\"; DROP ROLE app_owner; --') ORDER BY 1")
        .await
        .expect("roles");
    assert_eq!(
        roles.rows,
        rows(&[&[Some("app_owner"), Some("f")], &[Some(&odd), Some("f")]])
    );
    assert_eq!(
        failed(server.restore(&fixture.dump(Kind::Custom), &[]).await),
        "pg_restore: error: could not execute query: ERROR:  schema \"sales\" already exists\n\
         Command was: CREATE SCHEMA sales;"
    );

    // This script makes a database of its own; app_reader is missing on the server.
    let message = failed(
        server
            .restore(&fixture.dump(Kind::PlainWithCreate), &[])
            .await,
    );
    assert!(
        message.starts_with("psql:<stdin>:")
            && message.contains(": ERROR:  role \"app_reader\" does not exist"),
        "{message}"
    );
    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn queries_are_read_only_and_fail_with_the_servers_error() {
    let setup = Setup::new("backup_engine_queries", images::POSTGRES).await;
    let server = setup.ready().await;
    assert_eq!(
        failed(server.query("SELECT * FROM nope").await),
        "ERROR:  relation \"nope\" does not exist"
    );
    assert_eq!(
        failed(server.query("CREATE TABLE t (a integer)").await),
        "ERROR:  cannot execute CREATE TABLE in a read-only transaction"
    );
    // A backslash is SQL here, not a psql meta-command.
    let text = server
        .query(r"SELECT '\! echo hi' AS t")
        .await
        .expect("a literal");
    assert_eq!(text.rows, rows(&[&[Some(r"\! echo hi")]]));
    let settings = server
        .query("SELECT current_setting('statement_timeout'), current_setting('fsync'), current_setting('listen_addresses')")
        .await
        .expect("settings");
    assert_eq!(
        settings.rows,
        rows(&[&[Some("5min"), Some("off"), Some("")]])
    );
    assert!(server.tables().await.expect("tables").is_empty());
    let plain = Dump {
        path: "/nonexistent".into(),
        format: DumpFormat::Plain,
        compression: Compression::None,
        database: None,
    };
    assert!(failed(server.list_contents(&plain).await).contains("plain dump"));
    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn a_server_that_stops_before_it_is_ready_fails_ready_with_its_log() {
    let setup = Setup::new("backup_engine_stopped", images::POSTGRES).await;
    let server = setup.start().await;
    setup
        .docker
        .client()
        .kill_container(&setup.spec.name, None)
        .await
        .expect("killing");
    let message = failed(server.ready(READY).await);
    assert!(
        message.starts_with(&format!(
            "the throwaway server {} stopped before it was ready (exit code 137)",
            setup.spec.name
        )),
        "{message}"
    );
    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn a_server_that_never_initialises_fails_ready_after_the_timeout() {
    // The app image runs, but it is no PostgreSQL.
    let setup = Setup::new("backup_engine_never_ready", images::APP).await;
    let server = setup.start().await;
    let message = failed(server.ready(Duration::from_secs(2)).await);
    assert!(
        message.starts_with(&format!(
            "the throwaway server {} was not ready after 2s",
            setup.spec.name
        )),
        "{message}"
    );
    setup.remove_and_check(server).await;
}

#[tokio::test]
async fn an_image_without_postgres_fails_the_start_with_dockers_reason() {
    let setup = Setup::new("backup_engine_bad_image", images::NGINX).await;
    let message = failed(setup.engine.start(&setup.spec).await.map(|_| ()));
    assert!(
        message.contains("\"postgres\": executable file not found"),
        "{message}"
    );
    assert!(
        setup
            .engine
            .list(&setup.spec.labels)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_missing_image_fails_the_start() {
    let setup = Setup::new("backup_engine_missing_image", "infrapilot-test/none:local").await;
    let message = failed(setup.engine.start(&setup.spec).await.map(|_| ()));
    assert!(message.contains("infrapilot-test/none:local"), "{message}");
    assert!(
        setup
            .engine
            .list(&setup.spec.labels)
            .await
            .expect("list")
            .is_empty()
    );
}
