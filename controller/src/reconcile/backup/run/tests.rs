use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::backup::engine::fake::{FakeEngine, testdata};
use crate::reconcile::tests_support::{MemoryObjects, Recorder, context};
use crate::secrets::SecretMap;

fn policy(path: &std::path::Path) -> BackupValidationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationPolicy",
        "metadata": {"name": "nightly", "namespace": "shop", "uid": "policy-uid", "generation": 1},
        "spec": {"source": {"path": path.display().to_string()}, "schedule": "30 3 * * *",
                 "engine": {"image": "postgres:15"}, "checks": {"expectTables": ["customers"]}},
    }))
    .unwrap()
}

fn run(name: &str, status: Option<serde_json::Value>) -> BackupValidationRun {
    let mut object = json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationRun",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"policyRef": {"name": "nightly"}},
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).unwrap()
}

/// A change of `run` brings its policy back, through the relation the policy declares.
fn assert_policy_hears_of(run: &BackupValidationRun) {
    use crate::reconcile::backup::BackupPolicies;
    let relations = BackupPolicies::relations();
    assert_eq!(relations.len(), 1);
    assert_eq!(relations[0].from, crate::api::Kind::BackupValidationRun);
    let value = serde_json::to_value(run).unwrap();
    assert_eq!(
        (relations[0].map)(&value),
        [("shop".to_owned(), "nightly".to_owned())]
    );
}

struct Setup {
    runs: BackupRuns,
    objects: Arc<MemoryObjects>,
    engine: Arc<FakeEngine>,
    recorder: Arc<Recorder>,
    ctx: Context,
    triggers: UnboundedReceiver<(String, String)>,
    reports: tempfile::TempDir,
}

fn setup(policy: Option<BackupValidationPolicy>) -> Setup {
    let engine = Arc::new(FakeEngine::default());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let reports = tempfile::tempdir().unwrap();
    let objects = Arc::new(MemoryObjects::with(policy));
    let runs = BackupRuns::new(
        objects.port(),
        Arc::new(engine.clone()),
        reports.path().to_owned(),
        2,
    );
    let triggers = runs.triggers().unwrap();
    Setup {
        runs,
        objects,
        engine,
        recorder,
        ctx,
        triggers,
        reports,
    }
}

#[tokio::test]
async fn a_run_climbs_in_the_background_and_ends_with_its_report_and_audit_record() {
    let mut s = setup(Some(policy(&testdata("app.dump"))));
    let pending = run("nightly-1", None);
    let applied = s.runs.reconcile(&pending, &s.ctx).await;
    assert_eq!(applied.status.phase, RunPhase::Running);
    assert!(applied.status.start_time.is_some());
    assert_eq!(
        applied.status.container.as_deref(),
        Some("infrapilot-restore-uid-nightly-1")
    );
    assert_policy_hears_of(&run("nightly-1", None));

    // Every finished check brings the run back; the last trigger follows the end.
    let running = serde_json::to_value(&applied.status).unwrap();
    let mut status = applied.status;
    while status.phase == RunPhase::Running {
        let (namespace, name) = tokio::time::timeout(Duration::from_secs(10), s.triggers.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((namespace.as_str(), name.as_str()), ("shop", "nightly-1"));
        status = s
            .runs
            .reconcile(&run("nightly-1", Some(running.clone())), &s.ctx)
            .await
            .status;
    }
    assert_eq!(status.phase, RunPhase::Succeeded, "{:?}", status.checks);
    let names: Vec<&str> = status.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "format",
            "sqlSyntax",
            "checksum",
            "freshness",
            "restore",
            "data",
            "report"
        ]
    );
    assert_eq!(status.container, None);
    let backup = status.backup.as_ref().unwrap();
    assert_eq!(backup.format.as_deref(), Some("custom"));
    assert_eq!(
        backup
            .server_version
            .as_deref()
            .map(|v| v.starts_with("15.")),
        Some(true)
    );
    let report = status.report.as_ref().unwrap();
    assert!(
        report.json.ends_with("shop/nightly/nightly-1.json"),
        "{}",
        report.json
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.json).unwrap()).unwrap();
    assert_eq!(json["result"], "Succeeded");
    assert_eq!(json["tables"][0]["name"], "customers");
    assert_eq!(json["backup"]["sha256"], backup.sha256.clone().unwrap());
    let html = std::fs::read_to_string(&report.html).unwrap();
    assert!(html.contains("<td>customers</td>"), "{html}");
    let audit = s.recorder.audit.lock().unwrap().clone();
    let record = audit
        .iter()
        .find(|r| r.action == "backup.validate")
        .unwrap();
    assert!(
        record
            .detail
            .starts_with(&format!("sha256 {}", backup.sha256.as_ref().unwrap()))
    );
    assert!(
        s.engine
            .log()
            .contains(&"remove infrapilot-restore-uid-nightly-1".to_owned())
    );

    // The stored final status is final, and frees the policy for its next run.
    let stored = serde_json::to_value(&status).unwrap();
    let again = s
        .runs
        .reconcile(&run("nightly-1", Some(stored)), &s.ctx)
        .await;
    assert_eq!(again.status, status);
    let next = s.runs.reconcile(&run("nightly-2", None), &s.ctx).await;
    assert_eq!(next.status.phase, RunPhase::Running);
    drop(s.reports);
}

#[tokio::test]
async fn runs_of_one_policy_go_one_at_a_time() {
    let s = setup(Some(policy(&testdata("app.dump"))));
    let first = s.runs.reconcile(&run("first", None), &s.ctx).await;
    assert_eq!(first.status.phase, RunPhase::Running);
    let second = s.runs.reconcile(&run("second", None), &s.ctx).await;
    assert_eq!(second.status.phase, RunPhase::Pending);
    let ready = second.status.conditions.get("Ready").unwrap();
    assert_eq!(ready.reason, "Waiting");
    assert_eq!(second.requeue, Requeue::After(WAIT));
}

#[tokio::test]
async fn at_most_max_restores_runs_climb_at_once_across_policies() {
    let s = setup(Some(policy(&testdata("app.dump"))));
    let of = |name: &str, policy: &str| {
        let mut run = run(name, None);
        run.spec.policy_ref.name = policy.to_owned();
        run
    };
    for name in ["a", "b", "c"] {
        let mut other = policy(&testdata("app.dump"));
        other.metadata.name = Some(name.to_owned());
        s.objects.put(&other);
    }
    for (name, policy) in [("a-1", "a"), ("b-1", "b")] {
        let applied = s.runs.reconcile(&of(name, policy), &s.ctx).await;
        assert_eq!(applied.status.phase, RunPhase::Running, "{name}");
    }
    // Two climb (setup allows two): the third waits, whatever its policy.
    let third = of("c-1", "c");
    let waiting = s.runs.reconcile(&third, &s.ctx).await;
    assert_eq!(waiting.status.phase, RunPhase::Pending);
    let ready = waiting.status.conditions.get("Ready").unwrap();
    assert_eq!(ready.reason, "Waiting");
    assert!(
        ready.message.contains("--max-restores"),
        "{}",
        ready.message
    );
    assert_eq!(waiting.requeue, Requeue::After(WAIT));
    // It starts once a climb has ended.
    for _ in 0..500 {
        let applied = s.runs.reconcile(&third, &s.ctx).await;
        if applied.status.phase == RunPhase::Running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the third run never started");
}

#[tokio::test]
async fn a_run_left_running_by_another_process_ends_failed_and_its_server_goes() {
    let s = setup(Some(policy(&testdata("app.dump"))));
    let left = run(
        "nightly-1",
        Some(
            json!({"phase": "Running", "container": "infrapilot-restore-uid-nightly-1", "startTime": "2027-01-15T07:00:00Z"}),
        ),
    );
    let applied = s.runs.reconcile(&left, &s.ctx).await;
    assert_eq!(applied.status.phase, RunPhase::Failed);
    let ready = applied.status.conditions.get("Ready").unwrap();
    assert_eq!(ready.reason, "Interrupted");
    assert!(
        ready
            .message
            .starts_with("interrupted: the operator stopped"),
        "{}",
        ready.message
    );
    assert_eq!(s.engine.log(), ["remove infrapilot-restore-uid-nightly-1"]);
    assert!(applied.status.completion_time.is_some());
    assert_policy_hears_of(&run("nightly-1", None));
}

#[tokio::test]
async fn a_run_waits_for_a_missing_policy() {
    let s = setup(None);
    let applied = s.runs.reconcile(&run("orphan", None), &s.ctx).await;
    assert_eq!(applied.status.phase, RunPhase::Pending);
    let ready = applied.status.conditions.get("Ready").unwrap();
    assert_eq!(ready.reason, "PolicyNotFound");
    assert!(
        ready.message.starts_with("spec.policyRef:"),
        "{}",
        ready.message
    );
    assert!(s.engine.log().is_empty());
}
