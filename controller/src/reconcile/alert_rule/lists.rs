//! Lists of a namespace's Proxies or policies, shared by the rules that read them at once.
//!
//! Every certificate rule of a namespace reads every Proxy of it: 1,500 rules over 2,000
//! Proxies would be 3 million objects read and parsed at each start. A rule may only use a
//! list read after it asked (an older one can miss the change that brought the rule back), so
//! lists are coalesced, not cached: while one list runs, the rules that ask meanwhile wait for
//! the next one, which they then share. A burst of N rules costs about two lists per list's
//! duration, not N.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::api::Kind;
use crate::reconcile::Failure;
use crate::runtime::objects::{Objects, Selector, Typed};

type Shared = Arc<dyn Any + Send + Sync>;

#[derive(Default)]
struct Slot {
    /// Lists begun so far.
    begun: u64,
    /// The newest finished list and the number it had when it began.
    newest: Option<(u64, Shared)>,
    /// One list at a time; waiting here is what lets the next one be shared.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Coalesced lists per (kind, namespace).
#[derive(Default)]
pub struct Lists {
    slots: Mutex<HashMap<(Kind, String), Slot>>,
}

impl Lists {
    /// Every object of `K` in `namespace` that `selector` selects, read after this call
    /// began. One selector per kind: a kind's lists are shared whatever the caller passes.
    pub async fn list<K: Typed + 'static>(
        &self,
        objects: &Objects,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Arc<Vec<K>>, Failure> {
        let key = (K::kind_of(), namespace.to_owned());
        let (asked_after, turn) = self.slot(&key, |slot| (slot.begun, slot.turn.clone()));
        let _turn = turn.lock().await;
        // A list that began after this call is as good as one of its own.
        let shared = self.slot(&key, |slot| match &slot.newest {
            Some((began, list)) if *began > asked_after => Some(list.clone()),
            _ => None,
        });
        if let Some(list) = shared.and_then(|l| l.downcast::<Vec<K>>().ok()) {
            return Ok(list);
        }
        let number = self.slot(&key, |slot| {
            slot.begun += 1;
            slot.begun
        });
        let list: Arc<Vec<K>> = Arc::new(objects.list(namespace, selector).await?);
        self.slot(&key, |slot| {
            slot.newest = Some((number, list.clone() as Shared))
        });
        Ok(list)
    }

    fn slot<T>(&self, key: &(Kind, String), f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        f(slots.entry(key.clone()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::api::proxy::Proxy;
    use crate::runtime::objects::ObjectStore;

    /// Lists that take a while and count themselves; each returns as many Proxies as lists
    /// began before it, so a test can tell which list it got.
    #[derive(Default)]
    struct Slow {
        lists: AtomicUsize,
    }

    #[async_trait]
    impl ObjectStore for Slow {
        async fn get(&self, _: Kind, _: &str, _: &str) -> Result<Option<Value>, Failure> {
            Ok(None)
        }
        async fn list(&self, _: Kind, _: &str, _: &Selector) -> Result<Vec<Value>, Failure> {
            let n = self.lists.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok((0..n)
                .map(|i| {
                    json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "Proxy",
                        "metadata": {"name": format!("p{i}"), "namespace": "shop"},
                        "spec": {"hosts": ["a.example.com"], "upstream": {"name": "a", "port": 80}}})
                })
                .collect())
        }
        async fn list_all(&self, _: Kind, _: &Selector) -> Result<Vec<Value>, Failure> {
            Ok(Vec::new())
        }
        async fn create(&self, _: Kind, _: Value) -> Result<(), Failure> {
            Ok(())
        }
        async fn delete(&self, _: Kind, _: &str, _: &str) -> Result<(), Failure> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn callers_at_once_share_a_list_that_began_after_they_asked() {
        let store = Arc::new(Slow::default());
        let objects = Objects(store.clone());
        let lists = Arc::new(Lists::default());
        // 50 callers at once: the first begins a list, the others wait for the next one.
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let (lists, objects) = (lists.clone(), objects.clone());
                tokio::spawn(async move {
                    lists
                        .list::<Proxy>(&objects, "shop", &Selector::everything())
                        .await
                })
            })
            .collect();
        for call in calls {
            assert!(!call.await.unwrap().unwrap().is_empty());
        }
        let made = store.lists.load(Ordering::SeqCst);
        assert!(made <= 3, "{made} lists for 50 callers");
        // A caller after all that gets a list of its own, never an older one.
        let later = lists
            .list::<Proxy>(&objects, "shop", &Selector::everything())
            .await
            .unwrap();
        assert_eq!(later.len(), made + 1);
        assert_eq!(store.lists.load(Ordering::SeqCst), made + 1);
    }
}
