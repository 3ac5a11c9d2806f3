//! Running the reconcilers in standalone mode: the standalone side of every registered
//! reconciler ([`Controllers`]), the [`Workers`] that reconcile one stored object (or finish
//! its deletion and start its dependents'), the type-erased face of each kind's driver, and
//! status and events written to the state database. Separate from the loop in `runtime`,
//! which only decides when an object is reconciled, not how.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::{error, info, warn};

use super::store::{Store, StoredObject};
use super::sync::{Change, Key};
use crate::api::Kind;
use crate::audit::ObjectRef;
use crate::kubernetes::controller::ScopedApi;
use crate::reconcile::{Event, Events, Failure, Reconciler, Relation};
use crate::retry::{Backoff, Category};
use crate::runtime::driver::{Driver, Next, StatusWriter};
use crate::runtime::objects::EVERY;
use crate::runtime::registry::{Build, Register};
use crate::runtime::services::Services;
use crate::telemetry::Metrics;

/// Builds the standalone side of every registered reconciler.
pub(super) struct Controllers<'a> {
    pub(super) services: &'a Services,
    pub(super) metrics: Arc<Metrics>,
    pub(super) store: Store,
    pub(super) keys: UnboundedSender<Key>,
    pub(super) kinds: BTreeMap<Kind, Arc<dyn Dispatch>>,
    pub(super) relations: Vec<(Kind, Relation)>,
}

impl Register for Controllers<'_> {
    fn add<R: Reconciler>(&mut self, build: Build<R>)
    where
        R::Object: ScopedApi,
    {
        let Some(kind) = Kind::from_name(&<R::Object as kube::Resource>::kind(&())) else {
            return;
        };
        let reconciler = build(self.services);
        // Objects come back when an outside system has news of them (a Proxy's container, a
        // run's restore).
        forward(reconciler.triggers(), kind, &self.keys);
        self.relations
            .extend(R::relations().into_iter().map(|relation| (kind, relation)));
        let driver = Driver::new(reconciler, self.services.ctx.clone(), self.metrics.clone());
        self.kinds.insert(
            kind,
            Arc::new(Controller {
                driver,
                store: self.store.clone(),
            }),
        );
    }
}

/// What reconciles share; they run concurrently, each on its own object.
pub(super) struct Workers {
    pub(super) store: Store,
    /// The controller of each kind that has one.
    pub(super) kinds: BTreeMap<Kind, Arc<dyn Dispatch>>,
    /// (the kind to reconcile, when an object of `relation.from` changes).
    pub(super) relations: Vec<(Kind, Relation)>,
    /// Objects to queue: the dependents of a deleted object, related objects.
    pub(super) keys: UnboundedSender<Key>,
    /// Failures of the state database around a reconcile, per object.
    pub(super) state_backoff: Backoff,
    /// The (kind, namespace, relation) lists of [`EVERY`] waiting to run: a burst of changes
    /// (a cold start writing a thousand statuses) makes one list, not one per change.
    pub(super) every_pending:
        Arc<std::sync::Mutex<std::collections::HashSet<(Kind, String, usize)>>>,
}

impl Workers {
    /// Ends an object's deletion, and starts its dependents' (objects whose ownerReferences
    /// name it, a policy's runs), as Kubernetes' garbage collector does.
    async fn forget(&self, object: &StoredObject) -> anyhow::Result<()> {
        let key = &object.key;
        self.store.forget(key, &object.uid).await?;
        info!(object = %key, "deletion finished");
        self.changed(object);
        for dependent in self.store.dependents(&key.namespace, &object.uid).await? {
            self.store
                .apply(
                    &Change::Delete {
                        key: dependent.clone(),
                    },
                    Timestamp::now(),
                )
                .await?;
            info!(object = %dependent, owner = %key, "deleted with its owner");
            let _ = self.keys.send(dependent);
        }
        Ok(())
    }

    /// Whether objects of `key`'s kind have others that relate to them: only then does a
    /// change to one need a copy for [`Self::changed`].
    fn is_related(&self, key: &Key) -> bool {
        Kind::from_name(&key.kind)
            .is_some_and(|from| self.relations.iter().any(|(_, r)| r.from == from))
    }

    /// Queues the objects that relate to `object`, which changed.
    fn changed(&self, object: &StoredObject) {
        let Some(from) = Kind::from_name(&object.key.kind) else {
            return;
        };
        if !self.is_related(&object.key) {
            return;
        }
        let full = object.full();
        let related = self.relations.iter().enumerate();
        for (index, (kind, relation)) in related.filter(|(_, (_, r))| r.from == from) {
            for (namespace, name) in (relation.map)(&full) {
                if name == EVERY {
                    // Which objects those are is a read of the state database, which this
                    // (synchronous) call cannot wait for: the list queues them when it is done.
                    let pending = (*kind, namespace.clone(), index);
                    let waiting = self.every_pending.clone();
                    let fresh = waiting
                        .lock()
                        .map(|mut set| set.insert(pending.clone()))
                        .unwrap_or(true);
                    if !fresh {
                        // A list not yet begun will see this change too.
                        continue;
                    }
                    let (store, keys, kind) = (self.store.clone(), self.keys.clone(), *kind);
                    let every = relation.every;
                    tokio::spawn(async move {
                        // From here on a change needs a list of its own: this one may have
                        // read past it.
                        if let Ok(mut set) = waiting.lock() {
                            set.remove(&pending);
                        }
                        let keep = |manifest: &serde_json::Value| every.is_none_or(|f| f(manifest));
                        match store
                            .list_where(Some(kind.name()), Some(&namespace), &[], keep)
                            .await
                        {
                            Ok(objects) => {
                                for object in objects {
                                    let _ = keys.send(object.key);
                                }
                            }
                            Err(error) => warn!(
                                kind = kind.name(),
                                %namespace,
                                "could not list the objects related to a change: {error:#}"
                            ),
                        }
                    });
                    continue;
                }
                let _ = self.keys.send(Key {
                    kind: kind.name().to_owned(),
                    namespace,
                    name,
                });
            }
        }
    }

    /// Reconciles one object; returns when to look at it again.
    pub(super) async fn reconcile(&self, key: &Key) -> anyhow::Result<Next> {
        let Some(object) = self.store.get(key).await? else {
            return Ok(Next::OnChange);
        };
        match Kind::from_name(&key.kind).and_then(|kind| self.kinds.get(&kind)) {
            Some(controller) => controller.reconcile(self, object).await,
            // The reconcilers of the other kinds land with their own issues; until then their
            // objects are stored and shown, and left alone.
            None => {
                if object.deleting {
                    self.forget(&object).await?;
                }
                Ok(Next::OnChange)
            }
        }
    }
}

/// One kind's reconciler behind a type-erased face, so that [`Workers`] can hold them all.
#[async_trait]
pub(super) trait Dispatch: Send + Sync {
    async fn reconcile(&self, workers: &Workers, object: StoredObject) -> anyhow::Result<Next>;
}

struct Controller<R: Reconciler> {
    driver: Driver<R>,
    store: Store,
}

#[async_trait]
impl<R: Reconciler> Dispatch for Controller<R> {
    async fn reconcile(&self, workers: &Workers, object: StoredObject) -> anyhow::Result<Next> {
        let key = &object.key;
        let parsed: R::Object = match serde_json::from_value(object.full()) {
            Ok(parsed) => parsed,
            Err(error) if object.deleting => {
                // Nothing can be cleaned up for an object this version cannot read.
                warn!(object = %key, "deleting an object that cannot be read: {error}");
                workers.forget(&object).await?;
                self.driver.forget(&object.uid);
                return Ok(Next::OnChange);
            }
            Err(error) => {
                // Checked when read, so only a store written by another version gets here; it
                // waits for its manifest to change.
                error!(object = %key, "the stored object cannot be read: {error}");
                return Ok(Next::OnChange);
            }
        };
        if object.deleting {
            if R::FINALIZER.is_some()
                && let Err(failure) = self.driver.cleanup(&parsed).await
            {
                return Ok(Next::After(
                    self.driver.retry_in(&object.uid, failure.category),
                ));
            }
            workers.forget(&object).await?;
            self.driver.forget(&object.uid);
            return Ok(Next::OnChange);
        }
        let writer = StoreStatus {
            store: &self.store,
            object: &object,
            workers,
        };
        let reconciled = self
            .driver
            .reconcile(&parsed, R::status(&parsed), &writer)
            .await;
        Ok(reconciled.next)
    }
}

/// Status in the state database. A written status is a change its related objects hear of.
struct StoreStatus<'a> {
    store: &'a Store,
    object: &'a StoredObject,
    workers: &'a Workers,
}

#[async_trait]
impl<R: Reconciler> StatusWriter<R> for StoreStatus<'_> {
    async fn write(
        &self,
        _object: &R::Object,
        _current: Option<&R::Status>,
        status: &R::Status,
    ) -> Result<bool, Failure> {
        let failure = |error: anyhow::Error| Failure {
            category: Category::State,
            message: format!("cannot store the status: {error:#}"),
        };
        let value = serde_json::to_value(status).map_err(|e| failure(e.into()))?;
        let written = self
            .store
            .write_status(&self.object.key, &self.object.uid, &value)
            .await
            .map_err(failure)?;
        if written && self.workers.is_related(&self.object.key) {
            let mut changed = self.object.clone();
            changed.status = Some(value);
            self.workers.changed(&changed);
        }
        Ok(written)
    }
}

/// Events go to the state database, where `infrapilot describe` finds them.
pub(super) struct StoreEvents {
    pub(super) store: Store,
}

#[async_trait]
impl Events for StoreEvents {
    async fn publish(&self, object: &ObjectRef, event: Event) {
        if let Err(error) = self.store.add_event(object, &event, Timestamp::now()).await {
            warn!(object = %object.name, "could not store an event: {error:#}");
        }
    }
}

/// Queues the objects a reconciler's triggers name, as keys of `kind`.
fn forward(
    triggers: Option<UnboundedReceiver<(String, String)>>,
    kind: Kind,
    keys: &UnboundedSender<Key>,
) {
    let Some(mut triggers) = triggers else {
        return;
    };
    let keys = keys.clone();
    tokio::spawn(async move {
        while let Some((namespace, name)) = triggers.recv().await {
            let key = Key {
                kind: kind.name().to_owned(),
                namespace,
                name,
            };
            if keys.send(key).is_err() {
                break;
            }
        }
    });
}
