//! Standalone mode end to end: the `infrapilot` binary reconciling a directory of manifests,
//! with state in SQLite, talking to real receivers.

use std::time::Duration;

use infrapilot_e2e::mail::{Maildir, smtp_addr};
use infrapilot_e2e::operator::{Operator, cli};
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::webhook::WebhookServer;
use infrapilot_e2e::{env, names};

fn webhook_channel(name: &str, url: &str, verify: bool) -> String {
    format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: {name}\nspec:\n  webhook:\n    url: {url}\n  verify: {verify}\n"
    )
}

fn write(operator: &Operator, file: &str, text: &str) {
    let path = operator.manifests().join(file);
    // Written next to the target and renamed, as editors and git do: never a half-written file.
    let tmp = operator.manifests().join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("writing a manifest");
    std::fs::rename(tmp, path).expect("renaming a manifest into place");
}

/// Waits until `infrapilot get KIND` reports a problem containing `needle`; returns the report.
async fn wait_for_problem(operator: &Operator, kind: &str, needle: &str) -> String {
    eventually(
        &format!("a problem with {needle:?}"),
        Duration::from_secs(10),
        || async {
            let output = cli(operator.dir(), &["get", kind]).await?;
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            if stderr.contains(needle) {
                Ok(stderr)
            } else {
                Err(anyhow::anyhow!("{stderr}"))
            }
        },
    )
    .await
}

fn ready_reason(object: &serde_json::Value) -> String {
    infrapilot_e2e::wait::condition(object, "Ready")
        .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_channel_is_verified_once_changed_reverified_and_deleted_with_its_manifest() {
    let server = WebhookServer::start().await.unwrap();
    let operator = Operator::standalone(&env::test_dir("standalone-lifecycle")).unwrap();
    write(
        &operator,
        "ops.yaml",
        &webhook_channel("ops", &server.url("/ops"), true),
    );

    let ready = operator
        .wait_for_condition("alertchannel", "ops", "Ready", "True")
        .await;
    assert_eq!(ready_reason(&ready), "Verified");
    assert_eq!(ready["metadata"]["generation"], 1);
    assert_eq!(ready["status"]["verified"], true);
    let uid = ready["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .wait_for_requests(1, Duration::from_secs(5))
            .await
            .len(),
        1
    );

    // A spec change is a new generation, verified again; the uid stays.
    write(
        &operator,
        "ops.yaml",
        &webhook_channel("ops", &server.url("/ops-v2"), true),
    );
    let changed = eventually(
        "generation 2 to be verified",
        Duration::from_secs(30),
        || async {
            let object = operator.get("ach", "ops").await?;
            let observed = object["status"]["observedGeneration"].as_i64();
            if observed == Some(2) && object["status"]["verified"] == true {
                Ok(object)
            } else {
                Err(anyhow::anyhow!("{object}"))
            }
        },
    )
    .await;
    assert_eq!(changed["metadata"]["uid"], uid.as_str());
    let requests = server.wait_for_requests(2, Duration::from_secs(5)).await;
    assert_eq!(requests[1].path, "/ops-v2");

    // Removing the manifest deletes the object.
    std::fs::remove_file(operator.manifests().join("ops.yaml")).unwrap();
    eventually(
        "the channel to be gone",
        Duration::from_secs(30),
        || async {
            let output = cli(operator.dir(), &["get", "alertchannels", "ops"]).await?;
            if output.status.code() == Some(1) {
                Ok(())
            } else {
                Err(anyhow::anyhow!("still there"))
            }
        },
    )
    .await;
    assert_eq!(server.requests().len(), 2, "nothing more was sent");
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_broken_manifest_is_reported_while_the_others_keep_reconciling() {
    let server = WebhookServer::start().await.unwrap();
    let operator = Operator::standalone(&env::test_dir("standalone-broken")).unwrap();
    write(
        &operator,
        "bad.yaml",
        &webhook_channel("bad", "ftp://nowhere", false).replace("  verify", "  verfy"),
    );
    write(
        &operator,
        "good.yaml",
        &webhook_channel("good", &server.url("/good"), true),
    );
    operator
        .wait_for_condition("ach", "good", "Ready", "True")
        .await;

    let output = cli(operator.dir(), &["get", "alertchannels"])
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        stdout.contains("good") && !stdout.contains("bad"),
        "{stdout}"
    );
    assert!(
        stderr.contains("manifests/bad.yaml:7:10: spec.webhook.url: \"ftp://nowhere\" must be"),
        "{stderr}"
    );
    assert!(
        stderr.contains("manifests/bad.yaml:8:3: spec.verfy: unknown field \"verfy\""),
        "{stderr}"
    );
    eventually(
        "the problem in the operator's log",
        Duration::from_secs(10),
        || async {
            let log = operator.log();
            if log.contains("manifests/bad.yaml:8:3: spec.verfy") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;

    // The good channel still follows its manifest.
    write(
        &operator,
        "good.yaml",
        &webhook_channel("good", &server.url("/good-2"), true),
    );
    eventually(
        "the good channel's new spec",
        Duration::from_secs(30),
        || async {
            let object = operator.get("ach", "good").await?;
            if object["status"]["observedGeneration"] == 2 {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{object}"))
            }
        },
    )
    .await;

    // Breaking the good channel's own file keeps it at its last good version.
    write(
        &operator,
        "good.yaml",
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata: [oops\n",
    );
    wait_for_problem(&operator, "ach", "good.yaml").await;
    let kept = operator.get("ach", "good").await.unwrap();
    assert_eq!(kept["status"]["observedGeneration"], 2);
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_channel_pointing_at_a_closed_port_is_not_ready_with_the_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let operator = Operator::standalone(&env::test_dir("standalone-closed")).unwrap();
    write(
        &operator,
        "ops.yaml",
        &webhook_channel("ops", &format!("http://127.0.0.1:{port}/hook"), true),
    );
    let object = operator
        .wait_for_condition("ach", "ops", "Ready", "False")
        .await;
    assert_eq!(ready_reason(&object), "Unreachable");
    let message = infrapilot_e2e::wait::condition(&object, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with(&format!("could not reach webhook http://127.0.0.1:{port}")),
        "{message}"
    );
    assert!(object["status"]["deliveryFailures"].as_u64().unwrap() >= 1);
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn smtp_verification_lands_in_the_maildir() {
    let addr = smtp_addr();
    let recipient = format!("{}@example.test", names::unique("ops"));
    let operator = Operator::standalone(&env::test_dir("standalone-smtp")).unwrap();
    let manifest = format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: mail\nspec:\n  smtp:\n    host: {}\n    port: {}\n    tls: None\n    from: InfraPilot <alerts@example.test>\n    to: [{recipient}]\n  verify: true\n",
        addr.ip(),
        addr.port()
    );
    write(&operator, "mail.yaml", &manifest);
    operator
        .wait_for_condition("ach", "mail", "Ready", "True")
        .await;
    let mail = Maildir::from_env()
        .wait_for("the verification e-mail", Duration::from_secs(10), |m| {
            m.to.contains(&recipient)
        })
        .await;
    assert_eq!(
        mail.subject,
        "InfraPilot: AlertChannel default/mail verified"
    );
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_repeats_no_finished_side_effect() {
    let server = WebhookServer::start().await.unwrap();
    let dir = env::test_dir("standalone-restart");
    let operator = Operator::standalone(&dir).unwrap();
    write(
        &operator,
        "a.yaml",
        &webhook_channel("a", &server.url("/a"), true),
    );
    operator
        .wait_for_condition("ach", "a", "Ready", "True")
        .await;
    operator.stop().await.unwrap();

    // Started again, it reconciles every stored object at once; a channel added afterwards is
    // reconciled after that, so once it is Ready the restart has looked at "a" too.
    let operator = Operator::standalone(&dir).unwrap();
    write(
        &operator,
        "b.yaml",
        &webhook_channel("b", &server.url("/b"), true),
    );
    operator
        .wait_for_condition("ach", "b", "Ready", "True")
        .await;
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/a", "/b"],
        "channel a was verified again after the restart"
    );
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn the_audit_log_verifies_and_names_an_edited_record() {
    let server = WebhookServer::start().await.unwrap();
    let dir = env::test_dir("standalone-audit");
    let operator = Operator::standalone(&dir).unwrap();
    write(
        &operator,
        "ops.yaml",
        &webhook_channel("ops", &server.url("/ops"), true),
    );
    operator
        .wait_for_condition("ach", "ops", "Ready", "True")
        .await;
    operator.stop().await.unwrap();

    let verify = cli(&dir, &["audit", "verify"]).await.unwrap();
    assert!(verify.status.success(), "{verify:?}");
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout),
        "the audit log is intact: 1 records verified\n"
    );
    let listed = String::from_utf8_lossy(
        &cli(&dir, &["audit", "list", "--kind", "AlertChannel"])
            .await
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        listed.contains("notification.send") && listed.contains("AlertChannel default/ops"),
        "{listed}"
    );

    // Someone edits the record in the state database.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", dir.join(".infrapilot/state.db").display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_records SET outcome = 'Failure' WHERE seq = 1")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let verify = cli(&dir, &["audit", "verify"]).await.unwrap();
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        stderr.contains("audit record 1 failed verification"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_immutable_field_cannot_change_and_the_object_keeps_its_version() {
    let operator = Operator::standalone(&env::test_dir("standalone-immutable")).unwrap();
    let tenant = |isolation: &str, display: &str| {
        format!(
            "apiVersion: infrapilot.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n  displayName: {display}\n  database:\n    isolation: {isolation}\n"
        )
    };
    write(&operator, "tenant.yaml", &tenant("Database", "Acme"));
    let stored = eventually("the tenant to be stored", Duration::from_secs(30), || {
        operator.get("tenant", "acme")
    })
    .await;
    assert_eq!(stored["spec"]["database"]["isolation"], "Database");

    // Changing isolation is refused, as the API server would refuse the update.
    write(&operator, "tenant.yaml", &tenant("Schema", "Acme Corp"));
    let stderr = wait_for_problem(&operator, "tenants", "isolation is immutable").await;
    assert!(
        stderr
            .contains("manifests/tenant.yaml:1:1: spec.database.isolation: isolation is immutable"),
        "{stderr}"
    );
    let kept = operator.get("tenant", "acme").await.unwrap();
    assert_eq!(kept["spec"]["database"]["isolation"], "Database");
    assert_eq!(kept["spec"]["displayName"], "Acme");
    assert_eq!(kept["metadata"]["generation"], 1);

    // Any other change goes through.
    write(&operator, "tenant.yaml", &tenant("Database", "Acme Corp"));
    eventually("the allowed change", Duration::from_secs(10), || async {
        let object = operator.get("tenant", "acme").await?;
        if object["metadata"]["generation"] == 2 {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{object}"))
        }
    })
    .await;
    operator.stop().await.unwrap();
}
