//! The AlertRule pipeline on in-memory objects and a recording notifier: what fires, what is
//! sent (Alertmanager's body to webhooks), what the status keeps, and what a missing or
//! failing channel does.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::api::alert::AlertState;
use crate::api::backup::BackupValidationPolicy;
use crate::delivery::{DeliveryError, MessageKind};
use crate::reconcile::tests_support::{MemoryDocker, MemoryObjects, Recorder, context, fixed_now};
use crate::secrets::SecretMap;
use crate::telemetry::Metrics;

fn docker() -> Arc<MemoryDocker> {
    Arc::new(MemoryDocker::with(Vec::new(), Vec::new()))
}

fn rule(spec: serde_json::Value, status: Option<&AlertRuleStatus>) -> AlertRule {
    let mut object = json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertRule",
        "metadata": {"name": "backups", "namespace": "shop", "uid": "rule-uid", "generation": 1},
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = serde_json::to_value(status).unwrap();
    }
    serde_json::from_value(object).unwrap()
}

fn backup_rule() -> serde_json::Value {
    json!({
        "backupValidationFailed": {"consecutiveFailures": 2},
        "groupWait": "0s",
        "channels": [{"name": "hook"}],
    })
}

fn policy(name: &str, failures: u32) -> BackupValidationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"schedule": "30 3 * * *", "source": {"path": "/backups/app.dump"}},
        "status": {"consecutiveFailures": failures},
    }))
    .unwrap()
}

fn hook() -> AlertChannel {
    serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "hook", "namespace": "shop"},
        "spec": {"webhook": {"url": "http://127.0.0.1:9/hook"}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Configured",
            "message": "ok", "lastTransitionTime": "2027-01-01T00:00:00Z"}]},
    }))
    .unwrap()
}

fn ready(status: &AlertRuleStatus) -> (String, String, String) {
    let c = status.conditions.get("Ready").expect("a Ready condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_failing_policy_fires_notifies_once_and_resolves_on_success() {
    let objects = Arc::new(MemoryObjects::with([
        policy("nightly", 2),
        policy("weekly", 1),
    ]));
    objects.put(&hook());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let metrics = Arc::new(Metrics::new());
    let rules = AlertRules::new(objects.port(), docker(), metrics.clone(), "edge".to_owned());
    let gauge = |state: &str| {
        let series =
            format!("infrapilot_alerts{{namespace=\"shop\",rule=\"backups\",state=\"{state}\"}} ");
        let text = metrics.encode();
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()).map(str::to_owned))
    };

    let applied = rules.reconcile(&rule(backup_rule(), None), &ctx).await;
    assert_eq!(gauge("firing").as_deref(), Some("1"));
    assert_eq!(gauge("pending").as_deref(), Some("0"));
    // Told; the next look is the repeat.
    assert_eq!(
        applied.requeue,
        Requeue::After(Duration::from_secs(4 * 3600))
    );
    let status = applied.status;
    assert_eq!(status.state, Some(AlertState::Firing));
    assert_eq!(status.active_alerts.len(), 1, "only nightly failed twice");
    assert_eq!(status.active_alerts[0].subject, "nightly");
    assert_eq!(ready(&status).0, "True");
    assert_eq!(status.channels[0].notified, ["nightly"]);
    assert_eq!(
        status.last_notification_time.as_ref().unwrap().0,
        fixed_now()
    );
    {
        let deliveries = recorder.deliveries.lock().unwrap();
        assert_eq!(deliveries.len(), 1);
        let message = &deliveries[0].1;
        assert_eq!(message.kind, MessageKind::Firing);
        assert!(message.title.contains("[FIRING:1]") && message.title.contains("nightly"));
        let group = message.alerts.as_ref().expect("Alertmanager's group");
        assert_eq!(group.receiver, "hook");
        assert_eq!(group.alerts[0].labels["policy"], "nightly");
        assert_eq!(group.alerts[0].labels["alertname"], "backups");
    }
    let audit = recorder.audit.lock().unwrap().clone();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "notification.send");
    assert!(
        audit[0].detail.contains("firing: nightly"),
        "{}",
        audit[0].detail
    );

    // Again with the status it wrote: nothing new is sent, and the status does not move.
    let again = rules
        .reconcile(&rule(backup_rule(), Some(&status)), &ctx)
        .await;
    assert_eq!(again.status, status);
    assert_eq!(recorder.deliveries.lock().unwrap().len(), 1);

    // A run succeeds: the alert resolves and the channel is told.
    objects.put(&policy("nightly", 0));
    let resolved = rules
        .reconcile(&rule(backup_rule(), Some(&status)), &ctx)
        .await;
    assert_eq!(resolved.status.state, Some(AlertState::Inactive));
    assert!(resolved.status.active_alerts.is_empty());
    assert!(
        resolved.status.resolved_alerts.is_empty(),
        "told, so forgotten"
    );
    {
        let deliveries = recorder.deliveries.lock().unwrap();
        assert_eq!(deliveries.len(), 2);
        assert_eq!(deliveries[1].1.kind, MessageKind::Resolved);
        assert_eq!(deliveries[1].1.alerts.as_ref().unwrap().status, "resolved");
    }
    assert_eq!(gauge("firing").as_deref(), Some("0"));
    // The rule is deleted and made again under its name: the old uid's going leaves the new
    // one's series; the new one's going takes them.
    let mut again = rule(backup_rule(), Some(&resolved.status));
    again.metadata.uid = Some("rule-uid-2".into());
    rules.reconcile(&again, &ctx).await;
    rules.forget("rule-uid");
    assert_eq!(gauge("firing").as_deref(), Some("0"));
    rules.forget("rule-uid-2");
    assert_eq!(gauge("firing"), None);
    assert_eq!(gauge("pending"), None);
}

#[tokio::test]
async fn a_missing_channel_is_shown_and_its_delivery_retried_on_the_backoff() {
    let objects = Arc::new(MemoryObjects::with([policy("nightly", 3)]));
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let rules = AlertRules::new(objects.port(), docker(), Arc::default(), "edge".to_owned());

    let applied = rules.reconcile(&rule(backup_rule(), None), &ctx).await;
    assert_eq!(applied.status.state, Some(AlertState::Firing));
    let (status, reason, message) = ready(&applied.status);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ChannelNotFound")
    );
    assert!(message.contains("hook"), "{message}");
    let log = &applied.status.channels[0];
    assert_eq!(log.failures, 1);
    assert!(log.notified.is_empty());
    // Config's schedule: 15 s after the first failure.
    assert_eq!(applied.requeue, Requeue::After(Duration::from_secs(15)));
    assert!(applied.failure.is_some());
    assert!(recorder.deliveries.lock().unwrap().is_empty());
    let events = recorder.events.lock().unwrap().clone();
    assert_eq!(events[0].reason, "NotificationFailed");
}

#[tokio::test]
async fn a_refused_delivery_is_kept_owed_and_sent_when_the_retry_falls_due() {
    let objects = Arc::new(MemoryObjects::with([policy("nightly", 2)]));
    objects.put(&hook());
    let recorder = Arc::new(Recorder::default());
    recorder
        .answers
        .lock()
        .unwrap()
        .push(Err(DeliveryError::Unreachable {
            target: "webhook http://127.0.0.1:9".into(),
            reason: "connection refused".into(),
        }));
    let ctx = context(&recorder, SecretMap::default());
    let rules = AlertRules::new(objects.port(), docker(), Arc::default(), "edge".to_owned());

    let failed = rules.reconcile(&rule(backup_rule(), None), &ctx).await;
    let (_, reason, message) = ready(&failed.status);
    assert_eq!(reason, "DeliveryFailed");
    assert!(message.contains("connection refused"), "{message}");
    assert_eq!(failed.requeue, Requeue::After(Duration::from_secs(5)));
    // Before the retry is due (same instant), nothing is tried again.
    let early = rules
        .reconcile(&rule(backup_rule(), Some(&failed.status)), &ctx)
        .await;
    assert_eq!(recorder.deliveries.lock().unwrap().len(), 1);
    assert_eq!(early.status.channels[0].failures, 1);
}

/// The next rule a follower brings back.
pub(super) async fn brought_back(
    receiver: &mut UnboundedReceiver<(String, String)>,
) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("the rule is brought back")
        .expect("the follower runs")
}

#[tokio::test]
async fn an_error_rate_rule_waits_for_the_edge_then_fires_on_its_own_proxy_only() {
    let objects = Arc::new(MemoryObjects::with([hook()]));
    let recorder = Arc::new(Recorder::default());
    let mut ctx = context(&recorder, SecretMap::default());
    // The follower reads the edge's history up to the real clock.
    ctx.now = jiff::Timestamp::now;
    let docker = docker();
    let rules = AlertRules::new(
        objects.port(),
        docker.clone(),
        Arc::default(),
        "edge".to_owned(),
    );
    let mut triggers = rules.triggers().expect("triggers");
    let spec = |proxy: &str| {
        json!({"errorRate": {"proxy": proxy, "thresholdPercent": 10, "window": "1m",
            "minRequests": 20}, "groupWait": "0s", "channels": [{"name": "hook"}]})
    };
    let shop = rule(spec("shop"), None);

    // Before the edge was read, nothing is known: the rule says nothing new.
    let first = rules.reconcile(&shop, &ctx).await;
    assert!(first.status.conditions.get("Ready").is_none(), "{first:?}");
    assert_eq!(first.requeue, Requeue::OnChange);
    // There is no edge: the rule says why, and keeps its alerts.
    brought_back(&mut triggers).await;
    let unknown = rules.reconcile(&shop, &ctx).await;
    let (status, reason, message) = ready(&unknown.status);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TrafficUnknown")
    );
    assert!(message.contains("does not exist yet"), "{message}");

    // The edge, with 40 requests of shop/shop in the last minute (10 of them 500), and as
    // many 500s of a Proxy of the same name in another namespace.
    let now = jiff::Timestamp::now();
    let line = |ago: i64, proxy: &str, status: u16| {
        // Docker's times are nanoseconds apart at least, and in order.
        let time = now - jiff::SignedDuration::from_secs(ago)
            + jiff::SignedDuration::from_millis(i64::from(proxy.starts_with("other")));
        let nginx = time.strftime("%Y-%m-%dT%H:%M:%S+00:00");
        crate::docker::LogLine {
            time,
            line: format!(r#"{{"time":"{nginx}","proxy":"{proxy}","status":{status}}}"#)
                .into_bytes(),
        }
    };
    {
        let mut state = docker.state.lock().unwrap();
        for ago in (16..56).rev() {
            state
                .output
                .push(line(ago, "shop/shop", if ago % 4 == 0 { 500 } else { 200 }));
            state.output.push(line(ago, "other/shop", 500));
        }
    }
    docker
        .create(&crate::docker::NewContainer {
            name: "edge".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    brought_back(&mut triggers).await;
    let fired = rules
        .reconcile(&rule(spec("shop"), Some(&unknown.status)), &ctx)
        .await;
    assert_eq!(fired.status.active_alerts.len(), 1, "{fired:?}");
    let alert = &fired.status.active_alerts[0];
    assert_eq!(alert.state, AlertState::Firing);
    assert_eq!(alert.subject, "shop");
    assert_eq!(alert.message, "25.0% 5xx (10 of 40) over 1m");
    assert_eq!(recorder.deliveries.lock().unwrap().len(), 1);
    assert_eq!(ready(&fired.status).1, "Evaluated");
    // The window still holds traffic: the rule comes back when the next bucket is complete.
    match fired.requeue {
        Requeue::After(after) => assert!(after <= Duration::from_secs(11), "{after:?}"),
        other => panic!("{other:?}"),
    }

    // A rule on a Proxy without traffic, beside it: evaluated, quiet, and waiting for traffic.
    let mut quiet = rule(spec("quiet"), None);
    quiet.metadata.name = Some("quiet".to_owned());
    let quiet = rules.reconcile(&quiet, &ctx).await;
    assert!(quiet.status.active_alerts.is_empty());
    assert_eq!(ready(&quiet.status).1, "Evaluated");
    assert_eq!(quiet.requeue, Requeue::OnChange);
}

#[tokio::test]
async fn a_bad_duration_is_refused_naming_the_field() {
    let objects = Arc::new(MemoryObjects::default());
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let rules = AlertRules::new(objects.port(), docker(), Arc::default(), "edge".to_owned());
    let mut spec = backup_rule();
    spec["repeatInterval"] = json!("10s");
    let applied = rules.reconcile(&rule(spec, None), &ctx).await;
    let (status, reason, message) = ready(&applied.status);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.starts_with("spec.repeatInterval:"), "{message}");
    // Traffic is kept for at most an hour of window and a day of baseline.
    for (condition, field) in [
        (
            json!({"errorRate": {"proxy": "shop", "thresholdPercent": 5, "window": "2h"}}),
            "spec.errorRate.window",
        ),
        (
            json!({"errorSpike": {"proxy": "shop", "baseline": "2d"}}),
            "spec.errorSpike.baseline",
        ),
        (
            json!({"errorSpike": {"proxy": "shop", "window": "5s"}}),
            "spec.errorSpike.window",
        ),
    ] {
        let mut spec = condition;
        spec["channels"] = json!([{"name": "hook"}]);
        let applied = rules.reconcile(&rule(spec, None), &ctx).await;
        let (_, reason, message) = ready(&applied.status);
        assert_eq!(reason, "InvalidSpec");
        assert!(message.starts_with(&format!("{field}:")), "{message}");
    }
}

#[test]
fn a_change_brings_back_only_the_rules_it_can_concern() {
    let relations = AlertRules::relations();
    let froms: Vec<Kind> = relations.iter().map(|r| r.from).collect();
    assert_eq!(froms, [Kind::Proxy, Kind::BackupValidationPolicy]);
    // A TLS Proxy brings back the certificate rules of its namespace; a plain one nothing.
    let tls = json!({"metadata": {"name": "shop", "namespace": "team-a"},
        "spec": {"tls": {"secretName": "shop-tls"}}});
    assert_eq!(
        (relations[0].map)(&tls),
        [("team-a".to_owned(), EVERY.to_owned())]
    );
    let plain = json!({"metadata": {"name": "shop", "namespace": "team-a"}, "spec": {}});
    assert!((relations[0].map)(&plain).is_empty());
    // A policy brings back the backup rules once a run of it ended, not at its first status.
    let fresh = json!({"metadata": {"name": "p", "namespace": "team-a"},
        "status": {"consecutiveFailures": 0}});
    assert!((relations[1].map)(&fresh).is_empty());
    let ran = json!({"metadata": {"name": "p", "namespace": "team-a"},
        "status": {"lastCompletedRun": {"name": "p-1", "phase": "Failed"}}});
    assert_eq!(
        (relations[1].map)(&ran),
        [("team-a".to_owned(), EVERY.to_owned())]
    );
    let certificates = json!({"spec": {"certificateExpiry": {"within": "14d"}}});
    let backups = json!({"spec": {"backupValidationFailed": {}}});
    let proxies_every = relations[0].every.unwrap();
    let policies_every = relations[1].every.unwrap();
    assert!(proxies_every(&certificates) && !proxies_every(&backups));
    assert!(policies_every(&backups) && !policies_every(&certificates));
}

#[test]
fn traffic_only_in_the_bucket_being_filled_is_evaluated_once_that_bucket_is_complete() {
    let settings = decide::validate(
        &rule(
            json!({"errorRate": {"proxy": "shop", "thresholdPercent": 10, "window": "30s",
                "minRequests": 1}, "channels": [{"name": "hook"}]}),
            None,
        )
        .spec,
        "shop",
    )
    .unwrap();
    let mut traffic = crate::alert::traffic::Traffic::default();
    traffic.watch(&std::collections::HashMap::from([(
        "shop/shop".to_owned(),
        Duration::from_secs(30),
    )]));
    // 12:00:03, in the bucket 12:00:00 to 12:00:10.
    let now: jiff::Timestamp = "2026-12-04T12:00:03Z".parse().unwrap();
    traffic.record(br#"{"time":"2026-12-04T12:00:02+00:00","proxy":"shop/shop","status":500}"#);
    let crashes = Crashes::default();
    let outside = Outside {
        crashes: &crashes,
        traffic: &traffic,
    };
    let evaluate = |now| decide::evaluate(&settings.condition, &Watched::default(), &outside, now);
    let filling = evaluate(now);
    assert!(filling.observed.is_empty(), "not complete yet");
    assert_eq!(
        filling.changes_at,
        Some("2026-12-04T12:00:11Z".parse().unwrap())
    );
    let complete = evaluate("2026-12-04T12:00:11Z".parse().unwrap());
    assert_eq!(complete.observed.len(), 1);
    assert_eq!(complete.observed[0].message, "100.0% 5xx (1 of 1) over 30s");
    // Once the window has passed it, nothing holds and nothing is left to wait for.
    let later = evaluate("2026-12-04T12:01:00Z".parse().unwrap());
    assert_eq!((later.observed.len(), later.changes_at), (0, None));
}
