//! Who holds a hostname that several Proxies name (pure): the oldest claim. Claims are ranked by
//! `metadata.creationTimestamp`, then namespace, then name, so every reconcile of every Proxy
//! comes to the same answer whatever the order they run in; a Proxy being deleted holds nothing.
//! Hostnames are compared exactly as the grammar writes them: `*.example.com` and
//! `a.example.com` are different hosts (nginx picks the most specific server name).

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
pub(super) fn claims(proxy: &Proxy, hosts: &[Hostname], others: &[Proxy]) -> Vec<Claim> {
    let own = super::proxy_key(proxy);
    others
        .iter()
        .filter(|other| super::proxy_key(other) != own)
        .filter_map(|other| {
            let named: Vec<Hostname> = other
                .spec
                .hosts
                .iter()
                .filter_map(|h| Hostname::parse("spec.hosts", h).ok())
                .filter(|h| hosts.contains(h))
                .collect();
            (!named.is_empty()).then(|| Claim {
                rank: Rank::of(other),
                hosts: named,
                deleting: other.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect()
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
