//! The reads: the other Proxies' claims on this Proxy's hosts, the Secret, the upstream in
//! Docker, and the certificate the edge serves.
//!
//! Reads stop at the first fact that already settles the outcome (a host another Proxy holds,
//! a Secret that cannot be read or parsed, Docker not answering, an upstream that cannot be
//! reached): a Proxy that cannot be served then causes no Docker traffic, is not followed, and
//! never asks the edge, which would create the edge container.

use super::Proxies;
use super::claims::{self, Claim, Rank};
use crate::api::proxy::{Proxy, ProxySpec};
use crate::docker::{ContainerFacts, DockerError, NetworkFacts};
use crate::edge::EdgeError;
use crate::proxy::certificate;
use crate::proxy::grammar::Hostname;
use crate::proxy::site::Settings;
use crate::proxy::upstream::{self, Reachable, Refusal};
use crate::reconcile::{Context, Failure};
use crate::runtime::objects::Selector;
use crate::secrets::SecretError;

/// Files as the edge holds them: absolute path and content.
pub(super) type Files = Vec<(String, Vec<u8>)>;
/// A certificate chain and its key, PEM, as a Secret holds them.
pub(super) type Pair = (Vec<u8>, Vec<u8>);
/// The upstream's containers, each reachable, or why not.
pub(super) type Upstream = Result<Result<Vec<Reachable>, Refusal>, DockerError>;

/// What a Proxy's reconcile found outside its object. `None`: not asked, because the spec
/// does not need it or an earlier fact settled the outcome.
#[derive(Clone, Debug)]
pub(super) struct Observed {
    /// The other Proxies (every namespace) naming some of this Proxy's hosts. Always asked,
    /// first.
    pub claims: Result<Vec<Claim>, Failure>,
    /// `tls.crt` and `tls.key` of `tls.secretName`.
    pub secret: Option<Result<Pair, SecretError>>,
    /// The containers the spec names, each reachable, or why not. Never asked for a URL.
    pub upstream: Option<Upstream>,
    /// The Proxy's files the edge serves now; asked only for ACME, whose certificate lives
    /// only there.
    pub served: Option<Result<Files, EdgeError>>,
}

impl Default for Observed {
    /// Nothing observed yet, and no other Proxy naming a host of this one.
    fn default() -> Self {
        Self {
            claims: Ok(Vec::new()),
            secret: None,
            upstream: None,
            served: None,
        }
    }
}

impl Proxies {
    /// The other Proxies' claims on `hosts`, from the index, which is read whole first when it
    /// is stale; `proxy` is noted as it is now.
    async fn claims(&self, proxy: &Proxy, hosts: &[Hostname]) -> Result<Vec<Claim>, Failure> {
        let mut index = self.hosts.lock().await;
        let now = std::time::Instant::now();
        if index.stale(now) {
            let all = self
                .objects
                .list_all::<Proxy>(&Selector::everything())
                .await?;
            index.replace(&all, now);
        }
        index.note(proxy);
        Ok(index.claims(proxy, hosts))
    }

    pub(super) async fn observe(
        &self,
        proxy: &Proxy,
        settings: &Settings,
        id: &str,
        ctx: &Context,
    ) -> Observed {
        let mut observed = Observed::default();
        let claims = self.claims(proxy, &settings.hosts).await;
        let free = claims
            .as_ref()
            .is_ok_and(|c| claims::lost(&Rank::of(proxy), &settings.hosts, c).is_empty());
        observed.claims = claims;
        if !free {
            return observed;
        }
        let namespace = proxy.metadata.namespace.as_deref().unwrap_or("default");
        let tls = proxy.spec.tls.as_ref();
        if let Some(secret) = tls.and_then(|t| t.secret_name.as_ref()) {
            let read = async {
                let crt = ctx.secrets.get(namespace, secret, "tls.crt").await?;
                let key = ctx.secrets.get(namespace, secret, "tls.key").await?;
                Ok((crt, key))
            }
            .await;
            let usable = read
                .as_ref()
                .is_ok_and(|(crt, key)| certificate::parse(crt, key).is_ok());
            observed.secret = Some(read);
            if !usable {
                return observed;
            }
        }
        if let Some(name) = settings
            .url
            .as_deref()
            .and_then(crate::proxy::site::url_name)
        {
            // A name Docker's DNS knows is a container's: its start brings the Proxy back at
            // once, to say that the name now resolves.
            self.watch(proxy, vec![name.to_owned()]);
        }
        if settings.url.is_none() {
            let resolved = self.resolve(&proxy.spec).await;
            if let Ok((_, ids)) = &resolved {
                self.watch(proxy, ids.clone());
            }
            let found = resolved.map(|(result, _)| result);
            let reachable = matches!(found, Ok(Ok(_)));
            observed.upstream = Some(found);
            if !reachable {
                return observed;
            }
        }
        if tls.is_some_and(|t| t.acme.is_some()) {
            observed.served = Some(self.edge.files(id).await);
        }
        observed
    }

    fn watch(&self, proxy: &Proxy, containers: Vec<String>) {
        if let Some(sender) = self.pending_follow.lock().ok().and_then(|mut p| p.take()) {
            tokio::spawn(crate::proxy::follow::follow(
                self.docker.clone(),
                self.watches.clone(),
                sender,
            ));
        }
        let key = super::proxy_key(proxy);
        if let Ok(mut watches) = self.watches.lock() {
            let mut names = containers;
            names.extend(proxy.spec.upstream.name.clone());
            watches.set(&key, names, proxy.spec.upstream.selector.clone());
        }
    }

    async fn network_facts(
        &self,
        container: &ContainerFacts,
    ) -> Result<Vec<NetworkFacts>, DockerError> {
        let mut facts = Vec::new();
        for attachment in &container.networks {
            let cached = self
                .networks
                .lock()
                .ok()
                .and_then(|n| n.get(&attachment.network_id).cloned());
            let found = match cached {
                Some(found) => Some(found),
                None => {
                    let found = self.docker.network(&attachment.network_id).await?;
                    if let (Some(found), Ok(mut cache)) = (&found, self.networks.lock()) {
                        cache.insert(attachment.network_id.clone(), found.clone());
                    }
                    found
                }
            };
            facts.extend(found);
        }
        Ok(facts)
    }

    /// The containers the spec names, each reachable, or why not; and the ids of the
    /// containers looked at, to follow.
    async fn resolve(
        &self,
        spec: &ProxySpec,
    ) -> Result<(Result<Vec<Reachable>, Refusal>, Vec<String>), DockerError> {
        let port = spec.upstream.port.unwrap_or(80);
        let (candidates, described) = match (&spec.upstream.name, &spec.upstream.selector) {
            (Some(name), _) => (
                self.docker
                    .container(name)
                    .await?
                    .into_iter()
                    .collect::<Vec<_>>(),
                format!("name {name}"),
            ),
            (None, Some(selector)) => {
                let running: Vec<ContainerFacts> = self
                    .docker
                    .containers_with_labels(selector)
                    .await?
                    .into_iter()
                    .filter(|c| c.running)
                    .collect();
                let labels: Vec<String> =
                    selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (running, format!("labels {}", labels.join(",")))
            }
            (None, None) => (Vec::new(), "nothing".to_owned()),
        };
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        if candidates.is_empty() {
            return Ok((Err(Refusal::NotFound(described)), ids));
        }
        let mut reachable = Vec::new();
        for container in &candidates {
            let facts = self.network_facts(container).await?;
            match upstream::choose(container, &facts, spec.upstream.network.as_deref(), port) {
                Ok(found) => reachable.push(found),
                Err(refusal) => return Ok((Err(refusal), ids)),
            }
        }
        Ok((Ok(reachable), ids))
    }
}
