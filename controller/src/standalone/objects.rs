//! Other objects as reconcilers see them ([`crate::runtime::objects`]), in the state database:
//! what the API server gives them in Kubernetes mode.

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::store::{Store, StoredObject};
use super::sync::{Change, Key, OPERATOR_MADE};
use crate::api::Kind;
use crate::reconcile::Failure;
use crate::retry::Category;
use crate::runtime::objects::{ObjectStore, Selector};

/// Objects in the store. Objects it creates or deletes are sent to `changed` so that the
/// runtime reconciles them.
#[derive(Clone, Debug)]
pub struct StoreObjects {
    pub store: Store,
    pub changed: UnboundedSender<Key>,
}

fn failure(error: anyhow::Error) -> Failure {
    Failure {
        category: Category::State,
        message: format!("the state database: {error:#}"),
    }
}

fn key(kind: Kind, namespace: &str, name: &str) -> Key {
    Key {
        kind: kind.name().to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

impl StoreObjects {
    /// The live objects of `kind` in `namespace` (every one when `None`) `selector` selects.
    async fn select(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<Value>, Failure> {
        // Selected before the status is read: selectors look at metadata and spec, and a
        // policy lists its runs among every run in the namespace at each reconcile.
        let stored = self
            .store
            .list_where(
                Some(kind.name()),
                namespace,
                &selector.fragments(),
                |object| selector.matches(object),
            )
            .await
            .map_err(failure)?;
        Ok(stored
            .into_iter()
            .filter(|o| !o.deleting)
            .map(StoredObject::into_full)
            .collect())
    }
}

#[async_trait]
impl ObjectStore for StoreObjects {
    async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Value>, Failure> {
        let stored = self
            .store
            .get(&key(kind, namespace, name))
            .await
            .map_err(failure)?;
        Ok(stored.filter(|o| !o.deleting).map(|o| o.full()))
    }

    async fn list(
        &self,
        kind: Kind,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Vec<Value>, Failure> {
        self.select(kind, Some(namespace), selector).await
    }

    async fn list_all(&self, kind: Kind, selector: &Selector) -> Result<Vec<Value>, Failure> {
        self.select(kind, None, selector).await
    }

    async fn create(&self, kind: Kind, object: Value) -> Result<(), Failure> {
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let key = key(kind, &text("/metadata/namespace"), &text("/metadata/name"));
        if self.store.get(&key).await.map_err(failure)?.is_some() {
            return Ok(());
        }
        let change = Change::Create {
            key: key.clone(),
            uid: uuid::Uuid::new_v4().to_string(),
            object: object.into(),
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

    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), Failure> {
        let key = key(kind, namespace, name);
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
}
