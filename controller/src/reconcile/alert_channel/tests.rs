use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::delivery::DeliveryError;
use crate::reconcile::tests_support::{Recorder, context};
use crate::secrets::SecretMap;

fn channel(yaml_spec: &str, generation: i64) -> AlertChannel {
    let mut channel = AlertChannel::new("ops", serde_saphyr::from_str(yaml_spec).unwrap());
    channel.metadata.namespace = Some("default".to_owned());
    channel.metadata.uid = Some("7f0c".to_owned());
    channel.metadata.generation = Some(generation);
    channel
}

const WEBHOOK: &str = "webhook:\n  url: http://127.0.0.1:9/hook\nverify: true\n";

fn ready(status: &AlertChannelStatus) -> (String, String) {
    let c = status.conditions.get(crate::status::READY).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn without_verify_a_valid_channel_is_ready_and_nothing_is_sent() {
    let recorder = Arc::new(Recorder::default());
    let ch = channel("webhook:\n  url: http://127.0.0.1:9/hook\n", 1);
    let applied = reconcile(&ch, &context(&recorder, SecretMap::default())).await;
    assert_eq!(
        ready(&applied.status),
        ("True".to_owned(), "Configured".to_owned())
    );
    assert_eq!(applied.status.type_.as_deref(), Some("webhook"));
    assert!(recorder.deliveries.lock().unwrap().is_empty());
    assert!(recorder.audit.lock().unwrap().is_empty());
}

#[tokio::test]
async fn verification_is_sent_once_per_generation_and_audited() {
    let recorder = Arc::new(Recorder::default());
    let ctx = context(&recorder, SecretMap::default());
    let mut ch = channel(WEBHOOK, 1);
    let applied = reconcile(&ch, &ctx).await;
    assert_eq!(
        ready(&applied.status),
        ("True".to_owned(), "Verified".to_owned())
    );
    assert!(applied.status.verified);
    assert_eq!(applied.status.observed_generation, Some(1));
    assert_eq!(applied.failure, None);

    // The same generation again (a resync, or a restart with the stored status): nothing is sent.
    ch.status = Some(applied.status.clone());
    let again = reconcile(&ch, &ctx).await;
    assert_eq!(again.status, applied.status);
    assert_eq!(recorder.deliveries.lock().unwrap().len(), 1);

    // A spec change is verified anew.
    ch.metadata.generation = Some(2);
    let changed = reconcile(&ch, &ctx).await;
    assert_eq!(changed.status.observed_generation, Some(2));
    assert_eq!(recorder.deliveries.lock().unwrap().len(), 2);

    let audit = recorder.audit.lock().unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].action, "notification.send");
    assert_eq!(audit[0].target, "webhook http://127.0.0.1:9");
    assert_eq!(audit[0].object.uid, "7f0c");
    assert_eq!(recorder.events.lock().unwrap()[0].reason, "Verified");
}

#[tokio::test]
async fn a_failed_delivery_makes_the_channel_not_ready_and_retries_with_backoff() {
    let recorder = Arc::new(Recorder::default());
    let unreachable = || {
        Err(DeliveryError::Unreachable {
            target: "webhook http://127.0.0.1:9".to_owned(),
            reason: "connection refused".to_owned(),
        })
    };
    recorder
        .answers
        .lock()
        .unwrap()
        .extend([unreachable(), unreachable()]);
    let ctx = context(&recorder, SecretMap::default());
    let mut ch = channel(WEBHOOK, 1);

    let first = reconcile(&ch, &ctx).await;
    assert_eq!(
        ready(&first.status),
        ("False".to_owned(), "Unreachable".to_owned())
    );
    assert_eq!(first.status.delivery_failures, 1);
    assert_eq!(first.requeue, Requeue::After(Duration::from_secs(5)));
    assert_eq!(
        first.failure.as_ref().map(|f| f.category),
        Some(Category::Unreachable)
    );
    let message = &first.status.conditions.get("Ready").unwrap().message;
    assert_eq!(
        message,
        "could not reach webhook http://127.0.0.1:9: connection refused"
    );

    ch.status = Some(first.status);
    let second = reconcile(&ch, &ctx).await;
    assert_eq!(second.status.delivery_failures, 2);
    assert_eq!(second.requeue, Requeue::After(Duration::from_secs(10)));

    ch.status = Some(second.status);
    let recovered = reconcile(&ch, &ctx).await;
    assert_eq!(
        ready(&recovered.status),
        ("True".to_owned(), "Verified".to_owned())
    );
    assert_eq!(recovered.status.delivery_failures, 0);
    assert_eq!(
        recorder.audit.lock().unwrap()[0].outcome,
        crate::audit::Outcome::Failure
    );
    assert_eq!(recorder.events.lock().unwrap()[0].type_, EventType::Warning);
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_nothing_is_sent() {
    let recorder = Arc::new(Recorder::default());
    let spec = "slack:\n  webhookUrlSecretRef: {name: slack, key: url}\nverify: true\n";
    let applied = reconcile(&channel(spec, 1), &context(&recorder, SecretMap::default())).await;
    assert_eq!(
        ready(&applied.status),
        ("False".to_owned(), "SecretUnavailable".to_owned())
    );
    let message = &applied.status.conditions.get("Ready").unwrap().message;
    assert_eq!(
        message,
        "spec.slack.webhookUrlSecretRef: Secret default/slack does not exist"
    );
    assert!(recorder.deliveries.lock().unwrap().is_empty());

    // Once the Secret exists, the channel verifies; the secret URL appears nowhere in status.
    let secrets = SecretMap::default();
    secrets.insert(
        "default",
        "slack",
        BTreeMap::from([("url".to_owned(), b"https://hooks.example/T/SECRET".to_vec())]),
    );
    let applied = reconcile(&channel(spec, 1), &context(&recorder, secrets)).await;
    assert_eq!(ready(&applied.status).0, "True");
    assert!(
        !serde_json::to_string(&applied.status)
            .unwrap()
            .contains("SECRET")
    );
}

#[test]
fn an_unreachable_endpoint_is_retried_from_five_seconds_doubling_to_ten_minutes() {
    let delays: Vec<u64> = (1..=10)
        .map(|n| Category::Unreachable.delay(n).as_secs())
        .collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
}
