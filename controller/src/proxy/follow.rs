//! Following upstream containers: which Proxies look at which containers, and the task that
//! turns Docker events into "reconcile this Proxy again". A container that restarts with a new
//! address, moves network, appears or goes is noticed within moments rather than at the next
//! resync. When the event stream breaks, events may have been missed: every followed Proxy is
//! reconciled again once it is back, which re-lists what they need.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::docker::{ContainerEvent, Docker};

/// A Proxy, by namespace and name.
pub type ProxyKey = (String, String);

/// What each Proxy looks for.
#[derive(Debug, Default)]
pub struct Watches {
    /// Container names and ids → the Proxies that use them.
    containers: BTreeMap<String, BTreeSet<ProxyKey>>,
    /// Label selectors of the Proxies that use them.
    selectors: BTreeMap<ProxyKey, BTreeMap<String, String>>,
    /// Each Proxy's entries in `containers`, so that forgetting one Proxy touches only its
    /// own: every reconcile sets its Proxy's watches, and going through every container
    /// each time made a pass over 2,000 Proxies cost 4 million set lookups.
    watched: BTreeMap<ProxyKey, Vec<String>>,
}

impl Watches {
    /// Records what `proxy` looks at now: the names or ids of containers, or a selector.
    pub fn set(
        &mut self,
        proxy: &ProxyKey,
        containers: impl IntoIterator<Item = String>,
        selector: Option<BTreeMap<String, String>>,
    ) {
        self.forget(proxy);
        let containers: Vec<String> = containers.into_iter().collect();
        for container in &containers {
            self.containers
                .entry(container.clone())
                .or_default()
                .insert(proxy.clone());
        }
        if !containers.is_empty() {
            self.watched.insert(proxy.clone(), containers);
        }
        if let Some(selector) = selector {
            self.selectors.insert(proxy.clone(), selector);
        }
    }

    pub fn forget(&mut self, proxy: &ProxyKey) {
        for container in self.watched.remove(proxy).unwrap_or_default() {
            if let Some(proxies) = self.containers.get_mut(&container) {
                proxies.remove(proxy);
                if proxies.is_empty() {
                    self.containers.remove(&container);
                }
            }
        }
        self.selectors.remove(proxy);
    }

    /// The Proxies an event concerns.
    pub fn affected(&self, event: &ContainerEvent) -> BTreeSet<ProxyKey> {
        let mut affected = BTreeSet::new();
        for key in [&event.container_id, &event.container_name] {
            if let Some(proxies) = self.containers.get(key.as_str()) {
                affected.extend(proxies.iter().cloned());
            }
        }
        // Network events carry no labels: a selector Proxy follows its containers by id too.
        for (proxy, selector) in &self.selectors {
            let matches = !event.labels.is_empty()
                && selector.iter().all(|(k, v)| event.labels.get(k) == Some(v));
            if matches {
                affected.insert(proxy.clone());
            }
        }
        affected
    }

    pub fn all(&self) -> BTreeSet<ProxyKey> {
        self.containers
            .values()
            .flatten()
            .chain(self.selectors.keys())
            .cloned()
            .collect()
    }
}

/// Follows Docker events for as long as `triggers` has a receiver.
pub async fn follow(
    docker: Arc<dyn Docker>,
    watches: Arc<Mutex<Watches>>,
    triggers: mpsc::UnboundedSender<ProxyKey>,
) {
    // Events before the first subscription were not seen either: the first round, too,
    // looks at every followed Proxy once.
    let mut reconnected = true;
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut events = docker.events();
        if reconnected {
            // Whatever happened while not listening: look at every followed Proxy again.
            let all = watches.lock().map(|w| w.all()).unwrap_or_default();
            for proxy in all {
                if triggers.send(proxy).is_err() {
                    return;
                }
            }
        }
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    backoff = Duration::from_millis(500);
                    if !event.moves_upstreams() {
                        continue;
                    }
                    let affected = watches
                        .lock()
                        .map(|w| w.affected(&event))
                        .unwrap_or_default();
                    for proxy in affected {
                        debug!(container = %event.container_name, action = %event.action, proxy = %format!("{}/{}", proxy.0, proxy.1), "upstream changed");
                        if triggers.send(proxy).is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    warn!("Docker events stopped: {error}");
                    break;
                }
            }
        }
        if triggers.is_closed() {
            return;
        }
        reconnected = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ProxyKey {
        ("default".to_owned(), name.to_owned())
    }

    fn event(id: &str, name: &str, labels: &[(&str, &str)]) -> ContainerEvent {
        ContainerEvent {
            action: "start".to_owned(),
            container_id: id.to_owned(),
            container_name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            exit_code: None,
        }
    }

    #[test]
    fn events_reach_the_proxies_of_their_container_or_selector() {
        let mut watches = Watches::default();
        watches.set(
            &key("shop"),
            ["shop-web".to_owned(), "abc123".to_owned()],
            None,
        );
        let selector = BTreeMap::from([("app".to_owned(), "blog".to_owned())]);
        watches.set(&key("blog"), ["def456".to_owned()], Some(selector));

        assert_eq!(
            watches.affected(&event("abc123", "shop-web", &[])),
            BTreeSet::from([key("shop")])
        );
        // A network event names the container by id only.
        assert_eq!(
            watches.affected(&event("abc123", "", &[])),
            BTreeSet::from([key("shop")])
        );
        // A new container with the selector's labels concerns the selector's Proxy.
        assert_eq!(
            watches.affected(&event("new1", "blog-2", &[("app", "blog"), ("x", "y")])),
            BTreeSet::from([key("blog")])
        );
        assert!(
            watches
                .affected(&event("zzz", "other", &[("app", "shop")]))
                .is_empty()
        );

        watches.forget(&key("shop"));
        assert!(
            watches
                .affected(&event("abc123", "shop-web", &[]))
                .is_empty()
        );
        assert_eq!(watches.all(), BTreeSet::from([key("blog")]));
    }

    #[test]
    fn forgetting_one_proxy_keeps_the_watches_of_others_on_the_same_container() {
        let mut watches = Watches::default();
        watches.set(&key("a"), ["web".to_owned(), "id1".to_owned()], None);
        watches.set(&key("b"), ["web".to_owned()], None);
        // Set again: what `a` looked at before is no longer its.
        watches.set(&key("a"), ["api".to_owned()], None);
        assert_eq!(
            watches.affected(&event("id1", "web", &[])),
            BTreeSet::from([key("b")])
        );
        assert_eq!(
            watches.affected(&event("id2", "api", &[])),
            BTreeSet::from([key("a")])
        );
        watches.forget(&key("b"));
        assert!(watches.affected(&event("id1", "web", &[])).is_empty());
        assert_eq!(watches.all(), BTreeSet::from([key("a")]));
        watches.forget(&key("a"));
        assert!(watches.all().is_empty());
        assert!(watches.containers.is_empty() && watches.watched.is_empty());
    }
}
