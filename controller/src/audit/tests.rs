use sqlx::any::AnyPoolOptions;
use tempfile::TempDir;

use super::*;

/// A log in a fresh SQLite file. The directory must outlive the log.
async fn log_with(key: AuditKey) -> (AuditLog, TempDir) {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("audit.db").display()
    );
    let pool = AnyPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("database");
    let log = AuditLog::open(pool, key).await.expect("opened");
    (log, dir)
}

async fn new_log() -> (AuditLog, TempDir) {
    log_with(test_key()).await
}

fn test_key() -> AuditKey {
    AuditKey::from_bytes(&[42; 32]).expect("key")
}

fn record(kind: &str, name: &str, detail: &str) -> NewRecord {
    NewRecord {
        controller: "proxy".to_owned(),
        object: ObjectRef {
            kind: kind.to_owned(),
            namespace: Some("default".to_owned()),
            name: name.to_owned(),
            uid: "0b7f3a8e-uid".to_owned(),
            generation: 2,
        },
        action: "nginx.reload".to_owned(),
        target: "nginx-1".to_owned(),
        outcome: Outcome::Success,
        detail: detail.to_owned(),
    }
}

async fn append_three(log: &AuditLog) -> Vec<Record> {
    let mut records = Vec::new();
    for (kind, name) in [("Proxy", "web"), ("Alert", "disk"), ("Proxy", "api")] {
        records.push(
            log.append(record(kind, name, &format!("{kind} {name}")))
                .await
                .expect("appended"),
        );
    }
    records
}

async fn execute(log: &AuditLog, sql: &'static str) {
    sqlx::query(sql).execute(&log.pool).await.expect("raw SQL");
}

fn tampered(result: Result<u64, VerifyError>) -> (i64, String) {
    match result {
        Err(VerifyError::Tampered { seq, reason }) => (seq, reason),
        other => panic!("expected tampering, got {other:?}"),
    }
}

#[tokio::test]
async fn appended_records_are_numbered_chained_and_verify() {
    let (log, _dir) = new_log().await;
    let records = append_three(&log).await;
    assert_eq!(log.verify().await.expect("verified"), 3);
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_ne!(records[0].hash, records[1].hash);
    assert_ne!(records[1].hash, records[2].hash);
    assert!(records.iter().all(|r| r.hash.len() == 64));

    let rows = sqlx::query("SELECT prev_hash FROM audit_records ORDER BY seq")
        .fetch_all(&log.pool)
        .await
        .expect("rows");
    let prev: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(prev, ["", &records[0].hash, &records[1].hash]);
    assert_eq!(log.list(&Filter::default()).await.expect("listed"), records);
}

#[tokio::test]
async fn an_empty_log_verifies_as_zero_records() {
    let (log, _dir) = new_log().await;
    assert_eq!(log.verify().await.expect("verified"), 0);
}

#[tokio::test]
async fn reopening_a_log_continues_its_chain() {
    let (log, dir) = new_log().await;
    append_three(&log).await;
    let reopened = AuditLog::open(log.pool.clone(), test_key())
        .await
        .expect("reopened");
    let fourth = reopened
        .append(record("Proxy", "web", "again"))
        .await
        .expect("appended");
    assert_eq!(fourth.seq, 4);
    assert_eq!(reopened.verify().await.expect("verified"), 4);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_while_appending_never_reports_a_false_removal() {
    let (log, _dir) = new_log().await;
    let log = std::sync::Arc::new(log);
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                log.append(record("Proxy", "web", &i.to_string()))
                    .await
                    .expect("appended");
            }
        })
    };
    while !writer.is_finished() {
        log.verify().await.expect("verified");
    }
    writer.await.expect("writer");
    assert_eq!(log.verify().await.expect("verified"), 200);
}

#[tokio::test]
async fn an_edited_record_is_detected_and_named() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    execute(
        &log,
        "UPDATE audit_records SET detail = 'nothing happened' WHERE seq = 2",
    )
    .await;
    let (seq, reason) = tampered(log.verify().await);
    assert_eq!(seq, 2);
    assert!(reason.contains("modified"), "{reason}");
}

#[tokio::test]
async fn a_deleted_middle_record_is_reported_at_the_record_after_the_gap() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    execute(&log, "DELETE FROM audit_records WHERE seq = 2").await;
    let error = log.verify().await.expect_err("gap");
    assert_eq!(
        error.to_string(),
        "audit record 3 failed verification: record 2 is missing"
    );
}

#[tokio::test]
async fn swapped_records_are_detected_at_the_first_swapped_seq() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    // Swap every column but seq between records 2 and 3, going through a free seq.
    execute(&log, "UPDATE audit_records SET seq = 99 WHERE seq = 2").await;
    execute(&log, "UPDATE audit_records SET seq = 2 WHERE seq = 3").await;
    execute(&log, "UPDATE audit_records SET seq = 3 WHERE seq = 99").await;
    let (seq, reason) = tampered(log.verify().await);
    assert_eq!(seq, 2);
    assert!(reason.contains("does not follow record 1"), "{reason}");
}

#[tokio::test]
async fn a_removed_last_record_is_detected_through_the_head() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    execute(&log, "DELETE FROM audit_records WHERE seq = 3").await;
    let (seq, reason) = tampered(log.verify().await);
    assert_eq!(seq, 3);
    assert!(reason.contains("records after 2 were removed"), "{reason}");
}

#[tokio::test]
async fn appending_after_a_removed_tail_keeps_the_removal_visible() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    execute(&log, "DELETE FROM audit_records WHERE seq = 3").await;
    let fourth = log
        .append(record("Proxy", "web", ""))
        .await
        .expect("appended");
    assert_eq!(fourth.seq, 4);
    let (seq, reason) = tampered(log.verify().await);
    assert_eq!((seq, reason.as_str()), (4, "record 3 is missing"));
}

#[tokio::test]
async fn a_removed_head_is_detected() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    execute(&log, "DELETE FROM audit_head").await;
    let (_, reason) = tampered(log.verify().await);
    assert!(reason.contains("head is missing"), "{reason}");
    assert!(log.append(record("Proxy", "web", "")).await.is_err());
}

#[tokio::test]
async fn a_log_checked_with_another_key_fails_at_the_first_record() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    let other = AuditLog::open(
        log.pool.clone(),
        AuditKey::from_bytes(&[7; 32]).expect("key"),
    )
    .await
    .expect("opened");
    let (seq, reason) = tampered(other.verify().await);
    assert_eq!(seq, 1);
    assert!(reason.contains("modified"), "{reason}");
}

#[tokio::test]
async fn verification_reads_past_the_first_page() {
    let (log, _dir) = new_log().await;
    for i in 0..(PAGE + 5) {
        log.append(record("Proxy", "web", &i.to_string()))
            .await
            .expect("appended");
    }
    assert_eq!(log.verify().await.expect("verified"), 1005);
    let listed = log.list(&Filter::default()).await.expect("listed");
    assert_eq!(listed.len(), 1005);
    assert_eq!(listed.last().map(|r| r.seq), Some(1005));
    let limited = Filter {
        limit: Some(1002),
        ..Filter::default()
    };
    assert_eq!(log.list(&limited).await.expect("listed").len(), 1002);
}

#[tokio::test]
async fn list_filters_by_kind_name_time_and_limit() {
    let (log, _dir) = new_log().await;
    let records = append_three(&log).await;
    let seqs = |records: Vec<Record>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
    let list = async |filter: Filter| seqs(log.list(&filter).await.expect("listed"));

    let kind = Filter {
        kind: Some("Proxy".to_owned()),
        ..Filter::default()
    };
    assert_eq!(list(kind.clone()).await, [1, 3]);
    let name = Filter {
        name: Some("api".to_owned()),
        ..Filter::default()
    };
    assert_eq!(list(name).await, [3]);
    let since = Filter {
        since: Some(records[1].time),
        ..Filter::default()
    };
    assert_eq!(list(since).await, [2, 3]);
    let after_all = Filter {
        since: Some(records[2].time + jiff::SignedDuration::from_nanos(1)),
        ..Filter::default()
    };
    assert_eq!(list(after_all).await, Vec::<i64>::new());
    let limited = Filter {
        limit: Some(1),
        ..kind
    };
    assert_eq!(list(limited).await, [1]);
}

#[tokio::test]
async fn filter_values_are_bound_not_spliced_into_the_sql() {
    let (log, _dir) = new_log().await;
    append_three(&log).await;
    let quoted = log
        .append(record("Proxy", "o'brien", ""))
        .await
        .expect("appended");
    let filter = |name: &str| Filter {
        name: Some(name.to_owned()),
        ..Filter::default()
    };
    let found = log.list(&filter("o'brien")).await.expect("listed");
    assert_eq!(found, [quoted]);
    let injection = log.list(&filter("x' OR '1'='1")).await.expect("listed");
    assert!(injection.is_empty());
}

const AWKWARD: &str = "a, \"quoted\" b\nwith a|pipe, a = sign and a \\ backslash\r";

#[tokio::test]
async fn csv_export_parses_back_with_awkward_details_intact() {
    let (log, _dir) = new_log().await;
    let mut first = record("Proxy", "web", AWKWARD);
    first.object.namespace = None;
    log.append(first).await.expect("appended");
    log.append(record("Alert", "disk", "plain"))
        .await
        .expect("appended");
    let mut out = Vec::new();
    log.export(&Filter::default(), ExportFormat::Csv, &mut out)
        .await
        .expect("exported");

    let mut reader = csv::Reader::from_reader(out.as_slice());
    let header = reader.headers().expect("header").clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        [
            "seq",
            "time",
            "controller",
            "kind",
            "namespace",
            "name",
            "uid",
            "generation",
            "action",
            "target",
            "outcome",
            "detail",
            "hash"
        ]
    );
    let rows = reader
        .records()
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][0], "1");
    assert_eq!(&rows[0][4], "");
    assert_eq!(&rows[0][10], "Success");
    assert_eq!(&rows[0][11], AWKWARD);
    assert_eq!(&rows[1][11], "plain");
}

#[tokio::test]
async fn json_export_is_an_array_of_records() {
    let (log, _dir) = new_log().await;
    let records = append_three(&log).await;
    let mut out = Vec::new();
    log.export(&Filter::default(), ExportFormat::Json, &mut out)
        .await
        .expect("exported");
    let parsed: Vec<Record> = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(parsed, records);
    let value: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(value[0]["object"]["kind"], "Proxy");
    assert_eq!(value[0]["outcome"], "Success");

    let mut empty = Vec::new();
    let nothing = Filter {
        kind: Some("Nothing".to_owned()),
        ..Filter::default()
    };
    log.export(&nothing, ExportFormat::Json, &mut empty)
        .await
        .expect("exported");
    assert_eq!(String::from_utf8(empty).expect("UTF-8"), "[]\n");
}

#[tokio::test]
async fn cef_export_writes_one_escaped_line_per_record() {
    let (log, _dir) = new_log().await;
    let mut failed = record("Proxy", "web", AWKWARD);
    failed.outcome = Outcome::Failure;
    failed.action = "docker|restart".to_owned();
    let failed = log.append(failed).await.expect("appended");
    log.append(record("Alert", "disk", "fine"))
        .await
        .expect("appended");
    let mut out = Vec::new();
    log.export(&Filter::default(), ExportFormat::Cef, &mut out)
        .await
        .expect("exported");
    let text = String::from_utf8(out).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let expected = format!(
        "CEF:0|InfraPilot|infrapilot|{}|docker\\|restart|docker\\|restart nginx-1|7|rt={} \
         cs1Label=controller cs1=proxy cs2Label=object cs2=Proxy/default/web \
         cs3Label=uid cs3=0b7f3a8e-uid cs4Label=outcome cs4=Failure \
         msg=a, \"quoted\" b\\nwith a|pipe, a \\= sign and a \\\\ backslash externalId=1",
        crate::VERSION,
        failed.time.as_millisecond()
    );
    assert_eq!(lines[0], expected);
    assert!(lines[1].contains("|3|rt="), "{}", lines[1]);
    assert!(lines[1].ends_with("msg=fine externalId=2"), "{}", lines[1]);
}

#[tokio::test]
async fn appends_are_kept_while_other_writers_use_the_same_database() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = crate::state::sqlite_url(&dir.path().join("state.db"));
    let state = crate::state::Database::open(&url).await.expect("state");
    let log = std::sync::Arc::new(AuditLog::open(state.pool(), test_key()).await.expect("log"));
    let pool = state.pool();
    sqlx::query("CREATE TABLE other (n BIGINT)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO other VALUES (0)")
        .execute(&pool)
        .await
        .unwrap();
    // Status writes of the store go on while side effects are recorded, as in the operator.
    let writer = tokio::spawn(async move {
        for _ in 0..300 {
            sqlx::query("UPDATE other SET n = n + 1")
                .execute(&pool)
                .await
                .unwrap();
        }
    });
    let mut appends = tokio::task::JoinSet::new();
    for i in 0..40 {
        let log = log.clone();
        appends.spawn(async move {
            log.append(record("AlertChannel", &format!("c{i}"), "delivered"))
                .await
        });
    }
    while let Some(appended) = appends.join_next().await {
        appended.unwrap().expect("every append is kept");
    }
    writer.await.unwrap();
    assert_eq!(log.verify().await.unwrap(), 40);
}
