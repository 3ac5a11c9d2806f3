//! Backup validation end to end in standalone mode: real pg_dump output, the operator binary,
//! real throwaway PostgreSQL containers, a real webhook receiver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infrapilot_e2e::docker::images;
use infrapilot_e2e::dumps::{Fixture, Kind};
use infrapilot_e2e::operator::{Operator, cli};
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::webhook::WebhookServer;
use serde_json::Value;

/// How long a run may take here: a throwaway server starts in a few seconds, and several
/// tests restore at once on two cores.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// A policy manifest validating `path` with the test image; `checks` and `extra` are YAML
/// lines (indented for `checks:` and `spec:`).
pub(crate) fn policy(name: &str, path: &Path, checks: &str, extra: &str) -> String {
    format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: BackupValidationPolicy\nmetadata:\n  name: {name}\n\
         spec:\n  source:\n    path: {path}\n  engine:\n    image: {image}\n  schedule: \"0 0 1 1 *\"\n\
         {extra}  checks:\n    restore:\n      timeout: 2m\n{checks}",
        path = path.display(),
        image = images::POSTGRES,
    )
}

pub(crate) const RUN_ON_CREATE: &str = "  runOnCreate: true\n";

pub(crate) const DATA_CHECKS: &str = "    expectTables: [customers, orders, sales.regions]\n    minRows:\n      orders: 5000\n    queries:\n      - name: customers\n        sql: SELECT count(*) FROM customers\n        expect: \"1000\"\n      - name: regions\n        sql: SELECT count(*) FROM sales.regions\n        min: 12\n        max: 12\n";

fn start(dir: &Path) -> Operator {
    std::fs::create_dir_all(dir.join("manifests")).expect("the manifest directory is made");
    Operator::start(dir, &["run", "--manifests", "manifests", "--resync", "1m"])
        .expect("the operator starts")
}

/// Waits until the policy's last completed run is known and returns that run.
pub(crate) async fn completed_run(operator: &Operator, policy: &str) -> Value {
    let name = eventually(
        &format!("a finished run of {policy}"),
        RUN_TIMEOUT,
        || async {
            let object = operator
                .get("bvp", policy)
                .await
                .map_err(|e| e.to_string())?;
            object["status"]["lastCompletedRun"]["name"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{:#}\nlog:\n{}", object["status"], tail(operator)))
        },
    )
    .await;
    operator
        .get("bvr", &name)
        .await
        .expect("the finished run can be read")
}

fn tail(operator: &Operator) -> String {
    let log = operator.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub(crate) fn check<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["status"]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {:#}", run["status"]))
}

/// The names of the operator's throwaway servers that still exist for `uid`.
pub(crate) async fn leftover_servers(uid: &str) -> Vec<String> {
    let output = tokio::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=infrapilot.io/backup-run={uid}"))
        .output()
        .await
        .expect("docker ps runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether a container of this exact name exists.
async fn exists(container: &str) -> bool {
    let output = tokio::process::Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("name=^{container}$"))
        .output()
        .await
        .expect("docker ps runs");
    !output.stdout.is_empty()
}

pub(crate) async fn audit(dir: &Path) -> Vec<Value> {
    let export = cli(dir, &["audit", "export", "--format", "json"])
        .await
        .expect("the audit log exports");
    serde_json::from_slice(&export.stdout).expect("the export is a JSON array")
}

#[tokio::test]
async fn every_dump_format_is_restored_and_its_data_checked() {
    let fixture = Fixture::make("backup-formats", Kind::ALL).await.unwrap();
    let dir = infrapilot_e2e::env::test_dir("backup-formats-operator");
    let operator = start(&dir);
    for (i, kind) in Kind::ALL.iter().enumerate() {
        std::fs::write(
            operator.manifests().join(format!("p{i}.yaml")),
            policy(
                &format!("p{i}"),
                &fixture.path(*kind),
                DATA_CHECKS,
                RUN_ON_CREATE,
            ),
        )
        .unwrap();
    }
    let records_dir = dir.clone();
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let run = completed_run(&operator, &format!("p{i}")).await;
        let status = &run["status"];
        assert_eq!(status["phase"], "Succeeded", "{kind:?}: {status:#}");
        assert_eq!(check(&run, "format")["result"], "Passed");
        assert_eq!(check(&run, "restore")["result"], "Passed");
        let syntax = check(&run, "sqlSyntax");
        let plain = kind.format() == infrapilot::backup::DumpFormat::Plain;
        assert_eq!(
            syntax["result"],
            if plain { "Passed" } else { "Skipped" },
            "{kind:?}: {syntax}"
        );
        assert_eq!(status["backup"]["sha256"].as_str().map(str::len), Some(64));
        // The report holds the tables with their exact row counts.
        let report: Value = serde_json::from_slice(
            &std::fs::read(status["report"]["json"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let tables = report["tables"].as_array().unwrap();
        for (schema, name) in [
            ("public", "customers"),
            ("public", "orders"),
            ("sales", "regions"),
        ] {
            let table = tables
                .iter()
                .find(|t| t["schema"] == schema && t["name"] == name)
                .unwrap_or_else(|| panic!("{kind:?}: no {schema}.{name} in {tables:?}"));
            assert_eq!(
                table["rows"].as_u64(),
                fixture.rows(schema, name),
                "{kind:?} {schema}.{name}"
            );
        }
        let html = std::fs::read_to_string(status["report"]["html"].as_str().unwrap()).unwrap();
        assert!(html.contains("<td>regions</td><td>12</td>"), "{kind:?}");
        let uid = run["metadata"]["uid"].as_str().unwrap();
        assert!(
            leftover_servers(uid).await.is_empty(),
            "{kind:?}: the server was not removed"
        );
        let policy = operator.get("bvp", &format!("p{i}")).await.unwrap();
        assert!(
            infrapilot_e2e::wait::has_condition(&policy, "Ready", "True"),
            "{policy:#}"
        );
    }
    // Every run is in the audit log with its backup's sha256.
    let records = audit(&records_dir).await;
    let validated: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "backup.validate")
        .collect();
    assert_eq!(validated.len(), Kind::ALL.len(), "{validated:#?}");
    for record in validated {
        assert_eq!(record["outcome"], "Success", "{record:#}");
        let detail = record["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("sha256 ") && detail.len() > 71,
            "{record:#}"
        );
    }
    operator.stop().await.unwrap();
}

/// A broken copy of a dump: what to do to it, and the check and message it must fail with.
struct Broken {
    name: &'static str,
    make: fn(&Fixture, &Path) -> PathBuf,
    checks: &'static str,
    check: &'static str,
    message: &'static [&'static str],
}

fn copy(fixture: &Fixture, kind: Kind, dir: &Path, name: &str) -> PathBuf {
    let target = dir.join(name);
    std::fs::copy(fixture.path(kind), &target).expect("the dump is copied");
    target
}

fn edit_plain(fixture: &Fixture, dir: &Path, name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(fixture.path(Kind::Plain)).expect("the plain dump reads");
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    let target = dir.join(name);
    std::fs::write(&target, edited).expect("the edited dump is written");
    target
}

const BROKEN: &[Broken] = &[
    Broken {
        name: "missing",
        make: |_, dir| dir.join("nothing-here-*.dump"),
        checks: "",
        check: "format",
        message: &["no backup matches", "nothing-here-*.dump"],
    },
    Broken {
        name: "truncated",
        make: |f, dir| {
            let target = dir.join("truncated.dump");
            infrapilot_e2e::dumps::truncated_copy(&f.path(Kind::Custom), &target, 0.6)
                .expect("the truncated copy is written");
            target
        },
        checks: "",
        check: "restore",
        message: &["pg_restore"],
    },
    Broken {
        name: "truncated-plain",
        make: |f, dir| {
            let target = dir.join("truncated.sql");
            infrapilot_e2e::dumps::truncated_copy(&f.path(Kind::Plain), &target, 0.5)
                .expect("the truncated copy is written");
            target
        },
        checks: "",
        check: "format",
        message: &["truncated"],
    },
    Broken {
        name: "not-a-dump",
        make: |_, dir| {
            let target = dir.join("zip.dump");
            std::fs::write(&target, b"PK\x03\x04 this is a zip file, not a dump")
                .expect("the file is written");
            target
        },
        checks: "",
        check: "format",
        message: &["not a PostgreSQL dump", "50 4b 03 04"],
    },
    Broken {
        name: "sidecar",
        make: |f, dir| {
            let target = copy(f, Kind::Custom, dir, "sidecar.dump");
            std::fs::write(
                dir.join("sidecar.dump.sha256"),
                format!("{}  sidecar.dump\n", "ab".repeat(32)),
            )
            .expect("the sidecar is written");
            target
        },
        checks: "",
        check: "checksum",
        message: &["abababab", "sidecar.dump.sha256"],
    },
    Broken {
        name: "syntax",
        make: |f, dir| {
            edit_plain(f, dir, "syntax.sql", |t| {
                t.replacen(
                    "CREATE TABLE public.orders",
                    "CREATE TABLEE public.orders",
                    1,
                )
            })
        },
        checks: "",
        check: "sqlSyntax",
        message: &["statement ", "(line ", "TABLEE"],
    },
    Broken {
        name: "failing-statement",
        make: |f, dir| {
            edit_plain(f, dir, "failing.sql", |t| {
                t.replacen(
                    "SET row_security = off;",
                    "SET row_security = off;\nSELECT * FROM no_such_table;",
                    1,
                )
            })
        },
        checks: "",
        check: "restore",
        message: &["no_such_table"],
    },
    Broken {
        name: "newer",
        make: |f, dir| {
            edit_plain(f, dir, "newer.sql", |t| {
                t.replacen(
                    "-- Dumped from database version 15.",
                    "-- Dumped from database version 17.",
                    1,
                )
            })
        },
        checks: "",
        check: "restore",
        message: &[
            "PostgreSQL 17.",
            "set engine.image to PostgreSQL 17 or newer",
        ],
    },
    Broken {
        name: "missing-table",
        make: |f, dir| copy(f, Kind::Custom, dir, "tables.dump"),
        checks: "    expectTables: [customers, invoices]\n",
        check: "data",
        message: &["expected table invoices is missing from the restored database"],
    },
    Broken {
        name: "bad-query",
        make: |f, dir| copy(f, Kind::Tar, dir, "query.tar"),
        checks: "    queries:\n      - name: broken\n        sql: SELECT count(*) FROM invoices\n        min: 1\n",
        check: "data",
        message: &["query broken: failed", "invoices", "does not exist"],
    },
];

#[tokio::test]
async fn broken_backups_fail_at_the_right_check_with_a_precise_message() {
    let fixture = Fixture::make("backup-broken", &[Kind::Custom, Kind::Tar, Kind::Plain])
        .await
        .unwrap();
    let dir = infrapilot_e2e::env::test_dir("backup-broken-operator");
    let operator = start(&dir);
    for broken in BROKEN {
        let sub = fixture.dir.join(broken.name);
        std::fs::create_dir_all(&sub).unwrap();
        let path = (broken.make)(&fixture, &sub);
        std::fs::write(
            operator.manifests().join(format!("{}.yaml", broken.name)),
            policy(broken.name, &path, broken.checks, RUN_ON_CREATE),
        )
        .unwrap();
    }
    for broken in BROKEN {
        let run = completed_run(&operator, broken.name).await;
        assert_eq!(
            run["status"]["phase"], "Failed",
            "{}: {:#}",
            broken.name, run["status"]
        );
        let failed: Vec<&Value> = run["status"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["result"] == "Failed")
            .collect();
        assert_eq!(
            failed[0]["name"], broken.check,
            "{}: {failed:#?}",
            broken.name
        );
        let message = failed[0]["message"].as_str().unwrap();
        for needle in broken.message {
            assert!(
                message.contains(needle),
                "{}: {needle:?} not in {message:?}",
                broken.name
            );
        }
        let uid = run["metadata"]["uid"].as_str().unwrap();
        assert!(
            leftover_servers(uid).await.is_empty(),
            "{}: a server was left",
            broken.name
        );
        let policy = operator.get("bvp", broken.name).await.unwrap();
        assert!(infrapilot_e2e::wait::has_condition(
            &policy, "Ready", "False"
        ));
        assert_eq!(policy["status"]["consecutiveFailures"], 1);
    }
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn the_schedule_fires_history_is_pruned_and_the_channel_hears_failure_and_recovery() {
    let fixture = Fixture::make("backup-schedule", &[Kind::Custom])
        .await
        .unwrap();
    let webhook = WebhookServer::start().await.unwrap();
    let dir = infrapilot_e2e::env::test_dir("backup-schedule-operator");
    let backups = fixture.dir.join("nightly");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::write(backups.join("2026-11-20.dump"), b"not a dump at all").unwrap();
    let operator = start(&dir);
    std::fs::write(
        operator.manifests().join("channel.yaml"),
        format!(
            "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: ops\nspec:\n  webhook:\n    url: {}\n",
            webhook.url("/backups")
        ),
    )
    .unwrap();
    std::fs::write(
        operator.manifests().join("policy.yaml"),
        policy(
            "nightly",
            &backups.join("*.dump"),
            "",
            "  historyLimit:\n    successful: 1\n    failed: 1\n  channels:\n    - name: ops\n",
        )
        .replace("\"0 0 1 1 *\"", "\"*/5 * * * * *\""),
    )
    .unwrap();

    // The schedule fires; the corrupt backup fails and the channel hears it.
    let failure = webhook.wait_for_requests(1, RUN_TIMEOUT).await;
    let body = failure[0].json().unwrap();
    assert_eq!(body["title"], "Backup validation failed: default/nightly");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("not a PostgreSQL dump"),
        "{body:#}"
    );

    // A good backup arrives: the next run succeeds, and the channel hears of the recovery.
    std::fs::copy(fixture.path(Kind::Custom), backups.join("2026-11-21.dump")).unwrap();
    let recovered = eventually("the recovery message", RUN_TIMEOUT, || async {
        let requests = webhook.requests();
        requests
            .iter()
            .filter_map(|r| r.json().ok())
            .find(|b| b["title"] == "Backup validation recovered: default/nightly")
            .ok_or_else(|| format!("{} requests so far", requests.len()))
    })
    .await;
    assert!(
        recovered["text"]
            .as_str()
            .unwrap()
            .contains("succeeded after"),
        "{recovered:#}"
    );

    // More runs come; at most one of each outcome is kept, with its report, and the pruned
    // runs' reports are gone.
    let kept = eventually("the history pruned to its limits", RUN_TIMEOUT, || async {
        let output = cli(&dir, &["get", "bvr", "-o", "json"])
            .await
            .map_err(|e| e.to_string())?;
        let list: Value = serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
        let runs = list["items"].as_array().cloned().unwrap_or_default();
        let ended = |phase: &str| {
            runs.iter()
                .filter(|r| r["status"]["phase"] == phase)
                .count()
        };
        let policy = operator
            .get("bvp", "nightly")
            .await
            .map_err(|e| e.to_string())?;
        let created = audit(&dir)
            .await
            .iter()
            .filter(|r| r["action"] == "backup-run.create")
            .count();
        if created >= 4 && ended("Succeeded") == 1 && ended("Failed") <= 1 && runs.len() <= 3 {
            Ok((runs, policy))
        } else {
            Err(format!(
                "{created} created; {} runs: {:?}",
                runs.len(),
                runs.iter()
                    .map(|r| r["status"]["phase"].clone())
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await;
    let (runs, policy) = kept;
    assert_eq!(policy["status"]["consecutiveFailures"], 0);
    let reports = dir.join(".infrapilot/reports/default/nightly");
    let mut files: Vec<String> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = runs
        .iter()
        .filter(|r| r["status"]["report"].is_object())
        .map(|r| format!("{}.json", r["metadata"]["name"].as_str().unwrap()))
        .collect();
    expected.sort();
    // A run that finished while this was read may have written its report already.
    assert!(
        files.len() <= expected.len() + 1 && expected.iter().all(|e| files.contains(e)),
        "reports {files:?}, runs {expected:?}"
    );

    // Deleting the policy deletes its runs with it; their reports stay, and a run that was
    // going still ends and removes its server.
    std::fs::remove_file(operator.manifests().join("policy.yaml")).unwrap();
    eventually(
        "the runs deleted with their policy",
        RUN_TIMEOUT,
        || async {
            let output = cli(&dir, &["get", "bvr", "-o", "json"])
                .await
                .map_err(|e| e.to_string())?;
            let list: Value = serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
            match list["items"].as_array().map(Vec::len) {
                Some(0) => Ok(()),
                other => Err(format!("{other:?} runs left")),
            }
        },
    )
    .await;
    let uids = eventually("every created run ended", RUN_TIMEOUT, || async {
        let records = audit(&dir).await;
        let count = |action: &str| records.iter().filter(|r| r["action"] == action).count();
        if count("backup.validate") < count("backup-run.create") {
            return Err(format!("{records:#?}"));
        }
        Ok(records
            .iter()
            .filter(|r| r["action"] == "backup.validate")
            .map(|r| r["object"]["uid"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<String>>())
    })
    .await;
    for uid in &uids {
        assert!(leftover_servers(uid).await.is_empty(), "run {uid}");
    }
    assert!(reports.join(&expected[0]).exists());
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_mid_run_ends_the_run_failed_and_removes_its_server() {
    let fixture = Fixture::make("backup-restart", &[Kind::Plain])
        .await
        .unwrap();
    // A dump whose restore takes a minute: a statement that sleeps.
    let slow = edit_plain(&fixture, &fixture.dir, "slow.sql", |t| {
        t.replacen(
            "SET row_security = off;",
            "SET row_security = off;\nSELECT pg_sleep(120);",
            1,
        )
    });
    let dir = infrapilot_e2e::env::test_dir("backup-restart-operator");
    let mut operator = start(&dir);
    std::fs::write(
        operator.manifests().join("slow.yaml"),
        policy("slow", &slow, "", RUN_ON_CREATE).replace("timeout: 2m", "timeout: 5m"),
    )
    .unwrap();
    let (run_name, container) = eventually("the run restoring", RUN_TIMEOUT, || async {
        let policy = operator
            .get("bvp", "slow")
            .await
            .map_err(|e| e.to_string())?;
        let name = policy["status"]["lastRun"]["name"]
            .as_str()
            .ok_or("no run yet")?
            .to_owned();
        let run = operator
            .get("bvr", &name)
            .await
            .map_err(|e| e.to_string())?;
        let restoring = run["status"]["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "freshness"));
        match run["status"]["container"].as_str() {
            // The server is started while the file is checked: wait until it is there.
            Some(container) if restoring && exists(container).await => {
                Ok((name, container.to_owned()))
            }
            _ => Err(format!("{:#}", run["status"])),
        }
    })
    .await;

    operator
        .process()
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    operator
        .process()
        .wait(Duration::from_secs(10))
        .await
        .unwrap();
    let restarted = start(&dir);
    let run = eventually("the interrupted run failed", RUN_TIMEOUT, || async {
        let run = restarted
            .get("bvr", &run_name)
            .await
            .map_err(|e| e.to_string())?;
        if run["status"]["phase"] == "Failed" {
            Ok(run)
        } else {
            Err(format!("{:#}", run["status"]))
        }
    })
    .await;
    let ready = infrapilot_e2e::wait::condition(&run, "Ready").unwrap();
    assert_eq!(ready["reason"], "Interrupted");
    assert!(ready["message"].as_str().unwrap().contains(&container));
    assert!(
        !exists(&container).await,
        "the throwaway server was removed"
    );
    // The policy hears of the failure: its run ended, even if not by running to the end.
    eventually("the policy counting the failure", RUN_TIMEOUT, || async {
        let policy = restarted
            .get("bvp", "slow")
            .await
            .map_err(|e| e.to_string())?;
        if policy["status"]["consecutiveFailures"] == 1
            && infrapilot_e2e::wait::has_condition(&policy, "Ready", "False")
        {
            Ok(())
        } else {
            Err(format!("{:#}", policy["status"]))
        }
    })
    .await;
    restarted.stop().await.unwrap();
}
