//! AlertRules end to end in standalone mode: real backup runs failing and succeeding, a real
//! webhook receiver taking Alertmanager's body, a dead channel and a missing one next to it.

use std::time::Duration;

use infrapilot_e2e::dumps::{Fixture, Kind};
use infrapilot_e2e::operator::{Operator, cli};
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::webhook::WebhookServer;
use serde_json::Value;

use crate::backup::{audit, policy};

const TIMEOUT: Duration = Duration::from_secs(180);

fn channel(name: &str, url: &str) -> String {
    format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: {name}\nspec:\n  webhook:\n    url: {url}\n"
    )
}

fn rule(name: &str, channels: &[&str]) -> String {
    let channels: String = channels
        .iter()
        .map(|c| format!("    - name: {c}\n"))
        .collect();
    format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: {name}\nspec:\n  \
         backupValidationFailed:\n    policies: [nightly]\n    consecutiveFailures: 2\n  \
         severity: Critical\n  groupWait: 0s\n  channels:\n{channels}"
    )
}

/// The Alertmanager bodies the receiver got, in order.
fn bodies(webhook: &WebhookServer) -> Vec<Value> {
    let bodies: Vec<Value> = webhook
        .requests()
        .iter()
        .filter_map(|r| r.json().ok())
        // The channels' own messages (a verification) are InfraPilot's `v1` body.
        .filter(|b: &Value| b["version"] == "4" || b.get("alerts").is_some())
        .collect();
    // Every one of them is read as Alertmanager's receivers read it.
    for body in &bodies {
        if let Err(error) = infrapilot_e2e::alertmanager::payload(body) {
            panic!("{error}");
        }
    }
    bodies
}

/// A URL on a loopback port nothing listens on: a dead endpoint.
fn closed_url(path: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = listener.local_addr().expect("its address");
    drop(listener);
    format!("http://{address}{path}")
}

/// Asserts that the rule `rule` tried the channel `channel` at least once and no more often
/// than its backoff allows since `since` (the first attempt): `first` seconds after the first
/// failure, doubling (one more attempt is allowed, for a resolution).
async fn assert_backed_off(
    dir: &std::path::Path,
    rule: &str,
    channel: &str,
    since: jiff::Timestamp,
    first: f64,
) {
    let target = format!("AlertChannel default/{channel}");
    let attempts = audit(dir)
        .await
        .iter()
        .filter(|r| {
            r["action"] == "notification.send"
                && r["object"]["name"] == rule
                && r["target"] == target
        })
        .count();
    let elapsed = jiff::Timestamp::now().duration_since(since).as_secs_f64();
    let schedule = (0..12).map(|k| first * (2f64.powi(k) - 1.0));
    let allowed = schedule.filter(|t| *t <= elapsed + 1.0).count() + 1;
    assert!(
        (1..=allowed).contains(&attempts),
        "{attempts} attempts of {rule} to {channel} in {elapsed:.0} s (at most {allowed})"
    );
}

/// Stops `operator` and starts it again in `dir`, with its probes (for `/metrics`); returns
/// once the new one has finished `reconciles` rule reconciles.
async fn restarted(operator: Operator, dir: &std::path::Path, reconciles: u64) -> Operator {
    operator.stop().await.expect("the operator stops");
    let operator = Operator::start(
        dir,
        &[
            "run",
            "--manifests",
            "manifests",
            "--probe-address",
            "127.0.0.1:0",
        ],
    )
    .expect("the operator starts again");
    eventually(
        "the restarted operator evaluating the rule",
        TIMEOUT,
        || async {
            match operator.reconciles("alertrule").await? {
                n if n >= reconciles => Ok(()),
                n => Err(format!("{n} rule reconciles")),
            }
        },
    )
    .await;
    operator
}

#[tokio::test]
async fn a_policy_failing_twice_fires_once_to_the_live_channel_and_resolves_on_success() {
    let fixture = Fixture::make("alert-backup", &[Kind::Custom])
        .await
        .unwrap();
    let webhook = WebhookServer::start().await.unwrap();
    let dir = infrapilot_e2e::env::test_dir("alert-backup-operator");
    let backups = fixture.dir.join("nightly");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::write(backups.join("2026-11-20.dump"), b"not a dump at all").unwrap();
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let operator = Operator::start(&dir, &["run", "--manifests", "manifests"]).unwrap();
    let manifests = operator.manifests();
    // A closed port: the dead channel's deliveries fail and are retried on the backoff.
    let dead_url = closed_url("/dead");
    std::fs::write(
        manifests.join("channels.yaml"),
        format!(
            "{}---\n{}",
            channel("hook", &webhook.url("/alerts")),
            channel("dead", &dead_url)
        ),
    )
    .unwrap();
    std::fs::write(
        manifests.join("rules.yaml"),
        format!(
            "{}---\n{}",
            rule("backups", &["hook", "dead"]),
            rule("orphan", &["missing"])
        ),
    )
    .unwrap();
    std::fs::write(
        manifests.join("policy.yaml"),
        policy("nightly", &backups.join("*.dump"), "", "")
            .replace("\"0 0 1 1 *\"", "\"*/5 * * * * *\""),
    )
    .unwrap();

    // The second failed run fires; the live channel gets Alertmanager's body, once.
    let fired = eventually("the firing notification", TIMEOUT, || async {
        bodies(&webhook)
            .into_iter()
            .next()
            .ok_or_else(|| format!("{} requests so far", webhook.requests().len()))
    })
    .await;
    let policy_now = operator.get("bvp", "nightly").await.unwrap();
    assert!(
        policy_now["status"]["consecutiveFailures"]
            .as_u64()
            .unwrap()
            >= 2,
        "fired before two failures: {:#}",
        policy_now["status"]
    );
    assert_eq!(fired["status"], "firing");
    assert_eq!(fired["receiver"], "hook");
    assert_eq!(fired["commonLabels"]["alertname"], "backups");
    assert_eq!(fired["commonLabels"]["severity"], "critical");
    assert_eq!(fired["commonLabels"]["policy"], "nightly");
    let alert = &fired["alerts"][0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        alert["fingerprint"].as_str().unwrap().len() == 16,
        "{alert:#}"
    );
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("failed validation runs in a row"),
        "{alert:#}"
    );
    let firing = operator.get("alertrule", "backups").await.unwrap();
    assert_eq!(
        firing["status"]["state"], "Firing",
        "{:#}",
        firing["status"]
    );
    assert_eq!(firing["status"]["activeAlerts"][0]["subject"], "nightly");
    let ready = infrapilot_e2e::wait::condition(&firing, "Ready").unwrap();
    assert_eq!(ready["reason"], "DeliveryFailed", "{ready:#}");
    let listed = cli(&dir, &["alerts"]).await.unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("backups"))
        .unwrap_or_default();
    assert!(
        row.contains("nightly") && row.contains("Firing") && row.contains("Critical"),
        "{text}"
    );

    // The neighbours: the rule with a missing channel says so; neither fails the other.
    let orphan = operator
        .wait_for_condition("alertrule", "orphan", "Ready", "False")
        .await;
    let orphan_ready = infrapilot_e2e::wait::condition(&orphan, "Ready").unwrap();
    assert_eq!(
        orphan_ready["reason"], "ChannelNotFound",
        "{orphan_ready:#}"
    );
    assert_eq!(orphan["status"]["state"], "Firing");

    // A restart while firing sends nothing again: the notification log is in the status. The
    // restarted operator evaluates the rule (a run fails every 5 s and brings it back) before
    // the count below is read.
    let operator = restarted(operator, &dir, 4).await;
    assert_eq!(
        bodies(&webhook).len(),
        1,
        "nothing sent again after the restart"
    );
    // /metrics counts the firing alerts by rule, the restarted operator too.
    let alerts = |rule: &str, state: &str| {
        format!("infrapilot_alerts{{namespace=\"default\",rule=\"{rule}\",state=\"{state}\"}}")
    };
    for rule in ["backups", "orphan"] {
        eventually("the firing alert on /metrics", TIMEOUT, || async {
            match operator.metric(&alerts(rule, "firing")).await? {
                Some(1) => Ok(()),
                other => Err(format!("{rule}: {other:?}")),
            }
        })
        .await;
    }

    // A good backup arrives: a run succeeds, the alert resolves and the channel is told.
    std::fs::copy(fixture.path(Kind::Custom), backups.join("2026-11-21.dump")).unwrap();
    let resolved = eventually("the resolved notification", TIMEOUT, || async {
        bodies(&webhook)
            .into_iter()
            .find(|b| b["status"] == "resolved")
            .ok_or_else(|| format!("{} bodies so far", bodies(&webhook).len()))
    })
    .await;
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(
        resolved["alerts"][0]["fingerprint"], alert["fingerprint"],
        "the same alert resolves"
    );
    // Many failed runs came and went meanwhile: the live channel was told once of the firing.
    let told: Vec<Value> = bodies(&webhook);
    assert_eq!(
        told.iter().filter(|b| b["status"] == "firing").count(),
        1,
        "{told:#?}"
    );

    // The dead channel was retried on the backoff (5 s doubling), not in a loop.
    let fired_at = firing["status"]["activeAlerts"][0]["firedAt"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_backed_off(&dir, "backups", "dead", fired_at, 5.0).await;

    // Resolved, the gauge says so; a rule taken out of Git takes its series with it, and its
    // neighbour's stay.
    assert_eq!(
        operator.metric(&alerts("backups", "firing")).await,
        Ok(Some(0))
    );
    std::fs::write(
        manifests.join("rules.yaml"),
        rule("backups", &["hook", "dead"]),
    )
    .unwrap();
    eventually("the deleted rule's series gone", TIMEOUT, || async {
        match operator.metric(&alerts("orphan", "firing")).await? {
            None => Ok(()),
            other => Err(format!("orphan: {other:?}")),
        }
    })
    .await;
    assert_eq!(
        operator.metric(&alerts("backups", "pending")).await,
        Ok(Some(0))
    );
    operator.stop().await.unwrap();
}

fn certificate_rule(name: &str, within: &str, proxies: &str, url: &str) -> String {
    format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: {name}-hook\nspec:\n  webhook:\n    url: {url}\n\
         ---\napiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: {name}\nspec:\n  \
         certificateExpiry:\n    within: {within}\n    proxies: [{proxies}]\n  groupWait: 0s\n  channels:\n    - name: {name}-hook\n"
    )
}

#[tokio::test]
async fn certificates_expiring_within_the_window_or_expired_fire_and_one_outside_it_does_not() {
    use crate::proxy::{by_name, certificate_for, certificate_for_days, proxy, setup, tls_secret};
    use infrapilot_e2e::docker::{ContainerSpec, images};

    let s = setup("alert-certificates").await;
    let webhook = WebhookServer::start().await.unwrap();
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    // The test PKI's leaf certificates are valid for 30 days; another expired a day ago.
    let host = "expiring.example.test";
    let (chain, key, _) = certificate_for(&s.operator.dir().join("pki"), host);
    s.write("secret.yaml", &tls_secret("expiring-tls", &chain, &key));
    let gone = "gone.example.test";
    let (old_chain, old_key, _) =
        certificate_for_days(&s.operator.dir().join("pki-gone"), gone, "-1");
    s.write(
        "gone-secret.yaml",
        &tls_secret("gone-tls", &old_chain, &old_key),
    );
    // A plain Proxy beside them: nothing to expire, so no alert and no rule brought back.
    let tls = |secret: &str| format!("  tls:\n    secretName: {secret}\n");
    s.write(
        "proxies.yaml",
        &format!(
            "{}---\n{}---\n{}",
            proxy("expiring", host, &by_name(&app.name), &tls("expiring-tls")),
            proxy("gone", gone, &by_name(&app.name), &tls("gone-tls")),
            proxy("plain", "plain.example.test", &by_name(&app.name), "")
        ),
    );
    s.write(
        "rules.yaml",
        &format!(
            "{}---\n{}",
            certificate_rule(
                "soon",
                "60d",
                "expiring, gone, plain",
                &webhook.url("/soon")
            ),
            certificate_rule("quiet", "7d", "expiring, plain", &webhook.url("/quiet"))
        ),
    );
    // A neighbour that cannot notify: its channel does not exist.
    s.write(
        "orphan.yaml",
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: orphan\nspec:\n  \
         certificateExpiry:\n    within: 60d\n    proxies: [gone]\n  groupWait: 0s\n  channels:\n    - name: missing\n",
    );
    let served = s.ready("expiring", "True").await;
    let not_after = served["status"]["certificate"]["notAfter"].clone();
    assert!(not_after.is_string(), "{served}");

    // Both certificates reach the 60-day rule's channel, in one notification or two.
    let alerts = eventually("both certificates told", TIMEOUT, || async {
        let alerts: Vec<Value> = bodies(&webhook)
            .iter()
            .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
            .collect();
        let of = |proxy: &str| alerts.iter().any(|a| a["labels"]["proxy"] == proxy);
        if of("expiring") && of("gone") {
            Ok(alerts)
        } else {
            Err(format!("{alerts:#?}\n{}", s.operator.log()))
        }
    })
    .await;
    let summary_of = |proxy: &str| {
        alerts
            .iter()
            .rev()
            .find(|a| a["labels"]["proxy"] == proxy)
            .and_then(|a| a["annotations"]["summary"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let expiring = summary_of("expiring");
    assert!(
        expiring.starts_with("expires in 29d") || expiring.starts_with("expires in 30d"),
        "{expiring}"
    );
    assert!(expiring.contains(not_after.as_str().unwrap()), "{expiring}");
    let expired = summary_of("gone");
    assert!(
        expired.starts_with("expired 1d") || expired.starts_with("expired 23h"),
        "{expired}"
    );
    assert!(
        alerts
            .iter()
            .all(|a| a["labels"]["condition"] == "certificateExpiry")
    );

    // The 7-day rule has evaluated the 30-day certificate and stays quiet.
    let quiet = eventually("the quiet rule evaluated", TIMEOUT, || async {
        let rule = s
            .operator
            .get("alertrule", "quiet")
            .await
            .map_err(|e| e.to_string())?;
        match rule["status"]["state"].as_str() {
            Some("Inactive") => Ok(rule),
            other => Err(format!("{other:?}: {:#}", rule["status"])),
        }
    })
    .await;
    assert!(quiet["status"]["activeAlerts"].is_null(), "{quiet:#}");
    let soon = s.operator.get("alertrule", "soon").await.unwrap();
    assert_eq!(soon["status"]["state"], "Firing");
    let subjects: Vec<&str> = soon["status"]["activeAlerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["subject"].as_str())
        .collect();
    assert_eq!(
        subjects,
        ["expiring", "gone"],
        "the plain Proxy has nothing to expire"
    );
    assert!(
        webhook.requests().iter().all(|r| r.path == "/soon"),
        "the quiet rule sent nothing"
    );
    // The orphan says why it cannot notify, fires all the same, and retries on the backoff.
    let orphan = s
        .operator
        .wait_for_condition("alertrule", "orphan", "Ready", "False")
        .await;
    let ready = infrapilot_e2e::wait::condition(&orphan, "Ready").unwrap();
    assert_eq!(ready["reason"], "ChannelNotFound", "{ready:#}");
    assert_eq!(orphan["status"]["activeAlerts"][0]["subject"], "gone");
    let fired_at = orphan["status"]["activeAlerts"][0]["firedAt"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_backed_off(s.operator.dir(), "orphan", "missing", fired_at, 15.0).await;
    s.operator.stop().await.unwrap();
}

/// What Slack's incoming webhooks take: a `text`, and attachments with a colour and fields
/// (https://api.slack.com/messaging/webhooks); the receiver checks that shape.
fn slack_shaped(body: &Value) -> Result<(), String> {
    let text = body["text"].as_str().ok_or("no text")?;
    if text.is_empty() {
        return Err("an empty text".into());
    }
    let attachments = body["attachments"].as_array().ok_or("no attachments")?;
    for attachment in attachments {
        let color = attachment["color"]
            .as_str()
            .ok_or("an attachment without colour")?;
        if !(color.len() == 7 && color.starts_with('#')) {
            return Err(format!("colour {color:?} is not #rrggbb"));
        }
        for field in attachment["fields"].as_array().ok_or("no fields")? {
            if !(field["title"].is_string() && field["value"].is_string()) {
                return Err(format!("a field without title or value: {field}"));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_slack_channel_gets_one_coloured_message_per_group() {
    let slack = WebhookServer::start().await.unwrap();
    let dir = infrapilot_e2e::env::test_dir("alert-slack");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let corrupt = dir.join("corrupt.dump");
    std::fs::write(&corrupt, b"not a dump").unwrap();
    let operator = Operator::start(&dir, &["run", "--manifests", "manifests"]).unwrap();
    std::fs::write(
        operator.manifests().join("all.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: slack\nstringData:\n  url: {url}\n\
             ---\napiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: slack\nspec:\n  \
             slack:\n    webhookUrlSecretRef: {{name: slack, key: url}}\n    channel: \"#ops\"\n\
             ---\napiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: backups\nspec:\n  \
             backupValidationFailed: {{}}\n  severity: Critical\n  groupWait: 0s\n  channels:\n    - name: slack\n    - name: broken\n\
             ---\napiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: broken\nspec:\n  \
             slack:\n    webhookUrlSecretRef: {{name: missing, key: url}}\n\
             ---\n{policy}",
            url = slack.url("/services/T0/B0/secret"),
            policy = policy("nightly", &corrupt, "", "  runOnCreate: true\n"),
        ),
    )
    .unwrap();

    let requests = slack.wait_for_requests(1, TIMEOUT).await;
    let body = requests[0].json().unwrap();
    slack_shaped(&body).unwrap_or_else(|e| panic!("{e}: {body:#}"));
    assert_eq!(body["channel"], "#ops");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("[FIRING:1] CRITICAL default/backups"),
        "{body:#}"
    );
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["color"], "#d00000", "critical is red");
    assert_eq!(attachment["fields"][0]["title"], "firing nightly");
    assert!(
        attachment["fields"][0]["value"]
            .as_str()
            .unwrap()
            .contains("1 failed validation run"),
        "{body:#}"
    );
    // The channel whose Secret is missing beside it is shown on the rule and retried on the
    // backoff, never in a loop.
    let rule = operator.get("alertrule", "backups").await.unwrap();
    let ready = infrapilot_e2e::wait::condition(&rule, "Ready").unwrap();
    assert!(
        ["ChannelNotReady", "DeliveryFailed"]
            .contains(&ready["reason"].as_str().unwrap_or_default())
            && ready["message"]
                .as_str()
                .unwrap_or_default()
                .contains("broken"),
        "{ready:#}"
    );
    let fired_at = rule["status"]["activeAlerts"][0]["firedAt"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_backed_off(&dir, "backups", "broken", fired_at, 15.0).await;
    assert_eq!(slack.requests().len(), 1, "the good channel was told once");
    // The rule's status and audit never show the webhook's secret URL.
    assert!(!rule.to_string().contains("/services/T0"), "{rule:#}");
    let records = audit(&dir).await;
    assert!(
        records
            .iter()
            .all(|r| !r.to_string().contains("/services/T0")),
        "{records:#?}"
    );
    operator.stop().await.unwrap();
}

/// A webhook channel `hook` at `url`, a dead one beside it, and the rule `crashes` telling both
/// of every container of the test's Docker scope (3 restarts within 10 m make a loop).
fn crash_rule(scope: &str, url: &str) -> String {
    format!(
        "{}---\n{}---\napiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: crashes\nspec:\n  \
         containerCrash:\n    selector:\n      {}: {scope}\n    restarts: 3\n    window: 10m\n  \
         groupWait: 0s\n  channels:\n    - name: hook\n    - name: dead\n",
        channel("hook", url),
        channel("dead", &closed_url("/dead")),
        infrapilot_e2e::docker::SCOPE_LABEL
    )
}

async fn restart_count(container: &str) -> u64 {
    let output = tokio::process::Command::new("docker")
        .args(["inspect", "--format", "{{.RestartCount}}", container])
        .output()
        .await
        .expect("docker inspect runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn crashes_an_oom_and_a_failing_health_check_fire_a_stop_does_not_and_a_loop_fires_once() {
    let docker = infrapilot_e2e::docker::TestDocker::new("alert-crash").await;
    let scope = docker.labels()[infrapilot_e2e::docker::SCOPE_LABEL].clone();
    let webhook = WebhookServer::start().await.unwrap();
    let dir = infrapilot_e2e::env::test_dir("alert-crash-operator");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let operator = Operator::start(&dir, &["run", "--manifests", "manifests"]).unwrap();
    std::fs::write(
        operator.manifests().join("rule.yaml"),
        crash_rule(&scope, &webhook.url("/crashes")),
    )
    .unwrap();
    // The rule is evaluated, and follows Docker's events, before anything crashes.
    operator
        .wait_for_condition("alertrule", "crashes", "Ready", "True")
        .await;

    let stopped = docker.run_shell("stopped", &[], "sleep 300").await;
    let crasher = docker.run_shell("crasher", &[], "sleep 1; exit 1").await;
    let looper = docker
        .run_shell("looper", &["--restart", "always"], "sleep 0.5; exit 3")
        .await;
    let oom = docker
        .run_shell(
            "oom",
            &["--memory", "32m", "--memory-swap", "32m"],
            "tail /dev/zero",
        )
        .await;
    let sick = docker
        .run_shell(
            "sick",
            &[
                "--health-cmd",
                "false",
                "--health-interval",
                "1s",
                "--health-retries",
                "1",
            ],
            "sleep 300",
        )
        .await;
    let stop = tokio::process::Command::new("docker")
        .args(["stop", "-t", "1", &stopped])
        .output()
        .await
        .unwrap();
    assert!(stop.status.success());

    let expected = [&crasher, &looper, &oom, &sick];
    let rule = eventually("every crash firing", TIMEOUT, || async {
        let rule = operator
            .get("alertrule", "crashes")
            .await
            .map_err(|e| e.to_string())?;
        let active: Vec<String> = rule["status"]["activeAlerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["subject"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if expected.iter().all(|e| active.contains(e)) {
            Ok(rule)
        } else {
            Err(format!("active: {active:?}\n{}", operator.log()))
        }
    })
    .await;
    let message = |subject: &str| {
        rule["status"]["activeAlerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["subject"] == subject)
            .map(|a| a["message"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(message(&crasher), "exited with code 1");
    assert!(message(&oom).starts_with("OOM-killed"), "{}", message(&oom));
    assert_eq!(message(&sick), "health check failing");
    assert!(
        message(&stopped).is_empty(),
        "a stop asked for is no crash: {rule:#}"
    );

    // Every subject reached the channel in Alertmanager's body, the stopped one never.
    let told = bodies(&webhook);
    let firing: std::collections::BTreeSet<String> = told
        .iter()
        .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["status"] == "firing")
        .filter_map(|a| a["labels"]["container"].as_str().map(String::from))
        .collect();
    for subject in expected {
        assert!(firing.contains(subject), "{subject} not told: {firing:?}");
    }
    assert!(!firing.contains(&stopped), "{firing:?}");

    // The loop goes on restarting: three more crashes, and not one more notification.
    let before = restart_count(&looper).await;
    let sent = bodies(&webhook).len();
    eventually("three more restarts of the loop", TIMEOUT, || async {
        let now = restart_count(&looper).await;
        if now >= before + 3 {
            Ok(())
        } else {
            Err(format!("{now} restarts"))
        }
    })
    .await;
    let rule = operator.get("alertrule", "crashes").await.unwrap();
    let looping = rule["status"]["activeAlerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["subject"] == looper.as_str())
        .unwrap()
        .clone();
    assert!(
        looping["message"]
            .as_str()
            .unwrap()
            .starts_with("crash loop: "),
        "{looping:#}"
    );
    assert_eq!(bodies(&webhook).len(), sent, "the loop was told once");
    // The dead channel beside the live one held nothing up and was retried on the backoff.
    let first_fired = rule["status"]["activeAlerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["firedAt"].as_str()?.parse::<jiff::Timestamp>().ok())
        .min()
        .unwrap();
    assert_backed_off(&dir, "crashes", "dead", first_fired, 5.0).await;
    let ready = infrapilot_e2e::wait::condition(&rule, "Ready").unwrap();
    assert_eq!(ready["reason"], "DeliveryFailed", "{ready:#}");
    operator.stop().await.unwrap();
    docker.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_crash_while_the_operator_was_away_fires_once_from_the_relist() {
    let docker = infrapilot_e2e::docker::TestDocker::new("alert-relist").await;
    let scope = docker.labels()[infrapilot_e2e::docker::SCOPE_LABEL].clone();
    let webhook = WebhookServer::start().await.unwrap();
    let crashed = docker.run_shell("early", &[], "exit 5").await;
    let stopped = docker.run_shell("stopped-early", &[], "sleep 300").await;
    let stop = tokio::process::Command::new("docker")
        .args(["stop", "-t", "0", &stopped])
        .output()
        .await
        .unwrap();
    assert!(stop.status.success());
    infrapilot_e2e::docker::finished_at(&crashed, TIMEOUT).await;

    // The operator starts after both ended: the exit nobody asked for fires, the stop not.
    let dir = infrapilot_e2e::env::test_dir("alert-relist-operator");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("manifests/rule.yaml"),
        crash_rule(&scope, &webhook.url("/crashes")),
    )
    .unwrap();
    let operator = Operator::start(&dir, &["run", "--manifests", "manifests"]).unwrap();
    let requests = webhook.wait_for_requests(1, TIMEOUT).await;
    let body = requests[0].json().unwrap();
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{body:#}");
    assert_eq!(
        alerts[0]["labels"]["container"],
        crashed.as_str(),
        "{body:#}"
    );
    assert_eq!(alerts[0]["annotations"]["summary"], "exited with code 5");

    // Started again, it lists the same exit again and tells nobody twice.
    let operator = restarted(operator, &dir, 1).await;
    let rule = operator.get("alertrule", "crashes").await.unwrap();
    assert_eq!(
        rule["status"]["activeAlerts"][0]["subject"],
        crashed.as_str()
    );
    let told: Vec<Value> = webhook
        .requests()
        .iter()
        .filter_map(|r| r.json().ok())
        .collect();
    assert_eq!(told.len(), 1, "told once: {told:#?}\n{}", operator.log());
    operator.stop().await.unwrap();
    docker.cleanup().await.unwrap();
}

/// The operator's Docker event stream is cut (its connection closed, new ones refused), a
/// container crashes meanwhile, and the stream comes back: the re-list at the reconnect fires
/// the crash once, to the live channel, while the dead one beside it backs off. Cut and
/// restored again, the operator lists the same exit again and tells nobody twice.
#[tokio::test]
async fn a_crash_while_the_event_stream_was_cut_fires_once_when_it_comes_back() {
    use infrapilot_e2e::docker::DockerLink;
    let docker = infrapilot_e2e::docker::TestDocker::new("alert-cut").await;
    let scope = docker.labels()[infrapilot_e2e::docker::SCOPE_LABEL].clone();
    let webhook = WebhookServer::start().await.unwrap();
    let dir = infrapilot_e2e::env::test_dir("alert-cut-operator");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let link = DockerLink::start(&dir.join("docker.sock")).await;
    let host = format!("unix://{}", dir.join("docker.sock").display());
    std::fs::write(
        dir.join("manifests/rule.yaml"),
        crash_rule(&scope, &webhook.url("/crashes")),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let operator = Operator::start_with_env(
        &dir,
        &[
            "run",
            "--manifests",
            "manifests",
            "--probe-address",
            "127.0.0.1:0",
        ],
        &[("DOCKER_HOST", &host)],
    )
    .unwrap();
    // The rule is evaluated, so the operator listed the containers and follows the events
    // through the link.
    operator
        .wait_for_condition("alertrule", "crashes", "Ready", "True")
        .await;
    let through = link.requests_since(started);
    assert!(
        through.iter().any(|r| r.contains("/events")),
        "the event stream goes through the link: {through:?}"
    );

    // Cut; a container exits 3 while the operator cannot hear of it.
    let cut = std::time::Instant::now();
    link.cut();
    let crashed = docker.run_shell("cut", &[], "exit 3").await;
    infrapilot_e2e::docker::finished_at(&crashed, TIMEOUT).await;
    assert!(bodies(&webhook).is_empty(), "nothing could be known yet");
    link.restore();

    // Back: the re-list finds the exit, and the live channel is told once.
    let fired = eventually(
        "the crash told after the stream came back",
        TIMEOUT,
        || async {
            bodies(&webhook)
                .into_iter()
                .next()
                .ok_or_else(|| format!("{:?}", link.requests_since(cut)))
        },
    )
    .await;
    let alerts = fired["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{fired:#}");
    assert_eq!(alerts[0]["labels"]["container"], crashed.as_str());
    assert_eq!(alerts[0]["annotations"]["summary"], "exited with code 3");
    let relisted = link.requests_since(cut);
    assert!(
        relisted.iter().any(|r| r.contains("/containers/json")),
        "found by a list after the reconnect: {relisted:?}"
    );

    // Cut and restored again: the same exit is listed again, the rule evaluated on it, and
    // nothing is sent twice.
    let again = std::time::Instant::now();
    link.cut();
    link.restore();
    eventually("the re-list after the second cut", TIMEOUT, || async {
        let requests = link.requests_since(again);
        if requests.iter().any(|r| r.contains("/containers/json")) {
            Ok(())
        } else {
            Err(format!("{requests:?}"))
        }
    })
    .await;
    let reconciles = operator.reconciles("alertrule").await.unwrap();
    eventually("the rule evaluated on the new list", TIMEOUT, || async {
        match operator.reconciles("alertrule").await? {
            n if n > reconciles => Ok(()),
            n => Err(format!("{n} reconciles")),
        }
    })
    .await;
    let firing = bodies(&webhook)
        .into_iter()
        .filter(|b| b["status"] == "firing")
        .count();
    assert_eq!(firing, 1, "told once: {:#?}", bodies(&webhook));

    // The dead channel beside it was retried on the backoff, not in a loop.
    let rule = operator.get("alertrule", "crashes").await.unwrap();
    let fired_at = rule["status"]["activeAlerts"][0]["firedAt"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_backed_off(&dir, "crashes", "dead", fired_at, 5.0).await;
    operator.stop().await.unwrap();
    docker.cleanup().await.unwrap();
}

fn error_rule(name: &str, condition: &str, url: &str) -> String {
    format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: {name}-hook\nspec:\n  webhook:\n    url: {url}\n\
         ---\napiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: {name}\nspec:\n  \
         {condition}\n  groupWait: 0s\n  sendResolved: true\n  channels:\n    - name: {name}-hook\n"
    )
}

/// The alerts of every body the receiver got on `path`, with the body's status.
fn alerts_on(webhook: &WebhookServer, path: &str) -> Vec<Value> {
    let bodies: Vec<Value> = webhook
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| r.json().ok())
        .filter(|b: &Value| b["version"] == "4")
        .collect();
    for body in &bodies {
        if let Err(error) = infrapilot_e2e::alertmanager::payload(body) {
            panic!("{error}");
        }
    }
    bodies
        .iter()
        .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn error_rates_through_the_edge_fire_and_resolve_and_quiet_rules_beside_them_stay_quiet() {
    use crate::proxy::{by_name, proxy, setup};
    use infrapilot_e2e::docker::{ContainerSpec, images};

    let s = setup("alert-errors").await;
    let webhook = WebhookServer::start().await.unwrap();
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let (shop, calm) = ("shop.example.test", "calm.example.test");
    s.write(
        "proxies.yaml",
        &format!(
            "{}---\n{}",
            proxy("shop", shop, &by_name(&app.name), ""),
            proxy("calm", calm, &by_name(&app.name), "")
        ),
    );
    let rate = |proxy: &str, min: u32| {
        format!(
            "errorRate:\n    proxy: {proxy}\n    thresholdPercent: 20\n    window: 30s\n    minRequests: {min}"
        )
    };
    s.write(
        "rules.yaml",
        &[
            error_rule("shop-rate", &rate("shop", 20), &webhook.url("/rate")),
            error_rule(
                "shop-spike",
                "errorSpike:\n    proxy: shop\n    factor: 3\n    window: 20s\n    baseline: 2m\n    minErrors: 5",
                &webhook.url("/spike"),
            ),
            // Neighbours: the same traffic under minRequests, and a Proxy with no traffic.
            error_rule("shop-few", &rate("shop", 1000), &webhook.url("/few")),
            error_rule("calm-rate", &rate("calm", 1), &webhook.url("/calm")),
        ]
        .join("---\n"),
    );
    s.ready("shop", "True").await;
    s.ready("calm", "True").await;
    // The rules evaluate once the edge's output is read.
    for rule in ["shop-rate", "shop-spike", "shop-few", "calm-rate"] {
        let evaluated = s
            .operator
            .wait_for_condition("alertrule", rule, "Ready", "True")
            .await;
        assert_eq!(evaluated["status"]["state"], "Inactive", "{evaluated:#}");
    }

    // The edge logs to its output, which Docker rotates.
    let edge = s
        .docker
        .client()
        .inspect_container(&s.edge.name, None)
        .await
        .unwrap();
    let log = edge.host_config.and_then(|h| h.log_config).unwrap();
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    let config = log.config.unwrap_or_default();
    assert_eq!(
        (config["max-size"].as_str(), config["max-file"].as_str()),
        ("10m", "3")
    );

    // Half of 60 requests answer 500.
    for n in 0..60 {
        let path = if n % 2 == 0 { "/status/500" } else { "/" };
        let (status, _) = s.edge.get_path(shop, path).await.unwrap();
        assert_eq!(status, if n % 2 == 0 { 500 } else { 200 });
    }
    let fired_at = jiff::Timestamp::now();
    for path in ["/rate", "/spike"] {
        eventually(&format!("a firing alert on {path}"), TIMEOUT, || async {
            let alerts = alerts_on(&webhook, path);
            match alerts.iter().find(|a| a["status"] == "firing") {
                Some(alert) if alert["labels"]["proxy"] == "shop" => Ok(()),
                _ => Err(format!("{alerts:#?}\n{}", s.operator.log())),
            }
        })
        .await;
    }
    // The values, once a complete bucket holds all 60 requests (the first evaluation may
    // have seen the part of them before a bucket boundary).
    // The spike's 20 s window first: it holds all of them for the shorter time.
    for (rule, value) in [
        (
            "shop-spike",
            "30 5xx in 20s, 0.0 expected from the baseline",
        ),
        ("shop-rate", "50.0% 5xx (30 of 60) over 30s"),
    ] {
        eventually(&format!("{rule} showing {value:?}"), TIMEOUT, || async {
            let rule = s
                .operator
                .get("alertrule", rule)
                .await
                .map_err(|e| e.to_string())?;
            match rule["status"]["activeAlerts"][0]["message"].as_str() {
                Some(message) if message == value => Ok(()),
                _ => Err(format!("{:#}", rule["status"])),
            }
        })
        .await;
    }

    // Once the errors leave the windows, both resolve and say so, once.
    for path in ["/rate", "/spike"] {
        eventually(&format!("a resolution on {path}"), TIMEOUT, || async {
            let alerts = alerts_on(&webhook, path);
            if alerts.iter().any(|a| a["status"] == "resolved") {
                Ok(())
            } else {
                Err(format!("{alerts:#?}"))
            }
        })
        .await;
    }
    let resolved_after = jiff::Timestamp::now().duration_since(fired_at);
    for path in ["/rate", "/spike"] {
        let statuses: Vec<Value> = alerts_on(&webhook, path)
            .iter()
            .map(|a| a["status"].clone())
            .collect();
        assert_eq!(statuses, ["firing", "resolved"], "{path}");
    }
    assert!(
        resolved_after.as_secs() < 120,
        "resolved {resolved_after:?} after the traffic"
    );
    // The neighbours evaluated the same traffic and sent nothing.
    for (rule, path) in [("shop-few", "/few"), ("calm-rate", "/calm")] {
        let quiet = s.operator.get("alertrule", rule).await.unwrap();
        assert_eq!(quiet["status"]["state"], "Inactive", "{quiet:#}");
        assert!(alerts_on(&webhook, path).is_empty(), "{rule} sent nothing");
    }
    s.operator.stop().await.unwrap();
}
