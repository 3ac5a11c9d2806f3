//! Who holds a hostname that several Proxies name (pure): the oldest claim. Claims are ranked by
//! `metadata.creationTimestamp`, then namespace, then name, so every reconcile of every Proxy
//! comes to the same answer whatever the order they run in; a Proxy being deleted holds nothing.
//! Hostnames are compared exactly as the grammar writes them: `*.example.com` and
//! `a.example.com` are different hosts (nginx picks the most specific server name).

use std::collections::{BTreeSet, HashMap};

use crate::api::proxy::Proxy;
use crate::proxy::grammar::Hostname;

/// Where a Proxy stands in the queue for a hostname: earlier is first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank {
    /// `creationTimestamp`; one never stamped ranks last.
    pub created: jiff::Timestamp,
    pub namespace: String,
    pub name: String,
}

impl Rank {
    pub(super) fn of(proxy: &Proxy) -> Self {
        let (namespace, name) = super::proxy_key(proxy);
        let created = proxy
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(jiff::Timestamp::MAX, |t| t.0);
        Self {
            created,
            namespace,
            name,
        }
    }

    /// `namespace/name`, as messages name a Proxy.
    pub(super) fn object(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Another Proxy naming some of this Proxy's hosts.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Claim {
    pub rank: Rank,
    /// The hosts it names that this Proxy names too.
    pub hosts: Vec<Hostname>,
    /// `deletionTimestamp` is set: it holds no claim.
    pub deleting: bool,
}

/// The claims of `others` on `hosts` (the hosts of `proxy`). The Proxy itself, and hosts that do
/// not pass the grammar (never served), are left out.
#[cfg(test)]
pub(super) fn claims(proxy: &Proxy, hosts: &[Hostname], others: &[Proxy]) -> Vec<Claim> {
    let mut index = Index::default();
    for other in others {
        index.note(other);
    }
    index.claims(proxy, hosts)
}

/// Every Proxy's claims by hostname, kept in memory by the reconciler. Listing every Proxy at
/// every reconcile would cost the store (or the API server) work that grows with the square of
/// the number of Proxies; instead the index is read whole once, then kept by each Proxy's own
/// reconcile (which sees the Proxy as it is now) and cleanup, and read whole again every
/// [`Index::RELIST`] in case a change was missed.
///
/// What it can miss until then is a change not yet reconciled. A Proxy created since the last
/// read ranks after every Proxy read, so missing it never makes a Proxy take a host it does not
/// hold; a holder changed or deleted meanwhile is reconciled (or cleaned up) itself, which
/// updates the index before the Proxies waiting for it are reconciled again.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// When every Proxy was last read; `None` before the first read.
    listed: Option<std::time::Instant>,
    proxies: HashMap<ProxyKey, Entry>,
    by_host: HashMap<Hostname, BTreeSet<ProxyKey>>,
}

#[derive(Debug)]
struct Entry {
    rank: Rank,
    hosts: Vec<Hostname>,
    deleting: bool,
}

type ProxyKey = (String, String);

impl Index {
    /// How often every Proxy is read again.
    pub(super) const RELIST: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether every Proxy must be read again.
    pub(super) fn stale(&self, now: std::time::Instant) -> bool {
        self.listed
            .is_none_or(|listed| now.duration_since(listed) >= Self::RELIST)
    }

    /// Replaces the index with `proxies`, every Proxy there is.
    pub(super) fn replace(&mut self, proxies: &[Proxy], now: std::time::Instant) {
        self.proxies.clear();
        self.by_host.clear();
        for proxy in proxies {
            self.note(proxy);
        }
        self.listed = Some(now);
    }

    /// Takes `proxy` as it is now.
    pub(super) fn note(&mut self, proxy: &Proxy) {
        let key = super::proxy_key(proxy);
        self.forget(&key);
        let mut hosts: Vec<Hostname> = proxy
            .spec
            .hosts
            .iter()
            .filter_map(|h| Hostname::parse("spec.hosts", h).ok())
            .collect();
        hosts.sort();
        hosts.dedup();
        for host in &hosts {
            self.by_host
                .entry(host.clone())
                .or_default()
                .insert(key.clone());
        }
        let entry = Entry {
            rank: Rank::of(proxy),
            hosts,
            deleting: proxy.metadata.deletion_timestamp.is_some(),
        };
        self.proxies.insert(key, entry);
    }

    /// Drops a Proxy that is gone.
    pub(super) fn forget(&mut self, key: &ProxyKey) {
        let Some(entry) = self.proxies.remove(key) else {
            return;
        };
        for host in entry.hosts {
            if let Some(holders) = self.by_host.get_mut(&host) {
                holders.remove(key);
                if holders.is_empty() {
                    self.by_host.remove(&host);
                }
            }
        }
    }

    /// The claims of the other Proxies on `hosts` (the hosts of `proxy`).
    pub(super) fn claims(&self, proxy: &Proxy, hosts: &[Hostname]) -> Vec<Claim> {
        let own = super::proxy_key(proxy);
        let others: BTreeSet<&ProxyKey> = hosts
            .iter()
            .filter_map(|host| self.by_host.get(host))
            .flatten()
            .filter(|key| **key != own)
            .collect();
        others
            .into_iter()
            .filter_map(|key| self.proxies.get(key))
            .map(|entry| Claim {
                rank: entry.rank.clone(),
                hosts: entry
                    .hosts
                    .iter()
                    .filter(|h| hosts.contains(h))
                    .cloned()
                    .collect(),
                deleting: entry.deleting,
            })
            .collect()
    }
}

/// A host of this Proxy that an earlier claim holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Lost {
    pub host: String,
    pub holder: Rank,
}

/// The hosts of `proxy` (ranked `rank`) held by an earlier claim, each with its holder, in the
/// order of `hosts`. Empty: every host is this Proxy's.
pub(super) fn lost(rank: &Rank, hosts: &[Hostname], claims: &[Claim]) -> Vec<Lost> {
    let mut lost: Vec<Lost> = Vec::new();
    for host in hosts {
        if lost.iter().any(|l| l.host == host.as_str()) {
            continue;
        }
        let holder = claims
            .iter()
            .filter(|c| !c.deleting && c.hosts.contains(host))
            .map(|c| &c.rank)
            .filter(|r| *r < rank)
            .min();
        if let Some(holder) = holder {
            lost.push(Lost {
                host: host.as_str().to_owned(),
                holder: holder.clone(),
            });
        }
    }
    lost
}
