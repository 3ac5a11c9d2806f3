//! Recording fakes of the outside world, for reconciler unit tests only.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Context, Event, Events, Failure};
use crate::api::Kind;
use crate::audit::{Audit, NewRecord, ObjectRef};
use crate::delivery::{DeliveryError, Message, Notifier, Receipt, Target};
use crate::runtime::objects::{ObjectStore, Objects, Selector, Typed};
use crate::secrets::SecretMap;

#[derive(Default)]
pub struct Recorder {
    pub deliveries: Mutex<Vec<(Target, Message)>>,
    pub audit: Mutex<Vec<NewRecord>>,
    pub events: Mutex<Vec<Event>>,
    /// What the next deliveries answer; success when empty.
    pub answers: Mutex<Vec<Result<Receipt, DeliveryError>>>,
}

#[async_trait]
impl Notifier for Recorder {
    async fn deliver(&self, target: &Target, message: &Message) -> Result<Receipt, DeliveryError> {
        self.deliveries
            .lock()
            .unwrap()
            .push((target.clone(), message.clone()));
        let mut answers = self.answers.lock().unwrap();
        if answers.is_empty() {
            Ok(Receipt {
                detail: "250 OK".to_owned(),
            })
        } else {
            answers.remove(0)
        }
    }
}

#[async_trait]
impl Audit for Recorder {
    async fn record(&self, record: NewRecord) -> anyhow::Result<()> {
        self.audit.lock().unwrap().push(record);
        Ok(())
    }
}

#[async_trait]
impl Events for Recorder {
    async fn publish(&self, _object: &ObjectRef, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

pub fn fixed_now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

pub fn context(recorder: &Arc<Recorder>, secrets: SecretMap) -> Context {
    Context {
        secrets: Arc::new(secrets),
        notifier: recorder.clone(),
        audit: recorder.clone(),
        events: recorder.clone(),
        now: fixed_now,
    }
}

/// Objects of every kind in memory, as the runtimes' object stores keep them. Objects it creates
/// get `creationTimestamp` [`fixed_now`], as an API server would stamp them.
#[derive(Default)]
pub struct MemoryObjects {
    objects: Mutex<std::collections::BTreeMap<(Kind, String, String), serde_json::Value>>,
}

impl MemoryObjects {
    pub fn with<K: Typed>(objects: impl IntoIterator<Item = K>) -> Self {
        let memory = Self::default();
        for object in objects {
            memory.put(&object);
        }
        memory
    }

    /// Stores `object` as it is (status included), replacing one of that name.
    pub fn put<K: Typed>(&self, object: &K) {
        let meta = object.meta();
        let key = (
            K::kind_of(),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let value = serde_json::to_value(object).unwrap();
        self.objects.lock().unwrap().insert(key, value);
    }

    /// Every object of kind `K`, by namespace and name.
    pub fn all<K: Typed>(&self) -> Vec<K> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((kind, _, _), _)| *kind == K::kind_of())
            .map(|(_, value)| serde_json::from_value(value.clone()).unwrap())
            .collect()
    }

    pub fn port(self: &Arc<Self>) -> Objects {
        Objects(self.clone())
    }
}

#[async_trait]
impl ObjectStore for MemoryObjects {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, Failure> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        Ok(self.objects.lock().unwrap().get(&key).cloned())
    }

    async fn list(
        &self,
        kind: Kind,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Vec<serde_json::Value>, Failure> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((k, ns, _), value)| *k == kind && ns == namespace && selector.matches(value))
            .map(|(_, value)| value.clone())
            .collect())
    }

    async fn create(&self, kind: Kind, mut object: serde_json::Value) -> Result<(), Failure> {
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let key = (kind, text("/metadata/namespace"), text("/metadata/name"));
        object["metadata"]["creationTimestamp"] = fixed_now().to_string().into();
        self.objects.lock().unwrap().entry(key).or_insert(object);
        Ok(())
    }

    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), Failure> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        self.objects.lock().unwrap().remove(&key);
        Ok(())
    }
}
