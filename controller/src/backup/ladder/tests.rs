//! The ladder on real dump files (testdata/) with an in-memory engine.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::backup::engine::QueryRows;
use crate::backup::engine::fake::FakeEngine;

fn testdata(name: &str) -> PathBuf {
    crate::backup::engine::fake::testdata(name)
}

fn job(path: &Path, checks: serde_json::Value) -> Job {
    let spec: BackupValidationPolicySpec = serde_json::from_value(json!({
        "source": {"path": path.display().to_string()},
        "schedule": "30 3 * * *",
        "engine": {"image": "postgres:15"},
        "checks": checks,
    }))
    .unwrap();
    Job {
        spec,
        file: None,
        server: ServerSpec {
            name: "infrapilot-restore-test".into(),
            image: "postgres:15".into(),
            labels: BTreeMap::new(),
        },
        started: Timestamp::now(),
    }
}

fn results(outcome: &Outcome) -> Vec<(String, CheckOutcome)> {
    outcome
        .checks
        .iter()
        .map(|c| (c.name.clone(), c.result))
        .collect()
}

fn check<'a>(outcome: &'a Outcome, name: &str) -> &'a CheckResult {
    outcome.checks.iter().find(|c| c.name == name).unwrap()
}

use CheckOutcome::{Failed, Passed, Skipped};

fn expect(pairs: &[(&str, CheckOutcome)]) -> Vec<(String, CheckOutcome)> {
    pairs.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect()
}

#[tokio::test]
async fn a_good_custom_dump_passes_every_check_and_its_server_is_removed() {
    let engine = Arc::new(FakeEngine::default());
    let job = job(
        &testdata("app.dump"),
        json!({"expectTables": ["customers", "shop.items"], "minRows": {"customers": 3}}),
    );
    let seen = Mutex::new(Vec::new());
    let outcome = climb(&job, Arc::new(engine.clone()), |c| {
        seen.lock().unwrap().push(c.name.clone())
    })
    .await;
    assert_eq!(
        results(&outcome),
        expect(&[
            (FORMAT, Passed),
            (SQL_SYNTAX, Skipped),
            (CHECKSUM, Passed),
            (FRESHNESS, Skipped),
            (RESTORE, Passed),
            (DATA, Passed),
        ])
    );
    let format = &check(&outcome, FORMAT).message;
    assert!(format.starts_with("custom archive 1."), "{format}");
    assert!(format.contains("from PostgreSQL 15.18"), "{format}");
    assert!(format.contains("20 entries, 3 with table data"), "{format}");
    assert!(
        check(&outcome, CHECKSUM)
            .message
            .contains("no .sha256 or .md5 file")
    );
    assert_eq!(outcome.sha256.as_ref().map(String::len), Some(64));
    assert_eq!(seen.lock().unwrap().len(), 6, "progress sees every check");
    let log = engine.log();
    assert_eq!(
        log.first().map(String::as_str),
        Some("start infrapilot-restore-test")
    );
    assert_eq!(
        log.last().map(String::as_str),
        Some("remove infrapilot-restore-test")
    );
    assert!(outcome.failure().is_none());
}

#[tokio::test]
async fn a_missing_file_fails_the_format_check_and_skips_the_rest() {
    let engine = Arc::new(FakeEngine::default());
    let dir = tempfile::tempdir().unwrap();
    let outcome = climb(
        &job(&dir.path().join("*.dump"), json!({})),
        Arc::new(engine.clone()),
        |_| {},
    )
    .await;
    assert_eq!(
        results(&outcome),
        expect(&[
            (FORMAT, Failed),
            (SQL_SYNTAX, Skipped),
            (CHECKSUM, Skipped),
            (FRESHNESS, Skipped),
            (RESTORE, Skipped),
            (DATA, Skipped),
        ])
    );
    assert!(
        check(&outcome, FORMAT)
            .message
            .contains("no backup matches"),
        "{:?}",
        outcome.checks
    );
    assert_eq!(
        check(&outcome, RESTORE).message,
        "not run: the format check failed"
    );
    assert!(
        !engine.log().iter().any(|l| l.starts_with("start")),
        "no server for no file"
    );
}

#[tokio::test]
async fn a_plain_dump_with_a_broken_statement_stops_at_the_syntax_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(testdata("app.sql")).unwrap();
    let broken = text.replacen("CREATE SCHEMA shop;", "CREATE SCHEMAA shop;", 1);
    assert_ne!(text, broken);
    let path = dir.path().join("app.sql");
    std::fs::write(&path, broken).unwrap();
    let engine = Arc::new(FakeEngine::default());
    let outcome = climb(&job(&path, json!({})), Arc::new(engine.clone()), |_| {}).await;
    let syntax = check(&outcome, SQL_SYNTAX);
    assert_eq!(syntax.result, Failed);
    assert!(syntax.message.contains("SCHEMAA"), "{}", syntax.message);
    assert!(
        syntax.message.starts_with("statement "),
        "{}",
        syntax.message
    );
    assert_eq!(
        check(&outcome, RESTORE).message,
        "not run: the sqlSyntax check failed"
    );
    assert!(!engine.log().iter().any(|l| l.starts_with("restore")));
    assert_eq!(
        engine.log().last().map(String::as_str),
        Some("remove infrapilot-restore-test")
    );
}

#[tokio::test]
async fn a_plain_dump_restores_with_its_roles_and_database() {
    let engine = Arc::new(FakeEngine::default());
    let outcome = climb(
        &job(&testdata("app.sql.zst"), json!({})),
        Arc::new(engine.clone()),
        |_| {},
    )
    .await;
    assert!(outcome.failure().is_none(), "{:?}", outcome.checks);
    assert_eq!(check(&outcome, SQL_SYNTAX).result, Passed);
    let restore = engine
        .log()
        .into_iter()
        .find(|l| l.starts_with("restore"))
        .unwrap();
    assert!(restore.contains("fixture_owner"), "{restore}");
    assert!(restore.contains("Some(\"fixture_app\")"), "{restore}");
    assert!(check(&outcome, FORMAT).message.contains("zstd-compressed"));
}

#[tokio::test]
async fn a_wrong_checksum_file_fails_the_checksum_check_and_nothing_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.dump");
    std::fs::copy(testdata("app.dump"), &path).unwrap();
    std::fs::write(
        dir.path().join("app.dump.sha256"),
        format!("{}  app.dump\n", "0".repeat(64)),
    )
    .unwrap();
    let engine = Arc::new(FakeEngine::default());
    let outcome = climb(&job(&path, json!({})), Arc::new(engine.clone()), |_| {}).await;
    let checksum = check(&outcome, CHECKSUM);
    assert_eq!(checksum.result, Failed);
    assert!(
        checksum.message.contains(&"0".repeat(64)),
        "{}",
        checksum.message
    );
    assert_eq!(
        check(&outcome, RESTORE).message,
        "not run: the checksum check failed"
    );
    assert!(!engine.log().iter().any(|l| l.starts_with("restore")));
}

#[tokio::test]
async fn a_dump_newer_than_the_engine_fails_the_restore_with_both_versions() {
    let engine = Arc::new(FakeEngine {
        major: 14,
        ..FakeEngine::default()
    });
    let outcome = climb(
        &job(&testdata("app.dump"), json!({})),
        Arc::new(engine.clone()),
        |_| {},
    )
    .await;
    let format = check(&outcome, FORMAT);
    assert_eq!(format.result, Passed);
    assert!(format.message.contains("not listed"), "{}", format.message);
    let restore = check(&outcome, RESTORE);
    assert_eq!(restore.result, Failed);
    assert!(
        restore.message.contains("PostgreSQL 15.18")
            && restore.message.contains("14.3")
            && restore.message.contains("PostgreSQL 15 or newer"),
        "{}",
        restore.message
    );
}

#[tokio::test]
async fn a_stale_backup_fails_freshness_but_is_still_restored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.dump");
    std::fs::copy(testdata("app.dump"), &path).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let engine = Arc::new(FakeEngine::default());
    let outcome = climb(
        &job(&path, json!({"maxAge": "26h", "minSize": "1M"})),
        Arc::new(engine.clone()),
        |_| {},
    )
    .await;
    let freshness = check(&outcome, FRESHNESS);
    assert_eq!(freshness.result, Failed);
    assert!(
        freshness.message.contains("3d old, more than maxAge 26h"),
        "{}",
        freshness.message
    );
    assert!(
        freshness.message.contains("less than minSize 1M"),
        "{}",
        freshness.message
    );
    assert_eq!(
        check(&outcome, RESTORE).result,
        Passed,
        "freshness does not block"
    );
    assert_eq!(outcome.failure().unwrap().name, FRESHNESS);
}

#[tokio::test]
async fn data_assertions_report_every_problem() {
    let one = |v: Option<&str>| QueryRows {
        columns: vec!["v".into()],
        rows: vec![vec![v.map(str::to_owned)]],
    };
    let engine = Arc::new(FakeEngine {
        queries: BTreeMap::from([
            ("SELECT 1".to_owned(), Ok(one(Some("1")))),
            ("SELECT 2".to_owned(), Ok(one(Some("2")))),
            ("SELECT 'x'".to_owned(), Ok(one(Some("x")))),
            (
                "SELECT nope".to_owned(),
                Err("ERROR:  column \"nope\" does not exist".to_owned()),
            ),
            (
                "SELECT a, b".to_owned(),
                Ok(QueryRows {
                    columns: vec!["a".into(), "b".into()],
                    rows: vec![],
                }),
            ),
        ]),
        ..FakeEngine::default()
    });
    let checks = json!({
        "expectTables": ["invoices", "customers"],
        "minRows": {"shop.items": 5},
        "queries": [
            {"name": "ok", "sql": "SELECT 1", "expect": "1"},
            {"name": "too big", "sql": "SELECT 2", "max": 1.5},
            {"name": "not a number", "sql": "SELECT 'x'", "min": 0},
            {"name": "broken", "sql": "SELECT nope", "min": 0},
            {"name": "shape", "sql": "SELECT a, b", "expect": "1"},
        ],
    });
    let outcome = climb(
        &job(&testdata("app.dump"), checks),
        Arc::new(engine),
        |_| {},
    )
    .await;
    let data = check(&outcome, DATA);
    assert_eq!(data.result, Failed);
    for needle in [
        "expected table invoices is missing from the restored database",
        "table shop.items has 2 rows, fewer than minRows 5",
        "query too big: returned 2, more than max 1.5",
        "query not a number: returned x, which is not a number",
        "query broken: failed: ERROR:  column \"nope\" does not exist",
        "query shape: returned 0 rows of 2 columns; expected one row with one column",
    ] {
        assert!(
            data.message.contains(needle),
            "{needle} in {}",
            data.message
        );
    }
    assert!(!data.message.contains("query ok"), "{}", data.message);
    assert_eq!(outcome.queries.len(), 5);
    assert_eq!(outcome.tables.len(), 2);
}

#[tokio::test]
async fn a_restore_that_takes_too_long_is_stopped_and_its_server_removed() {
    let engine = Arc::new(FakeEngine {
        restore_takes: Duration::from_secs(30),
        ..FakeEngine::default()
    });
    let checks = json!({"restore": {"timeout": "1s"}});
    let started = Instant::now();
    let outcome = climb(
        &job(&testdata("app.tar"), checks),
        Arc::new(engine.clone()),
        |_| {},
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let restore = check(&outcome, RESTORE);
    assert_eq!(restore.result, Failed);
    assert_eq!(
        restore.message,
        "the restore did not finish within 1s; its server was removed"
    );
    assert_eq!(
        engine.log().last().map(String::as_str),
        Some("remove infrapilot-restore-test")
    );
}

#[tokio::test]
async fn a_failing_restore_fails_with_the_tools_message() {
    let engine = Arc::new(FakeEngine {
        restore: Err("pg_restore: error: could not read from input file: end of file".to_owned()),
        ..FakeEngine::default()
    });
    let outcome = climb(
        &job(&testdata("app.dir"), json!({})),
        Arc::new(engine),
        |_| {},
    )
    .await;
    assert_eq!(
        check(&outcome, RESTORE).message,
        "pg_restore: error: could not read from input file: end of file"
    );
    assert_eq!(
        check(&outcome, DATA).message,
        "not run: the restore check failed"
    );
}

#[test]
fn sizes_parse_as_nginx_reads_them() {
    assert_eq!(parse_size("512"), Some(512));
    assert_eq!(parse_size("10k"), Some(10 * 1024));
    assert_eq!(parse_size("1M"), Some(1 << 20));
    assert_eq!(parse_size("2g"), Some(2 << 30));
    assert_eq!(parse_size("1.5M"), None);
    assert_eq!(parse_size("1T"), None);
}
