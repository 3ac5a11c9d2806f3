//! The backup reconcilers' view of the other objects, in the state database: what the API
//! server gives them in Kubernetes mode.

use async_trait::async_trait;
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use super::store::Store;
use super::sync::{Change, Key, OPERATOR_MADE};
use crate::api::alert::AlertChannel;
use crate::api::backup::{BackupValidationPolicy, BackupValidationRun};
use crate::reconcile::Failure;
use crate::reconcile::backup::BackupObjects;

/// Objects in the store. Objects it creates or deletes are sent to `changed` so that the
/// runtime reconciles them.
#[derive(Clone, Debug)]
pub struct StoreObjects {
    pub store: Store,
    pub changed: UnboundedSender<Key>,
}

fn failure(error: anyhow::Error) -> Failure {
    Failure {
        category: "state",
        message: format!("the state database: {error:#}"),
    }
}

fn key(kind: &str, namespace: &str, name: &str) -> Key {
    Key {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

impl StoreObjects {
    /// The live (not being deleted) object of `key`, if it can be read.
    async fn get<K: DeserializeOwned>(&self, key: &Key) -> Result<Option<K>, Failure> {
        let stored = self.store.get(key).await.map_err(failure)?;
        Ok(stored
            .filter(|o| !o.deleting)
            .and_then(|o| serde_json::from_value(o.full()).ok()))
    }
}

#[async_trait]
impl BackupObjects for StoreObjects {
    async fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BackupValidationPolicy>, Failure> {
        self.get(&key("BackupValidationPolicy", namespace, name))
            .await
    }

    async fn runs(
        &self,
        namespace: &str,
        policy: &str,
    ) -> Result<Vec<BackupValidationRun>, Failure> {
        let stored = self
            .store
            .list(Some("BackupValidationRun"), Some(namespace))
            .await
            .map_err(failure)?;
        Ok(stored
            .into_iter()
            .filter(|o| !o.deleting)
            .filter_map(|o| serde_json::from_value::<BackupValidationRun>(o.full()).ok())
            .filter(|run| run.spec.policy_ref.name == policy)
            .collect())
    }

    async fn create_run(&self, run: &BackupValidationRun) -> Result<(), Failure> {
        let namespace = run.metadata.namespace.clone().unwrap_or_default();
        let name = run.metadata.name.clone().unwrap_or_default();
        let key = key("BackupValidationRun", &namespace, &name);
        if self.store.get(&key).await.map_err(failure)?.is_some() {
            return Ok(());
        }
        let mut object = serde_json::to_value(run).map_err(|e| failure(e.into()))?;
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".to_owned(), "infrapilot.io/v1alpha1".into());
            map.insert("kind".to_owned(), "BackupValidationRun".into());
            map.remove("status");
        }
        let change = Change::Create {
            key: key.clone(),
            uid: uuid::Uuid::new_v4().to_string(),
            object,
            file: OPERATOR_MADE.to_owned(),
            line: 0,
        };
        self.store
            .apply(&change, Timestamp::now())
            .await
            .map_err(failure)?;
        let _ = self.changed.send(key);
        Ok(())
    }

    async fn delete_run(&self, namespace: &str, name: &str) -> Result<(), Failure> {
        let key = key("BackupValidationRun", namespace, name);
        match self.store.get(&key).await.map_err(failure)? {
            Some(stored) if !stored.deleting => {
                self.store
                    .apply(&Change::Delete { key: key.clone() }, Timestamp::now())
                    .await
                    .map_err(failure)?;
                let _ = self.changed.send(key);
            }
            _ => {}
        }
        Ok(())
    }

    async fn channel(&self, namespace: &str, name: &str) -> Result<Option<AlertChannel>, Failure> {
        self.get(&key("AlertChannel", namespace, name)).await
    }
}
