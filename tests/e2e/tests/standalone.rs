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
    wait_for_problem_within(operator, kind, needle, Duration::from_secs(10)).await
}

/// [`wait_for_problem`], failing when it takes longer than `timeout`.
async fn wait_for_problem_within(
    operator: &Operator,
    kind: &str,
    needle: &str,
    timeout: Duration,
) -> String {
    eventually(&format!("a problem with {needle:?}"), timeout, || async {
        let output = cli(operator.dir(), &["get", kind]).await?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if stderr.contains(needle) {
            Ok(stderr)
        } else {
            Err(anyhow::anyhow!("{stderr}"))
        }
    })
    .await
}

/// Waits until the operator's log contains `needle`.
async fn wait_for_log(operator: &Operator, needle: &str) {
    eventually(
        &format!("{needle:?} in the operator's log"),
        Duration::from_secs(10),
        || async {
            let log = operator.log();
            if log.contains(needle) {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
}

/// Waits until the AlertChannel `name` is gone from the store.
async fn wait_for_gone(operator: &Operator, name: &str) {
    eventually(
        &format!("the channel {name} to be gone"),
        Duration::from_secs(30),
        || async {
            let output = cli(operator.dir(), &["get", "alertchannels", name]).await?;
            if output.status.code() == Some(1) {
                Ok(())
            } else {
                Err(anyhow::anyhow!("still there"))
            }
        },
    )
    .await;
}

fn ready_reason(object: &serde_json::Value) -> String {
    ready_field(object, "reason")
}

fn ready_message(object: &serde_json::Value) -> String {
    ready_field(object, "message")
}

fn ready_field(object: &serde_json::Value, field: &str) -> String {
    infrapilot_e2e::wait::condition(object, "Ready")
        .map(|c| c[field].as_str().unwrap_or_default().to_owned())
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
    let changed = wait_for_verified_generation(&operator, "ops", 2).await;
    assert_eq!(changed["metadata"]["uid"], uid.as_str());
    let requests = server.wait_for_requests(2, Duration::from_secs(5)).await;
    assert_eq!(requests[1].path, "/ops-v2");

    // Removing the manifest deletes the object.
    std::fs::remove_file(operator.manifests().join("ops.yaml")).unwrap();
    wait_for_gone(&operator, "ops").await;
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
    wait_for_log(&operator, "manifests/bad.yaml:8:3: spec.verfy").await;

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
    let message = ready_message(&object);
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

fn uid(object: &serde_json::Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `infrapilot get KIND` reports no manifest problem.
async fn wait_for_no_problem(operator: &Operator, kind: &str) {
    eventually("no manifest problem", Duration::from_secs(10), || async {
        let output = cli(operator.dir(), &["get", kind]).await?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if stderr.contains("manifest problem") {
            Err(anyhow::anyhow!("{stderr}"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// Waits until the channel's spec of generation `generation` is verified.
async fn wait_for_verified_generation(
    operator: &Operator,
    name: &str,
    generation: i64,
) -> serde_json::Value {
    eventually(
        &format!("generation {generation} of {name} to be verified"),
        Duration::from_secs(30),
        || async {
            let object = operator.get("ach", name).await?;
            if object["status"]["observedGeneration"] == generation
                && object["status"]["verified"] == true
            {
                Ok(object)
            } else {
                Err(anyhow::anyhow!("{object}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn renaming_the_manifest_directory_away_for_a_second_deletes_nothing_and_keeps_every_uid() {
    let server = WebhookServer::start().await.unwrap();
    let operator = Operator::standalone(&env::test_dir("standalone-root-away")).unwrap();
    for name in ["a", "b"] {
        write(
            &operator,
            &format!("{name}.yaml"),
            &webhook_channel(name, &server.url(&format!("/{name}")), true),
        );
    }
    let mut uids = Vec::new();
    for name in ["a", "b"] {
        let ready = operator
            .wait_for_condition("ach", name, "Ready", "True")
            .await;
        uids.push(uid(&ready));
    }
    server.wait_for_requests(2, Duration::from_secs(5)).await;

    let away = operator.dir().join("manifests.away");
    std::fs::rename(operator.manifests(), &away).unwrap();
    let stderr = wait_for_problem(&operator, "ach", "the manifest path does not exist").await;
    assert!(
        stderr.contains("manifests: the manifest path does not exist"),
        "{stderr}"
    );
    // The scenario itself: the directory stays away for a second, four times the delay after
    // which a scan that still missed the objects would delete them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::rename(&away, operator.manifests()).unwrap();
    wait_for_no_problem(&operator, "ach").await;

    for (name, uid_before) in ["a", "b"].into_iter().zip(&uids) {
        let object = operator.get("ach", name).await.unwrap();
        assert_eq!(&uid(&object), uid_before, "{name} was made again");
        assert_eq!(object["metadata"]["generation"], 1);
    }
    let log = operator.log();
    assert!(
        !log.contains("deleted from the manifests") && !log.contains("missing from the manifests"),
        "{log}"
    );
    assert_eq!(server.requests().len(), 2, "a channel was verified again");

    // The directory is watched again: an edit and a removal are seen, and the removal deletes.
    write(
        &operator,
        "a.yaml",
        &webhook_channel("a", &server.url("/a-2"), true),
    );
    let changed = wait_for_verified_generation(&operator, "a", 2).await;
    assert_eq!(uid(&changed), uids[0]);
    std::fs::remove_file(operator.manifests().join("b.yaml")).unwrap();
    wait_for_gone(&operator, "b").await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_manifest_truncated_and_then_written_keeps_its_uid() {
    let server = WebhookServer::start().await.unwrap();
    let operator = Operator::standalone(&env::test_dir("standalone-truncate")).unwrap();
    let manifest = webhook_channel("ops", &server.url("/ops"), true);
    write(&operator, "ops.yaml", &manifest);
    let ready = operator
        .wait_for_condition("ach", "ops", "Ready", "True")
        .await;
    let uid_before = uid(&ready);

    // A writer that truncates the file in place and writes it a moment later, and a scan that
    // reads the empty file in between.
    let path = operator.manifests().join("ops.yaml");
    std::fs::File::create(&path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !operator
        .log()
        .contains("missing from the manifests: deleted if still missing")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no scan read the empty file: {}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&path, &manifest).unwrap();
    // The second scan finds the channel again.
    wait_for_log(&operator, "back in the manifests: not deleted").await;

    let object = operator.get("ach", "ops").await.unwrap();
    assert_eq!(uid(&object), uid_before);
    assert_eq!(object["metadata"]["generation"], 1);
    assert!(!operator.log().contains("deleted from the manifests"));
    assert_eq!(server.requests().len(), 1, "the channel was verified again");
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn symlink_loops_a_link_to_dev_zero_and_a_fifo_are_reported_within_a_second_while_others_reconcile()
 {
    let server = WebhookServer::start().await.unwrap();
    let operator = Operator::standalone(&env::test_dir("standalone-hostile-files")).unwrap();
    write(
        &operator,
        "ops.yaml",
        &webhook_channel("ops", &server.url("/ops"), true),
    );
    let ready = operator
        .wait_for_condition("ach", "ops", "Ready", "True")
        .await;
    let manifests = operator.manifests();

    std::os::unix::fs::symlink(".", manifests.join("a")).unwrap();
    std::os::unix::fs::symlink(".", manifests.join("b")).unwrap();
    let loop_problem = |name: &str| {
        format!(
            "manifests/{name}: is the directory manifests again (a symlink loop or a second link to it); read once"
        )
    };
    let stderr =
        wait_for_problem_within(&operator, "ach", &loop_problem("b"), Duration::from_secs(1)).await;
    assert!(stderr.contains(&loop_problem("a")), "{stderr}");

    std::os::unix::fs::symlink("/dev/zero", manifests.join("zero.yaml")).unwrap();
    wait_for_problem_within(
        &operator,
        "ach",
        "manifests/zero.yaml: is a character device, not a regular file: not read",
        Duration::from_secs(1),
    )
    .await;

    let made = std::process::Command::new("mkfifo")
        .arg(manifests.join("fifo.yaml"))
        .status()
        .unwrap();
    assert!(made.success());
    let stderr = wait_for_problem_within(
        &operator,
        "ach",
        "manifests/fifo.yaml: is a FIFO, not a regular file: not read",
        Duration::from_secs(1),
    )
    .await;
    assert!(
        stderr.contains(&loop_problem("a")) && stderr.contains("zero.yaml"),
        "{stderr}"
    );

    // The channel next to them still follows its manifest, and is the same object.
    write(
        &operator,
        "ops.yaml",
        &webhook_channel("ops", &server.url("/ops-2"), true),
    );
    let changed = wait_for_verified_generation(&operator, "ops", 2).await;
    assert_eq!(uid(&changed), uid(&ready));
    let requests = server.wait_for_requests(2, Duration::from_secs(5)).await;
    assert_eq!(requests[1].path, "/ops-2");
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn an_object_defined_in_two_files_is_a_conflict_and_keeps_its_version() {
    let server = WebhookServer::start().await.unwrap();
    let operator = Operator::standalone(&env::test_dir("standalone-conflict")).unwrap();
    write(
        &operator,
        "a.yaml",
        &webhook_channel("ops", &server.url("/a"), true),
    );
    let ready = operator
        .wait_for_condition("ach", "ops", "Ready", "True")
        .await;

    write(
        &operator,
        "b.yaml",
        &webhook_channel("ops", &server.url("/b"), true),
    );
    let stderr = wait_for_problem(&operator, "ach", "is also defined at").await;
    assert!(
        stderr.contains("manifests/b.yaml:1:1: metadata.name: AlertChannel default/ops is also defined at manifests/a.yaml:1; it keeps its current version"),
        "{stderr}"
    );
    // A typo in the file it was read from does not switch it to the other definition.
    write(
        &operator,
        "a.yaml",
        &webhook_channel("ops", &server.url("/a"), true).replace("  verify", "  verfy"),
    );
    wait_for_problem(&operator, "ach", "which cannot be read now").await;
    let kept = operator.get("ach", "ops").await.unwrap();
    assert_eq!(kept["spec"]["webhook"]["url"], server.url("/a"));
    assert_eq!(uid(&kept), uid(&ready));

    // Once only b.yaml defines it, b.yaml's definition applies.
    std::fs::remove_file(operator.manifests().join("a.yaml")).unwrap();
    let moved = wait_for_verified_generation(&operator, "ops", 2).await;
    assert_eq!(moved["spec"]["webhook"]["url"], server.url("/b"));
    assert_eq!(uid(&moved), uid(&ready));
    wait_for_no_problem(&operator, "ach").await;
    operator.stop().await.unwrap();
}

/// A channel to a relay that takes mail the real way (STARTTLS, AUTH, a private CA in
/// `caBundle`, the password from a Secret) is verified; beside it, one with a wrong password
/// and one whose `caBundle` is not PEM each say why, without the password, and the wrong
/// password is not retried in a loop.
#[tokio::test]
async fn an_smtp_channel_over_starttls_with_auth_and_a_private_ca_is_verified_beside_broken_ones() {
    use infrapilot_e2e::mail::TlsSink;
    let sink = TlsSink::from_env();
    let dir = env::test_dir("standalone-smtp-tls");
    let operator = Operator::standalone(&dir).unwrap();
    let recipient = format!("{}@example.test", names::unique("tls"));
    let bundle: String = sink
        .ca_pem
        .lines()
        .map(|line| format!("      {line}\n"))
        .collect();
    let wrong = "wrong-Passw0rd-5678";
    let channel = |name: &str, secret: &str, bundle: &str| {
        format!(
            "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: {name}\nspec:\n  smtp:\n    host: {}\n    port: {}\n    tls: StartTLS\n    from: InfraPilot <alerts@example.test>\n    to: [{recipient}]\n    usernameSecretRef: {{name: {secret}, key: user}}\n    passwordSecretRef: {{name: {secret}, key: password}}\n    caBundle: |\n{bundle}  verify: true\n",
            sink.starttls.0, sink.starttls.1
        )
    };
    let secret = |name: &str, password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  user: {}\n  password: {password}\n",
            sink.user
        )
    };
    write(
        &operator,
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            secret("relay", &sink.password),
            secret("stale", wrong)
        ),
    );
    write(
        &operator,
        "channels.yaml",
        &format!(
            "{}---\n{}---\n{}",
            channel("mail", "relay", &bundle),
            channel("stale", "stale", &bundle),
            channel("garbled", "relay", "      not a certificate\n"),
        ),
    );

    let mail = operator
        .wait_for_condition("ach", "mail", "Ready", "True")
        .await;
    assert_eq!(ready_reason(&mail), "Verified", "{mail:#}");
    Maildir::from_env()
        .wait_for(
            "the verification over STARTTLS",
            Duration::from_secs(10),
            |m| m.to.contains(&recipient),
        )
        .await;

    let stale = operator
        .wait_for_condition("ach", "stale", "Ready", "False")
        .await;
    assert_eq!(ready_reason(&stale), "DeliveryRejected", "{stale:#}");
    let message = ready_message(&stale);
    assert!(message.contains("535"), "{message}");
    let garbled = operator
        .wait_for_condition("ach", "garbled", "Ready", "False")
        .await;
    assert_eq!(ready_reason(&garbled), "InvalidSpec", "{garbled:#}");
    let garbled_message = ready_message(&garbled);
    assert!(
        garbled_message.contains("spec.smtp.caBundle"),
        "{garbled_message}"
    );

    // The wrong password failed once (the count could see more); a rejection waits 15 s before
    // its first retry, so a loop would show here.
    assert_eq!(stale["status"]["deliveryFailures"], 1, "{stale:#}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = operator.get("ach", "stale").await.unwrap();
    assert_eq!(later["status"]["deliveryFailures"], 1, "{later:#}");

    // The passwords are in neither a status nor the audit log.
    let export = cli(&dir, &["audit", "export", "--format", "json"])
        .await
        .unwrap();
    let audit = String::from_utf8_lossy(&export.stdout).into_owned();
    assert!(
        audit.contains("stale"),
        "the audit log has the attempts: {audit}"
    );
    for name in ["mail", "stale", "garbled"] {
        let object = operator.get("ach", name).await.unwrap();
        for text in [object["status"].to_string(), audit.clone()] {
            assert!(
                !text.contains(wrong) && !text.contains(&sink.password),
                "{text}"
            );
        }
    }
    operator.stop().await.unwrap();
}
