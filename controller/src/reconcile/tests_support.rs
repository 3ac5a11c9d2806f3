//! Recording fakes of the outside world, for reconciler unit tests only.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Audit, Context, Event, Events};
use crate::audit::{NewRecord, ObjectRef};
use crate::delivery::{DeliveryError, Message, Notifier, Receipt, Target};
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
