//! Events on our objects through one shared recorder, as `kubectl describe` shows them.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};

use crate::audit::ObjectRef;
use crate::reconcile::{Event, EventType, Events};

/// The API's limit on an event's note.
const MAX_NOTE: usize = 1024;

pub struct KubeEvents {
    recorder: Recorder,
}

impl std::fmt::Debug for KubeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeEvents")
    }
}

impl KubeEvents {
    /// `instance` tells replicas apart (the pod name).
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "infrapilot".to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }
}

fn reference(object: &ObjectRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", crate::api::GROUP, crate::api::VERSION)),
        kind: Some(object.kind.clone()),
        name: Some(object.name.clone()),
        namespace: object.namespace.clone(),
        uid: Some(object.uid.clone()),
        ..ObjectReference::default()
    }
}

fn note(text: &str) -> String {
    let mut end = text.len().min(MAX_NOTE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[async_trait]
impl Events for KubeEvents {
    async fn publish(&self, object: &ObjectRef, event: Event) {
        let kube_event = KubeEvent {
            type_: match event.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: event.reason,
            note: Some(note(&event.note)),
            action: event.action,
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&kube_event, &reference(object)).await {
            // An event that cannot be written must not fail the reconcile that caused it.
            tracing::warn!(object = %object.name, "could not publish an event: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kubernetes::mock::{ApiServer, Reply};

    #[tokio::test]
    async fn an_event_is_created_on_the_object_with_a_bounded_note() {
        let (client, server) = ApiServer::new();
        let reply = Reply::new("POST", "/apis/events.k8s.io/v1/namespaces/default/events?", 201, json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "x", "namespace": "default"}, "eventTime": null
        }))
        .with_body_field("/reason", json!("DeliveryFailed"))
        .with_body_field("/type", json!("Warning"))
        .with_body_field("/regarding/kind", json!("AlertChannel"))
        .with_body_field("/regarding/uid", json!("u-1"))
        .with_body_field("/reportingController", json!("infrapilot"));
        let task = tokio::spawn(server.run(vec![reply]));
        let object = ObjectRef {
            kind: "AlertChannel".to_owned(),
            namespace: Some("default".to_owned()),
            name: "ops".to_owned(),
            uid: "u-1".to_owned(),
            generation: 1,
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "DeliveryFailed".to_owned(),
            action: "Verify".to_owned(),
            note: "x".repeat(5000),
        };
        KubeEvents::new(client, Some("pod-1".to_owned()))
            .publish(&object, event)
            .await;
        task.await.unwrap();
        assert_eq!(note(&"é".repeat(1000)).len(), 1024);
    }
}
