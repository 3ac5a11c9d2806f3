//! The Proxy reconciler: validate the spec (grammar), find the upstream in Docker, build the
//! server block (pure), hand it to the edge, and report what the edge serves.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Applied, Category, Context, Failure, Reconciler, Requeue, object_ref};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::proxy::{
    CertificateStatus, Proxy, ProxySpec, ProxyStatus, TlsGrade, UpstreamStatus,
};
use crate::docker::{ContainerFacts, Docker, DockerError, NetworkFacts};
use crate::edge::{EdgeApi, Served, Wanted};
use crate::proxy::follow::{self, Watches};
use crate::proxy::grammar;
use crate::proxy::site::{self, Settings, Target};
use crate::proxy::upstream::{self, Refusal};
use crate::proxy::{acme, certificate};
use crate::status::{self, Observation};

/// The controller name in audit records and field managers.
pub const CONTROLLER: &str = "proxy";
/// Guards the removal of a Proxy's configuration from the edge.
pub const FINALIZER: &str = "infrapilot.io/proxy";

/// How often a Proxy with a container upstream is looked at again, to follow address changes.
const RECHECK: Duration = Duration::from_secs(30);

/// The Proxy reconciler with its outside world.
pub struct Proxies {
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
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proxies")
    }
}

impl Proxies {
    pub fn new(
        docker: Arc<dyn Docker>,
        edge: Arc<dyn EdgeApi>,
        issuer: Arc<dyn acme::Issuer>,
    ) -> Self {
        Self {
            docker,
            edge,
            issuer,
            watches: Arc::default(),
            pending_follow: Mutex::default(),
            networks: Mutex::default(),
        }
    }

    fn watch(&self, proxy: &Proxy, containers: Vec<String>) {
        if let Some(sender) = self.pending_follow.lock().ok().and_then(|mut p| p.take()) {
            tokio::spawn(follow::follow(
                self.docker.clone(),
                self.watches.clone(),
                sender,
            ));
        }
        let key = proxy_key(proxy);
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
    ) -> Result<(Result<Vec<upstream::Reachable>, Refusal>, Vec<String>), DockerError> {
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

/// When a certificate is renewed: two thirds into its lifetime.
fn renewal_time(certificate: &certificate::Certificate) -> jiff::Timestamp {
    let life = certificate.not_after.as_second() - certificate.not_before.as_second();
    jiff::Timestamp::from_second(certificate.not_before.as_second() + life * 2 / 3)
        .unwrap_or(certificate.not_after)
}

/// The wait after `failures` failed issuances (see [`Category::Acme`]'s schedule).
fn issuance_backoff(failures: u32) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(Category::Acme.delay(failures))
        .unwrap_or(jiff::SignedDuration::MAX)
}

/// The certificate and key among a Proxy's files.
fn tls_pair(id: &str, files: &[(String, Vec<u8>)]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (crt, key) = site::tls_paths(id);
    let find = |path: &str| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.clone())
    };
    find(&crt).zip(find(&key))
}

/// The edge answers HTTP-01 challenges.
struct EdgeResponder<'a>(&'a dyn EdgeApi);

#[async_trait::async_trait]
impl acme::ChallengeResponder for EdgeResponder<'_> {
    async fn publish(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        self.0
            .publish_challenge(token, key_authorization)
            .await
            .map_err(|e| e.to_string())
    }

    async fn account(&self, name: &str) -> Result<Option<String>, String> {
        let stored = self
            .0
            .acme_state(name, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stored.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn save_account(&self, name: &str, credentials: &str) -> Result<(), String> {
        self.0
            .acme_state(name, Some(credentials.as_bytes().to_vec()))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
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

/// Ready=False with `reason`, and how to come back.
fn not_ready(
    mut status: ProxyStatus,
    reason: &str,
    message: String,
    category: Category,
    requeue: Requeue,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Applied<ProxyStatus> {
    status::set(
        &mut status.conditions,
        Observation::ready(false, reason, &message),
        generation,
        now,
    );
    Applied {
        status,
        requeue,
        failure: Some(Failure { category, message }),
    }
}

#[async_trait::async_trait]
impl Reconciler for Proxies {
    type Object = Proxy;
    type Status = ProxyStatus;

    const CONTROLLER: &'static str = CONTROLLER;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);
    // TLS certificates from Secrets.
    const RBAC: &'static [crate::runtime::rbac::Rule] = &[crate::runtime::rbac::Rule::secrets()];

    fn status(object: &Proxy) -> Option<&ProxyStatus> {
        object.status.as_ref()
    }

    fn set_status(object: &mut Proxy, status: ProxyStatus) {
        object.status = Some(status);
    }

    async fn reconcile(&self, proxy: &Proxy, ctx: &Context) -> Applied<ProxyStatus> {
        let generation = proxy.metadata.generation;
        let now = (ctx.now)();
        let status = ProxyStatus {
            observed_generation: generation,
            ..proxy.status.clone().unwrap_or_default()
        };
        let fail = |status, reason: &str, message: String, category, requeue| {
            not_ready(status, reason, message, category, requeue, generation, now)
        };
        // Something outside (Docker, the edge, the secret store) did not answer: look again soon.
        let unavailable = |status, reason: &str, message: String, category| {
            not_ready(
                status,
                reason,
                message,
                category,
                Requeue::After(RECHECK),
                generation,
                now,
            )
        };

        // Validate: every user value through the grammar.
        let namespace = proxy.metadata.namespace.as_deref().unwrap_or("default");
        let name = proxy.metadata.name.as_deref().unwrap_or_default();
        let object = match grammar::object_name("metadata.namespace", namespace)
            .and_then(|ns| grammar::object_name("metadata.name", name).map(|n| format!("{ns}/{n}")))
        {
            Ok(object) => object,
            Err(error) => {
                return fail(
                    status,
                    "InvalidSpec",
                    error.to_string(),
                    Category::Config,
                    Requeue::OnChange,
                );
            }
        };
        let settings = match Settings::from_spec(&proxy.spec) {
            Ok(settings) => settings,
            Err(errors) => {
                let message: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return fail(
                    status,
                    "InvalidSpec",
                    message.join("; "),
                    Category::Config,
                    Requeue::OnChange,
                );
            }
        };
        // The certificate, when the Proxy serves HTTPS.
        let mut files = Vec::new();
        let mut certificate = None;
        if let Some(secret) = proxy.spec.tls.as_ref().and_then(|t| t.secret_name.as_ref()) {
            let read = async {
                let crt = ctx.secrets.get(namespace, secret, "tls.crt").await?;
                let key = ctx.secrets.get(namespace, secret, "tls.key").await?;
                Ok::<_, crate::secrets::SecretError>((crt, key))
            };
            let (crt, key) = match read.await {
                Ok(pair) => pair,
                Err(error) => {
                    return unavailable(
                        status,
                        "SecretUnavailable",
                        error.to_string(),
                        error.category(),
                    );
                }
            };
            match certificate::parse(&crt, &key) {
                Ok(parsed) => certificate = Some(parsed),
                Err(error) => {
                    return fail(
                        status,
                        "InvalidCertificate",
                        format!("Secret {namespace}/{secret}: {error}"),
                        Category::Config,
                        Requeue::After(RECHECK),
                    );
                }
            }
            let id = site::site_id(proxy.metadata.uid.as_deref().unwrap_or_default());
            let (crt_path, key_path) = site::tls_paths(&id);
            files = vec![(crt_path, crt), (key_path, key)];
        }

        // Find the upstream.
        let (target, upstream_status, networks, requeue) = if settings.url.is_some() {
            let address = settings.url.clone().unwrap_or_default();
            let upstream = UpstreamStatus {
                address,
                container: None,
                network: None,
            };
            (Target::Url, upstream, Vec::new(), Requeue::OnChange)
        } else {
            let resolved = self.resolve(&proxy.spec).await;
            if let Ok((_, ids)) = &resolved {
                self.watch(proxy, ids.clone());
            }
            match resolved.map(|(result, _)| result) {
                Err(error) => {
                    return unavailable(
                        status,
                        "DockerUnavailable",
                        error.to_string(),
                        error.category(),
                    );
                }
                // Docker events bring the Proxy back when its container appears or changes.
                Ok(Err(refusal)) => {
                    return fail(
                        status,
                        refusal.reason(),
                        refusal.to_string(),
                        Category::Upstream,
                        Requeue::OnChange,
                    );
                }
                Ok(Ok(reachable)) => {
                    let addresses: Vec<_> = reachable.iter().map(|r| r.address).collect();
                    let networks: BTreeSet<String> =
                        reachable.iter().map(|r| r.network.clone()).collect();
                    let upstream = UpstreamStatus {
                        address: addresses
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        container: Some(
                            reachable
                                .iter()
                                .map(|r| r.container.clone())
                                .collect::<Vec<_>>()
                                .join(", "),
                        ),
                        network: Some(networks.iter().cloned().collect::<Vec<_>>().join(", ")),
                    };
                    (
                        Target::Containers(addresses),
                        upstream,
                        networks.into_iter().collect(),
                        Requeue::OnChange,
                    )
                }
            }
        };

        // An ACME certificate: use the one the edge serves until it is due for renewal; then
        // (or when there is none) issue, with the edge answering the HTTP-01 challenges.
        let id = site::site_id(proxy.metadata.uid.as_deref().unwrap_or_default());
        let mut status = status;
        let mut acme_requeue = None;
        if let Some(acme) = proxy.spec.tls.as_ref().and_then(|t| t.acme.as_ref()) {
            let served = match self.edge.files(&id).await {
                Ok(files) => files,
                Err(error) => {
                    return unavailable(
                        status,
                        "EdgeUnavailable",
                        error.to_string(),
                        error.category(),
                    );
                }
            };
            let hosts: Vec<String> = settings
                .hosts
                .iter()
                .map(|h| h.as_str().to_owned())
                .collect();
            let current = tls_pair(&id, &served).and_then(|(crt, key)| {
                certificate::parse(&crt, &key)
                    .ok()
                    .map(|parsed| (parsed, crt, key))
            });
            let mut record = status.certificate.clone().unwrap_or_default();
            let due = current.as_ref().is_none_or(|(c, _, _)| {
                now >= renewal_time(c)
                    || !hosts
                        .iter()
                        .all(|h| c.names.iter().any(|n| certificate::covers(n, h)))
            });
            let retry_at = record
                .last_failure_time
                .as_ref()
                .map(|t| t.0 + issuance_backoff(record.failed_issuance_attempts));
            if due && retry_at.is_none_or(|at| now >= at) {
                // The challenge location must be live before the server asks for it.
                let pending = current.is_some();
                let config = site::render(&id, &object, &settings, &target, pending);
                let prepared = Wanted {
                    id: id.clone(),
                    object: object_ref(proxy),
                    config,
                    networks: networks.clone(),
                    files: if pending { served.clone() } else { Vec::new() },
                };
                if let Err(error) = self.edge.apply(prepared).await {
                    return unavailable(
                        status,
                        "EdgeUnavailable",
                        error.to_string(),
                        error.category(),
                    );
                }
                let request = acme::Request {
                    directory: acme
                        .server
                        .clone()
                        .unwrap_or_else(|| acme::LETS_ENCRYPT.to_owned()),
                    ca_bundle: acme.ca_bundle.clone(),
                    email: acme.email.clone(),
                    hosts: hosts.clone(),
                };
                let responder = EdgeResponder(self.edge.as_ref());
                let issued = self.issuer.issue(&request, &responder).await;
                let record_audit = |outcome: Result<(), String>| {
                    let record = crate::audit::NewRecord {
                        controller: CONTROLLER.to_owned(),
                        object: object_ref(proxy),
                        action: "certificate.issue".to_owned(),
                        target: format!("{} for {}", request.directory, hosts.join(", ")),
                        outcome: if outcome.is_ok() {
                            crate::audit::Outcome::Success
                        } else {
                            crate::audit::Outcome::Failure
                        },
                        detail: outcome.err().unwrap_or_default(),
                    };
                    async move {
                        if let Err(error) = ctx.audit.record(record).await {
                            tracing::error!(%error, "could not write the audit record of an issuance");
                        }
                    }
                };
                match issued {
                    Ok(issued) => {
                        record_audit(Ok(())).await;
                        record.failed_issuance_attempts = 0;
                        record.last_failure_time = None;
                        let (crt_path, key_path) = site::tls_paths(&id);
                        files = vec![
                            (crt_path, issued.chain_pem.into_bytes()),
                            (key_path, issued.key_pem.into_bytes()),
                        ];
                    }
                    Err(error) => {
                        record_audit(Err(error.clone())).await;
                        record.failed_issuance_attempts =
                            record.failed_issuance_attempts.saturating_add(1);
                        record.last_failure_time = Some(Time(now));
                        status.certificate = Some(record.clone());
                        let retry = issuance_backoff(record.failed_issuance_attempts);
                        match current {
                            // The current certificate keeps serving until it expires.
                            Some((_, crt, key)) => {
                                files = vec![
                                    (site::tls_paths(&id).0, crt),
                                    (site::tls_paths(&id).1, key),
                                ];
                                acme_requeue = Some(Duration::try_from(retry).unwrap_or(RECHECK));
                            }
                            None => {
                                return fail(
                                    status,
                                    "IssuanceFailed",
                                    format!(
                                        "the certificate could not be issued (attempt {}): {error}",
                                        record.failed_issuance_attempts
                                    ),
                                    Category::Acme,
                                    Requeue::After(Duration::try_from(retry).unwrap_or(RECHECK)),
                                );
                            }
                        }
                    }
                }
            } else if let Some((_, crt, key)) = current {
                files = vec![(site::tls_paths(&id).0, crt), (site::tls_paths(&id).1, key)];
            } else {
                return fail(
                    status,
                    "IssuanceFailed",
                    "waiting to retry the issuance".to_owned(),
                    Category::Acme,
                    Requeue::After(RECHECK),
                );
            }
            if let Some((crt, key)) = tls_pair(&id, &files)
                && let Ok(parsed) = certificate::parse(&crt, &key)
            {
                // Come back when it is due for renewal (a second from now at the earliest).
                let renewal = renewal_time(&parsed);
                record.renewal_time = Some(Time(renewal));
                let until = renewal.duration_since(now);
                acme_requeue.get_or_insert(
                    Duration::try_from(until)
                        .unwrap_or(Duration::from_secs(1))
                        .max(Duration::from_secs(1)),
                );
                certificate = Some(parsed);
            }
            status.certificate = Some(record);
        }

        // Build, then hand to the edge.
        let requeue = match (acme_requeue, requeue) {
            (Some(renew), Requeue::After(other)) => Requeue::After(renew.min(other)),
            (Some(renew), Requeue::OnChange) => Requeue::After(renew),
            (None, requeue) => requeue,
        };
        let config = site::render(&id, &object, &settings, &target, certificate.is_some());
        let hash = hex::encode(&Sha256::digest(config.as_bytes())[..8]);
        let wanted = Wanted {
            id,
            object: object_ref(proxy),
            config,
            networks: networks.clone(),
            files,
        };
        match self.edge.apply(wanted).await {
            Err(error) => unavailable(
                status,
                "EdgeUnavailable",
                error.to_string(),
                error.category(),
            ),
            Ok(Served::Rejected(message)) => fail(
                status,
                "NginxRejected",
                format!(
                    "nginx rejected the configuration (the previous one keeps serving): {message}"
                ),
                Category::Rejected,
                Requeue::OnChange,
            ),
            Ok(Served::Serving) => {
                let hosts: Vec<&str> = settings.hosts.iter().map(|h| h.as_str()).collect();
                let (certificate_status, tls_grade) = match (&certificate, &proxy.spec.tls) {
                    (Some(certificate), Some(tls)) => {
                        let hsts = tls
                            .hsts
                            .as_ref()
                            .and_then(|h| crate::api::common::parse_duration(&h.max_age))
                            .map(|d| d.as_secs());
                        let (grade, reasons) =
                            certificate::grade(certificate, &hosts, tls.policy, hsts, now);
                        (
                            Some(CertificateStatus {
                                not_after: Some(Time(certificate.not_after)),
                                ..status.certificate.clone().unwrap_or_default()
                            }),
                            Some(TlsGrade { grade, reasons }),
                        )
                    }
                    _ => (None, None),
                };
                let mut status = ProxyStatus {
                    upstream: Some(upstream_status.clone()),
                    networks,
                    config_hash: Some(hash),
                    certificate: certificate_status,
                    tls_grade,
                    ..status
                };
                let message = if settings.suspend {
                    format!("{} answer 503 (suspended)", hosts.join(", "))
                } else {
                    format!(
                        "serving {} from {}",
                        hosts.join(", "),
                        upstream_status.address
                    )
                };
                status::set(
                    &mut status.conditions,
                    Observation::ready(
                        true,
                        if settings.suspend {
                            "Suspended"
                        } else {
                            "Serving"
                        },
                        message,
                    ),
                    generation,
                    now,
                );
                Applied {
                    status,
                    requeue,
                    failure: None,
                }
            }
        }
    }

    fn triggers(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
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
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime_and_failures_back_off() {
        let at = |day: i64| jiff::Timestamp::from_second(1_800_000_000 + day * 86_400).unwrap();
        let issued = certificate::Certificate {
            not_before: at(0),
            not_after: at(90),
            names: vec!["a.example.com".to_owned()],
            key: ("EC".to_owned(), 256),
            chain_length: 2,
            chain_ordered: true,
            self_signed: false,
        };
        assert_eq!(renewal_time(&issued), at(60));
        assert_eq!(issuance_backoff(1), jiff::SignedDuration::from_secs(30));
        assert_eq!(issuance_backoff(3), jiff::SignedDuration::from_secs(120));
        assert_eq!(
            issuance_backoff(30),
            jiff::SignedDuration::from_secs(6 * 3600)
        );
    }
}
