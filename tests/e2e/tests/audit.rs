//! The audit log on PostgreSQL (the optional state database), against the real test server.

use infrapilot::audit::{AuditKey, AuditLog, Filter, NewRecord, ObjectRef, Outcome, VerifyError};
use infrapilot_e2e::postgres::TestDatabase;

fn record(n: i64) -> NewRecord {
    NewRecord {
        controller: "alertchannel".to_owned(),
        object: ObjectRef {
            kind: "AlertChannel".to_owned(),
            namespace: Some("default".to_owned()),
            name: format!("ops-{n}"),
            uid: format!("uid-{n}"),
            generation: 1,
        },
        action: "notification.send".to_owned(),
        target: "webhook http://127.0.0.1:9".to_owned(),
        outcome: Outcome::Success,
        detail: format!("HTTP 200 (it's number {n})"),
    }
}

#[tokio::test]
async fn the_audit_chain_works_on_postgresql_and_an_edit_is_named() {
    sqlx::any::install_default_drivers();
    let db = TestDatabase::create("audit").await.unwrap();
    let pool = sqlx::AnyPool::connect(&db.url()).await.unwrap();
    let log = AuditLog::open(pool, AuditKey::from_bytes(&[7u8; 32]).unwrap())
        .await
        .unwrap();
    for n in 1..=3 {
        assert_eq!(log.append(record(n)).await.unwrap().seq, n);
    }
    assert_eq!(log.verify().await.unwrap(), 3);
    let found = log
        .list(&Filter {
            name: Some("ops-2".to_owned()),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].detail, "HTTP 200 (it's number 2)");

    db.execute("UPDATE audit_records SET detail = 'HTTP 500' WHERE seq = 2")
        .await
        .unwrap();
    match log.verify().await {
        Err(VerifyError::Tampered { seq, reason }) => {
            assert_eq!(seq, 2);
            assert!(reason.contains("modified"), "{reason}");
        }
        other => panic!("the edit went unnoticed: {other:?}"),
    }
}
