//! The Proxy reconciler, a pipeline: validate the spec (grammar) → observe (the other Proxies'
//! claims on its hosts, the Secret, the upstream in Docker, the certificate the edge serves) →
//! decide (pure: a [`decide::Plan`]) → apply (the edge, ACME issuance) → status (pure, from
//! what was applied).

mod apply;
mod claims;
mod decide;
mod observe;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Applied, Context, Failure, Reconciler, object_ref};
use crate::api::proxy::{Proxy, ProxyStatus};
use crate::docker::{Docker, NetworkFacts};
use crate::edge::EdgeApi;
use crate::proxy::acme;
use crate::proxy::follow::{ProxyKey, Watches};
use crate::proxy::site;
use crate::runtime::objects::Objects;

/// The controller name in audit records and field managers.
pub const CONTROLLER: &str = "proxy";
/// Guards the removal of a Proxy's configuration from the edge.
pub const FINALIZER: &str = "infrapilot.io/proxy";

/// How often a Proxy with a container upstream is looked at again, to follow address changes.
const RECHECK: Duration = Duration::from_secs(30);

/// The Proxy reconciler with its outside world.
pub struct Proxies {
    /// The other Proxies, whose claims on hostnames this one's must not collide with.
    objects: Objects,
    docker: Arc<dyn Docker>,
    edge: Arc<dyn EdgeApi>,
    issuer: Arc<dyn acme::Issuer>,
    /// Which containers each Proxy looks at, for following Docker events.
    watches: Arc<Mutex<Watches>>,
    /// Where followed changes go, until the first Proxy starts the following: an operator
    /// without Proxies never talks to Docker.
    pending_follow: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(String, String)>>>,
    /// Network facts by id: a network's driver and scope never change, so each is asked once.
    networks: Mutex<HashMap<String, NetworkFacts>>,
    /// Where a Proxy is sent to be reconciled again, once the runtime took the triggers.
    again: Mutex<Option<tokio::sync::mpsc::UnboundedSender<ProxyKey>>>,
    /// The Proxies not served because of a host each holder holds, by holder: reconciled
    /// again after the holder's next reconcile or its cleanup, rather than at their recheck.
    waiting: Mutex<HashMap<ProxyKey, BTreeSet<ProxyKey>>>,
    /// Every Proxy's hostnames, read from `objects` now and then and kept by the reconciles.
    hosts: tokio::sync::Mutex<claims::Index>,
    /// Proxies sent to be reconciled again and not reconciled since: sent once, not at every
    /// reconcile of the Proxy that sent them.
    sent_back: Mutex<BTreeSet<ProxyKey>>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proxies")
    }
}

impl Proxies {
    pub fn new(
        objects: Objects,
        docker: Arc<dyn Docker>,
        edge: Arc<dyn EdgeApi>,
        issuer: Arc<dyn acme::Issuer>,
    ) -> Self {
        Self {
            objects,
            docker,
            edge,
            issuer,
            watches: Arc::default(),
            pending_follow: Mutex::default(),
            networks: Mutex::default(),
            again: Mutex::default(),
            waiting: Mutex::default(),
            hosts: tokio::sync::Mutex::default(),
            sent_back: Mutex::default(),
        }
    }

    /// Records that `proxy` waits for the holders of the hosts it `lost`.
    fn wait_for(&self, proxy: &Proxy, lost: &[claims::Lost]) {
        let key = proxy_key(proxy);
        if let Ok(mut waiting) = self.waiting.lock() {
            for holder in lost {
                let holder = (holder.holder.namespace.clone(), holder.holder.name.clone());
                waiting.entry(holder).or_default().insert(key.clone());
            }
        }
    }

    /// Reconciles again the later claimants of hosts this Proxy (ranked `rank`) holds: one of
    /// them may be serving a host this Proxy only now names, and must leave the edge now rather
    /// than at its next recheck.
    fn displace(&self, rank: &claims::Rank, found: &[claims::Claim]) {
        // One known to wait already is brought back by `release`.
        let waiting: BTreeSet<ProxyKey> = match self.waiting.lock() {
            Ok(waiting) => waiting.values().flatten().cloned().collect(),
            Err(_) => return,
        };
        let later = found
            .iter()
            .filter(|c| !c.deleting && c.rank > *rank)
            .map(|c| (c.rank.namespace.clone(), c.rank.name.clone()))
            .filter(|key| !waiting.contains(key));
        self.send_back(later);
    }

    /// Sends `proxies` to be reconciled again, those not sent already.
    fn send_back(&self, proxies: impl IntoIterator<Item = ProxyKey>) {
        let Some(again) = self.again.lock().ok().and_then(|a| a.clone()) else {
            return;
        };
        let Ok(mut sent) = self.sent_back.lock() else {
            return;
        };
        for proxy in proxies {
            if sent.insert(proxy.clone()) {
                let _ = again.send(proxy);
            }
        }
    }

    /// Reconciles again the Proxies that wait for `holder`: it may have dropped or released
    /// their host. A Proxy that still loses waits again.
    fn release(&self, holder: &Proxy) {
        let key = proxy_key(holder);
        let released = match self.waiting.lock() {
            Ok(mut waiting) => waiting.remove(&key).unwrap_or_default(),
            Err(_) => return,
        };
        self.send_back(released);
    }
}

fn proxy_key(proxy: &Proxy) -> (String, String) {
    (
        proxy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        proxy.metadata.name.clone().unwrap_or_default(),
    )
}

#[async_trait::async_trait]
impl Reconciler for Proxies {
    type Object = Proxy;
    type Status = ProxyStatus;

    const CONTROLLER: &'static str = CONTROLLER;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);
    // TLS certificates from Secrets. (The other Proxies, listed in every namespace for their
    // hosts, are of its own kind: every controller may list those.)
    const RBAC: &'static [crate::runtime::rbac::Rule] = &[crate::runtime::rbac::Rule::secrets()];

    fn status(object: &Proxy) -> Option<&ProxyStatus> {
        object.status.as_ref()
    }

    fn set_status(object: &mut Proxy, status: ProxyStatus) {
        object.status = Some(status);
    }

    async fn reconcile(&self, proxy: &Proxy, ctx: &Context) -> Applied<ProxyStatus> {
        let now = (ctx.now)();
        self.edge.warm();
        if let Ok(mut sent) = self.sent_back.lock() {
            sent.remove(&proxy_key(proxy));
        }
        let plan = match decide::validate(proxy) {
            Ok(valid) => {
                let observed = self.observe(proxy, &valid.settings, &valid.id, ctx).await;
                if let Ok(found) = &observed.claims {
                    let rank = claims::Rank::of(proxy);
                    self.wait_for(proxy, &claims::lost(&rank, &valid.settings.hosts, found));
                    self.displace(&rank, found);
                }
                decide::decide(proxy, valid, observed, now)
            }
            Err(stop) => {
                // Its valid hosts are still its claims: a typo elsewhere in the spec must not
                // hand them to another Proxy.
                self.hosts.lock().await.note(proxy);
                decide::Plan::Stop(stop)
            }
        };
        let outcome = self.apply(proxy, plan, ctx, now).await;
        self.release(proxy);
        status::status(proxy, outcome, now)
    }

    fn triggers(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut again) = self.again.lock() {
            *again = Some(sender.clone());
        }
        if let Some(mut left_out) = self.edge.left_out() {
            let sender = sender.clone();
            tokio::spawn(async move {
                while let Some(object) = left_out.recv().await {
                    let namespace = object.namespace.unwrap_or_else(|| "default".to_owned());
                    let key = (namespace, object.name);
                    if sender.send(key).is_err() {
                        break;
                    }
                }
            });
        }
        if let Ok(mut pending) = self.pending_follow.lock() {
            *pending = Some(sender);
        }
        Some(receiver)
    }

    async fn cleanup(&self, proxy: &Proxy, _ctx: &Context) -> Result<(), Failure> {
        if let Ok(mut watches) = self.watches.lock() {
            watches.forget(&proxy_key(proxy));
        }
        let id = site::site_id(proxy.metadata.uid.as_deref().unwrap_or_default());
        self.edge
            .remove(&id, object_ref(proxy))
            .await
            .map_err(|error| Failure {
                category: error.category(),
                message: error.to_string(),
            })?;
        // Only now, with its site gone, may a Proxy waiting for one of its hosts be served; and
        // a Proxy that goes waits for nobody.
        self.hosts.lock().await.forget(&proxy_key(proxy));
        self.release(proxy);
        if let Ok(mut waiting) = self.waiting.lock() {
            let key = proxy_key(proxy);
            waiting.retain(|_, waiters| {
                waiters.remove(&key);
                !waiters.is_empty()
            });
        }
        Ok(())
    }
}
