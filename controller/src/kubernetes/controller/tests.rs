//! The requests one reconcile makes, pinned against a scripted API server.

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::json;

use super::*;
use crate::api::alert::{AlertChannel, AlertChannelStatus};
use crate::kubernetes::mock::{ApiServer, Reply};
use crate::reconcile::alert_channel::AlertChannels;
use crate::reconcile::tests_support::{Recorder, context};
use crate::reconcile::{Applied, Context, Requeue};
use crate::secrets::SecretMap;
use crate::telemetry::Metrics;

const OBJECT: &str = "/apis/infrapilot.io/v1alpha1/namespaces/default/alertchannels/ops";

fn channel() -> AlertChannel {
    let mut channel = AlertChannel::new(
        "ops",
        serde_saphyr::from_str("webhook:\n  url: http://127.0.0.1:9/hook\n").unwrap(),
    );
    channel.metadata.namespace = Some("default".to_owned());
    channel.metadata.uid = Some("u-1".to_owned());
    channel.metadata.generation = Some(2);
    channel
}

fn shared<R: Reconciler>(
    reconciler: R,
    client: kube::Client,
    recorder: &Arc<Recorder>,
) -> Arc<Shared<R>> {
    Arc::new(Shared {
        driver: Driver::new(
            reconciler,
            context(recorder, SecretMap::default()),
            Arc::new(Metrics::new()),
        ),
        client,
        events: recorder.clone(),
        resync: Duration::from_secs(600),
        written: Mutex::default(),
    })
}

/// A reconciler that owns something outside its object, to exercise the finalizer.
#[derive(Default)]
struct Guarded {
    reconciles: AtomicU32,
    cleanups: AtomicU32,
}

#[async_trait::async_trait]
impl Reconciler for Guarded {
    type Object = AlertChannel;
    type Status = AlertChannelStatus;
    const CONTROLLER: &'static str = "guarded";
    const FINALIZER: Option<&'static str> = Some("infrapilot.io/guarded");

    fn status(object: &AlertChannel) -> Option<&AlertChannelStatus> {
        object.status.as_ref()
    }

    fn set_status(object: &mut AlertChannel, status: AlertChannelStatus) {
        object.status = Some(status);
    }

    async fn reconcile(
        &self,
        object: &AlertChannel,
        _ctx: &Context,
    ) -> Applied<AlertChannelStatus> {
        self.reconciles.fetch_add(1, Ordering::SeqCst);
        Applied {
            status: AlertChannelStatus {
                observed_generation: object.metadata.generation,
                ..Default::default()
            },
            requeue: Requeue::OnChange,
            failure: None,
        }
    }

    async fn cleanup(&self, _object: &AlertChannel, _ctx: &Context) -> Result<(), Failure> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A JSON patch of the object's metadata, as the finalizer helper sends it.
fn json_patch(body: serde_json::Value) -> Reply {
    Reply::new(
        "PATCH",
        &format!("{OBJECT}?"),
        200,
        serde_json::to_value(channel()).unwrap(),
    )
    .with_content_type("application/json-patch+json")
    .with_body(body)
}

fn guard(object: AlertChannel) -> Arc<DeserializeGuard<AlertChannel>> {
    Arc::new(DeserializeGuard(Ok(object)))
}

#[tokio::test]
async fn an_alert_channel_gets_its_status_applied_and_no_finalizer() {
    let (client, server) = ApiServer::new();
    let status_patch = Reply::new(
        "PATCH",
        &format!("{OBJECT}/status?&force=true&fieldManager=infrapilot.io%2Falertchannel"),
        200,
        serde_json::to_value(channel()).unwrap(),
    )
    .with_content_type("application/apply-patch+yaml")
    .with_body_field("/status/observedGeneration", json!(2))
    .with_body_field("/status/conditions/0/type", json!("Ready"))
    .with_body_field("/status/conditions/0/reason", json!("Configured"));
    let task = tokio::spawn(server.run(vec![status_patch]));
    let recorder = Arc::new(Recorder::default());
    let action = reconcile(guard(channel()), shared(AlertChannels, client, &recorder))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    task.await.unwrap();
}

#[tokio::test]
async fn a_status_write_that_failed_is_made_again_on_the_next_reconcile() {
    let (client, server) = ApiServer::new();
    let path = format!("{OBJECT}/status?&force=true&fieldManager=infrapilot.io%2Falertchannel");
    let refused = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Conflict", "code": 409, "message": "conflict"});
    let task = tokio::spawn(server.run(vec![
        Reply::new("PATCH", &path, 409, refused),
        Reply::new("PATCH", &path, 200, serde_json::to_value(channel()).unwrap())
            .with_body_field("/status/conditions/0/reason", json!("Configured")),
    ]));
    let recorder = Arc::new(Recorder::default());
    let shared = shared(AlertChannels, client, &recorder);
    // The failed write is retried on the API's backoff, and not remembered as written.
    let action = reconcile(guard(channel()), shared.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    let action = reconcile(guard(channel()), shared).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    task.await.unwrap();
}

#[tokio::test]
async fn the_finalizer_is_added_before_anything_is_done() {
    let (client, server) = ApiServer::new();
    let add = json_patch(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["infrapilot.io/guarded"]},
    ]));
    let task = tokio::spawn(server.run(vec![add]));
    let recorder = Arc::new(Recorder::default());
    let shared = shared(Guarded::default(), client, &recorder);
    let action = reconcile(guard(channel()), shared.clone()).await.unwrap();
    // The patch is a change: the watch brings the object back, and then it is reconciled.
    assert_eq!(action, Action::await_change());
    assert_eq!(
        shared.driver.reconciler.reconciles.load(Ordering::SeqCst),
        0
    );
    task.await.unwrap();
}

#[tokio::test]
async fn a_deleted_object_is_cleaned_up_then_its_finalizer_removed() {
    let mut deleted = channel();
    deleted.metadata.finalizers = Some(vec![
        "other.example/keep".to_owned(),
        "infrapilot.io/guarded".to_owned(),
    ]);
    deleted.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        ));
    let (client, server) = ApiServer::new();
    // Removal tests the index first, so that another controller's finalizer is never removed.
    let remove = json_patch(json!([
        {"op": "test", "path": "/metadata/finalizers/1", "value": "infrapilot.io/guarded"},
        {"op": "remove", "path": "/metadata/finalizers/1"},
    ]));
    let task = tokio::spawn(server.run(vec![remove]));
    let recorder = Arc::new(Recorder::default());
    let shared = shared(Guarded::default(), client, &recorder);
    reconcile(guard(deleted), shared.clone()).await.unwrap();
    assert_eq!(shared.driver.reconciler.cleanups.load(Ordering::SeqCst), 1);
    assert_eq!(
        shared.driver.reconciler.reconciles.load(Ordering::SeqCst),
        0
    );
    task.await.unwrap();
}

#[tokio::test]
async fn an_unreadable_object_gets_a_condition_and_an_event_once() {
    let invalid = kube::core::error_boundary::InvalidObject {
        error: "unknown variant `Telegraph`".to_owned(),
        metadata: channel().metadata,
    };
    let message = "the object cannot be read: unknown variant `Telegraph`";
    let stored = |conditions: serde_json::Value| json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel", "metadata": {"name": "ops", "namespace": "default"}, "status": {"conditions": conditions}});
    let (client, server) = ApiServer::new();
    let task = tokio::spawn(server.run(vec![
        Reply::new("GET", &format!("{OBJECT}/status"), 200, stored(json!([]))),
        Reply::new(
            "PATCH",
            &format!("{OBJECT}/status?&force=true&fieldManager=infrapilot.io%2Fguarded"),
            200,
            stored(json!([])),
        )
        .with_body_field("/status/conditions/0/status", json!("False"))
        .with_body_field("/status/conditions/0/reason", json!("InvalidSpec"))
        .with_body_field("/status/conditions/0/message", json!(message)),
        // Seen again with the condition in place: nothing is written.
        Reply::new(
            "GET",
            &format!("{OBJECT}/status"),
            200,
            stored(json!([{"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": message, "observedGeneration": 2, "lastTransitionTime": "2027-01-15T08:00:00Z"}])),
        ),
    ]));
    let recorder = Arc::new(Recorder::default());
    let shared = shared(Guarded::default(), client, &recorder);
    let object = Arc::new(DeserializeGuard::<AlertChannel>(Err(invalid)));
    let action = reconcile(object.clone(), shared.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    reconcile(object, shared.clone()).await.unwrap();
    task.await.unwrap();
    let events = recorder.events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "InvalidSpec");
    assert!(
        shared
            .driver
            .metrics
            .encode()
            .contains("category=\"invalid\"} 2")
    );
}

#[tokio::test]
async fn a_stale_cache_does_not_repeat_a_finished_verification() {
    let mut verified = channel();
    verified.spec.verify = true;
    let (client, server) = ApiServer::new();
    // One status write; the second reconcile sees the object as the cache still has it
    // (without the status just written) and must neither deliver nor write again.
    let task = tokio::spawn(server.run(vec![
        Reply::new(
            "PATCH",
            &format!("{OBJECT}/status?&force=true&fieldManager=infrapilot.io%2Falertchannel"),
            200,
            serde_json::to_value(channel()).unwrap(),
        )
        .with_body_field("/status/verified", json!(true)),
    ]));
    let recorder = Arc::new(Recorder::default());
    let shared = shared(AlertChannels, client, &recorder);
    reconcile(guard(verified.clone()), shared.clone())
        .await
        .unwrap();
    reconcile(guard(verified), shared.clone()).await.unwrap();
    task.await.unwrap();
    assert_eq!(recorder.deliveries.lock().unwrap().len(), 1);
}
