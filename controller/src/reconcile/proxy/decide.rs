//! The decisions, all pure: from the spec, the observed facts, the current status and the
//! time, whether the Proxy holds its hosts, what to serve and whether a certificate must be
//! issued first ([`decide`]); once the
//! issuer answered, which certificate is served ([`certify`]); and the configuration handed
//! to the edge ([`site`]). Unit tests drive every branch without Docker.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};

use super::RECHECK;
use super::claims::{self, Lost, Rank};
use super::observe::{Files, Observed};
use crate::api::proxy::{CertificateStatus, Proxy, UpstreamStatus};
use crate::edge::Wanted;
use crate::proxy::certificate::{self, Certificate};
use crate::proxy::site::{self, Settings, Target};
use crate::proxy::{acme, grammar};
use crate::reconcile::{Category, Requeue, object_ref};

/// A Proxy whose every value passed the grammar.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Valid {
    /// [`site::site_id`]: from the uid, never from a user-chosen name.
    pub id: String,
    /// `namespace/name`, checked as object names.
    pub object: String,
    pub settings: Settings,
}

/// Why the Proxy is not served now: Ready=False, and the edge is left as it is.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Stop {
    pub reason: &'static str,
    pub message: String,
    pub category: Category,
    pub requeue: Requeue,
    /// The issuance record, when a failed issuance changed it.
    pub certificate: Option<Box<CertificateStatus>>,
}

impl Stop {
    pub(super) fn new(
        reason: &'static str,
        message: String,
        category: Category,
        requeue: Requeue,
    ) -> Self {
        Self {
            reason,
            message,
            category,
            requeue,
            certificate: None,
        }
    }

    /// Something outside (Docker, the edge, the secret store) did not answer: look again soon.
    pub(super) fn unavailable(reason: &'static str, message: String, category: Category) -> Self {
        Self::new(reason, message, category, Requeue::After(RECHECK))
    }
}

/// What a reconcile does.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Plan {
    Stop(Stop),
    /// Not served, and the site `id` the edge may still serve from before is removed: a Proxy
    /// that lost a host is never served, not even its other hosts.
    Withdraw {
        id: String,
        stop: Stop,
    },
    Serve(Box<Serve>),
}

/// The reason of a Proxy that lost a host to an earlier claim.
pub(super) const HOST_CONFLICT: &str = "HostConflict";

/// A Proxy to hand to the edge.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Serve {
    pub valid: Valid,
    pub target: Target,
    pub upstream: UpstreamStatus,
    /// The networks the edge joins to reach the upstream, sorted.
    pub networks: Vec<String>,
    /// The certificate of `tls.secretName` and its files in the edge.
    pub secret: Option<(Certificate, Files)>,
    /// Set when the certificate comes from ACME: it then replaces the Secret's.
    pub acme: Option<Acme>,
}

/// The ACME side of a Proxy to serve.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Acme {
    /// The issuance record the status carries.
    pub record: CertificateStatus,
    /// The certificate the edge serves now, with its chain and key, when it parses.
    pub current: Option<(Certificate, Vec<u8>, Vec<u8>)>,
    /// Issue now; `None` keeps `current`.
    pub issue: Option<Issue>,
}

/// An issuance to run.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Issue {
    /// Served before asking: the challenge location must be live before the ACME server
    /// asks for it. It keeps the current certificate, if any, serving meanwhile.
    pub prepare: Wanted,
    pub request: acme::Request,
}

/// Checks every user value of the Proxy through the grammar.
pub(super) fn validate(proxy: &Proxy) -> Result<Valid, Stop> {
    let invalid = |message| Stop::new("InvalidSpec", message, Category::Config, Requeue::OnChange);
    let namespace = proxy.metadata.namespace.as_deref().unwrap_or("default");
    let name = proxy.metadata.name.as_deref().unwrap_or_default();
    let object = grammar::object_name("metadata.namespace", namespace)
        .and_then(|ns| grammar::object_name("metadata.name", name).map(|n| format!("{ns}/{n}")))
        .map_err(|error| invalid(error.to_string()))?;
    let settings = Settings::from_spec(&proxy.spec).map_err(|errors| {
        let message: Vec<String> = errors.iter().map(ToString::to_string).collect();
        invalid(message.join("; "))
    })?;
    Ok(Valid {
        id: site::site_id(proxy.metadata.uid.as_deref().unwrap_or_default()),
        object,
        settings,
    })
}

/// What to do about `proxy`, given what was observed at `now`.
pub(super) fn decide(
    proxy: &Proxy,
    valid: Valid,
    observed: Observed,
    now: jiff::Timestamp,
) -> Plan {
    let lost = match &observed.claims {
        Ok(found) => claims::lost(&Rank::of(proxy), &valid.settings.hosts, found),
        Err(failure) => {
            return Plan::Stop(Stop::unavailable(
                "ProxiesUnavailable",
                format!(
                    "the other Proxies' hosts could not be read: {}",
                    failure.message
                ),
                failure.category,
            ));
        }
    };
    if !lost.is_empty() {
        return conflict(proxy, valid, &lost);
    }
    match serve(proxy, valid, observed, now) {
        Ok(serve) => Plan::Serve(Box::new(serve)),
        Err(stop) => Plan::Stop(stop),
    }
}

/// Not served while another Proxy holds one of its hosts; looked at again on the schedule of a
/// setting a person must fix, in case the trigger from the holder's reconcile or cleanup is
/// lost (a restarted operator).
fn conflict(proxy: &Proxy, valid: Valid, lost: &[Lost]) -> Plan {
    let held: Vec<String> = lost
        .iter()
        .map(|l| format!("{} by Proxy {}", l.host, l.holder.object()))
        .collect();
    let message = format!(
        "hosts claimed first by another Proxy: {}; this Proxy is not served until they are free",
        held.join(", ")
    );
    let stop = Stop::new(
        HOST_CONFLICT,
        message,
        Category::Config,
        Requeue::After(Category::Config.schedule().first),
    );
    // The edge may serve the Proxy from before it lost (served, or half-way through an
    // issuance): only one already withdrawn, or never looked at, is left alone.
    let ready = proxy
        .status
        .as_ref()
        .and_then(|s| s.conditions.get(crate::status::READY));
    match ready {
        Some(ready) if ready.reason != HOST_CONFLICT => Plan::Withdraw { id: valid.id, stop },
        _ => Plan::Stop(stop),
    }
}

/// A fact `observe` skips only after an earlier one settled the outcome.
fn unobserved(what: &str) -> Stop {
    Stop::unavailable(
        "Internal",
        format!("{what} was not observed"),
        Category::Internal,
    )
}

fn serve(
    proxy: &Proxy,
    valid: Valid,
    observed: Observed,
    now: jiff::Timestamp,
) -> Result<Serve, Stop> {
    let tls = proxy.spec.tls.as_ref();
    let secret = match (tls.and_then(|t| t.secret_name.as_ref()), observed.secret) {
        (None, _) => None,
        (Some(_), None) => return Err(unobserved("the Secret")),
        (Some(_), Some(Err(error))) => {
            return Err(Stop::unavailable(
                "SecretUnavailable",
                error.to_string(),
                error.category(),
            ));
        }
        (Some(name), Some(Ok((crt, key)))) => match certificate::parse(&crt, &key) {
            Ok(parsed) => {
                let (crt_path, key_path) = site::tls_paths(&valid.id);
                Some((parsed, vec![(crt_path, crt), (key_path, key)]))
            }
            Err(error) => {
                let namespace = proxy.metadata.namespace.as_deref().unwrap_or("default");
                return Err(Stop::new(
                    "InvalidCertificate",
                    format!("Secret {namespace}/{name}: {error}"),
                    Category::Config,
                    Requeue::After(RECHECK),
                ));
            }
        },
    };

    let (target, upstream, networks) = match (&valid.settings.url, observed.upstream) {
        (Some(url), _) => {
            let upstream = UpstreamStatus {
                address: url.clone(),
                verification: valid
                    .settings
                    .upstream_tls
                    .as_ref()
                    .map(|t| t.verify.label().to_owned()),
                ..UpstreamStatus::default()
            };
            (Target::Url, upstream, Vec::new())
        }
        (None, None) => return Err(unobserved("the upstream")),
        (None, Some(Err(error))) => {
            return Err(Stop::unavailable(
                "DockerUnavailable",
                error.to_string(),
                error.category(),
            ));
        }
        // Docker events bring the Proxy back when its container appears or changes.
        (None, Some(Ok(Err(refusal)))) => {
            return Err(Stop::new(
                refusal.reason(),
                refusal.to_string(),
                Category::Upstream,
                Requeue::OnChange,
            ));
        }
        (None, Some(Ok(Ok(reachable)))) => {
            let addresses: Vec<_> = reachable.iter().map(|r| r.address).collect();
            let networks: std::collections::BTreeSet<String> =
                reachable.iter().map(|r| r.network.clone()).collect();
            let join = |parts: Vec<String>| parts.join(", ");
            let upstream = UpstreamStatus {
                address: join(addresses.iter().map(ToString::to_string).collect()),
                container: Some(join(
                    reachable.iter().map(|r| r.container.clone()).collect(),
                )),
                network: Some(join(networks.iter().cloned().collect())),
                ..UpstreamStatus::default()
            };
            (
                Target::Containers(addresses),
                upstream,
                networks.into_iter().collect(),
            )
        }
    };

    let mut serve = Serve {
        valid,
        target,
        upstream,
        networks,
        secret,
        acme: None,
    };
    if let Some(spec) = tls.and_then(|t| t.acme.as_ref()) {
        let served = match observed.served {
            None => return Err(unobserved("the edge's files")),
            Some(Err(error)) => {
                return Err(Stop::unavailable(
                    "EdgeUnavailable",
                    error.to_string(),
                    error.category(),
                ));
            }
            Some(Ok(files)) => files,
        };
        serve.acme = Some(acme(proxy, &serve, spec, served, now)?);
    }
    Ok(serve)
}

/// Uses the certificate the edge serves until it is due for renewal; then (or when there is
/// none) issues, unless the last failures ask to wait.
fn acme(
    proxy: &Proxy,
    serve: &Serve,
    spec: &crate::api::proxy::Acme,
    served: Files,
    now: jiff::Timestamp,
) -> Result<Acme, Stop> {
    let Valid {
        id,
        object,
        settings,
    } = &serve.valid;
    let hosts = hosts(settings);
    let current = tls_pair(id, &served).and_then(|(crt, key)| {
        certificate::parse(&crt, &key)
            .ok()
            .map(|parsed| (parsed, crt, key))
    });
    let record = proxy
        .status
        .as_ref()
        .and_then(|s| s.certificate.clone())
        .unwrap_or_default();
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
        let pending = current.is_some();
        let prepare = Wanted {
            id: id.clone(),
            object: object_ref(proxy),
            config: site::render(id, object, settings, &serve.target, pending),
            networks: serve.networks.clone(),
            // The certificate served now, if any, and the spec's own files as the spec has them.
            files: {
                let mut files = site::spec_files(id, settings);
                if pending {
                    let ca = site::upstream_ca_path(id);
                    files.extend(served.into_iter().filter(|(path, _)| *path != ca));
                }
                files
            },
        };
        let request = acme::Request {
            directory: spec
                .server
                .clone()
                .unwrap_or_else(|| acme::LETS_ENCRYPT.to_owned()),
            ca_bundle: spec.ca_bundle.clone(),
            email: spec.email.clone(),
            hosts,
        };
        let issue = Some(Issue { prepare, request });
        Ok(Acme {
            record,
            current,
            issue,
        })
    } else if current.is_some() {
        Ok(Acme {
            record,
            current,
            issue: None,
        })
    } else {
        // The failure that started the wait says why; "waiting" alone would hide it.
        let last = proxy
            .status
            .as_ref()
            .and_then(|s| s.conditions.get(crate::status::READY))
            .filter(|ready| ready.reason == "IssuanceFailed")
            .map(|ready| ready.message.clone());
        let message = match (last, retry_at) {
            (Some(last), _) if last.starts_with("the certificate could not be issued") => last,
            (_, Some(at)) => format!("waiting to retry the issuance at {at}"),
            _ => "waiting to retry the issuance".to_owned(),
        };
        Err(Stop::new(
            "IssuanceFailed",
            message,
            Category::Acme,
            Requeue::After(RECHECK),
        ))
    }
}

/// The certificate a Proxy serves, once any issuance answered.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Certified {
    pub files: Files,
    pub certificate: Option<Certificate>,
    /// The issuance record for the status (ACME only).
    pub record: Option<CertificateStatus>,
    /// When to come back: renewal, or the next attempt after a failure.
    pub recheck: Option<Duration>,
}

/// Which certificate `serve` serves, given the issuer's answer (`None`: nothing was issued).
pub(super) fn certify(
    serve: &Serve,
    issued: Option<Result<acme::Issued, String>>,
    now: jiff::Timestamp,
) -> Result<Certified, Stop> {
    let (secret_certificate, secret_files) = serve.secret.clone().unzip();
    let Some(acme) = &serve.acme else {
        return Ok(Certified {
            files: secret_files.unwrap_or_default(),
            certificate: secret_certificate,
            record: None,
            recheck: None,
        });
    };
    let id = &serve.valid.id;
    let (crt_path, key_path) = site::tls_paths(id);
    let mut record = acme.record.clone();
    let mut recheck = None;
    let current = acme.current.as_ref().map(|(_, crt, key)| {
        vec![
            (crt_path.clone(), crt.clone()),
            (key_path.clone(), key.clone()),
        ]
    });
    let files = match issued {
        Some(Ok(issued)) => {
            record.failed_issuance_attempts = 0;
            record.last_failure_time = None;
            vec![
                (crt_path, issued.chain_pem.into_bytes()),
                (key_path, issued.key_pem.into_bytes()),
            ]
        }
        Some(Err(error)) => {
            record.failed_issuance_attempts = record.failed_issuance_attempts.saturating_add(1);
            record.last_failure_time = Some(Time(now));
            let retry = Duration::try_from(issuance_backoff(record.failed_issuance_attempts))
                .unwrap_or(RECHECK);
            match current {
                // The current certificate keeps serving until it expires.
                Some(files) => {
                    recheck = Some(retry);
                    files
                }
                None => {
                    let message = format!(
                        "the certificate could not be issued (attempt {}): {error}",
                        record.failed_issuance_attempts
                    );
                    return Err(Stop {
                        certificate: Some(Box::new(record)),
                        ..Stop::new(
                            "IssuanceFailed",
                            message,
                            Category::Acme,
                            Requeue::After(retry),
                        )
                    });
                }
            }
        }
        None => current.ok_or_else(|| {
            Stop::new(
                "IssuanceFailed",
                "waiting to retry the issuance".to_owned(),
                Category::Acme,
                Requeue::After(RECHECK),
            )
        })?,
    };
    let mut certificate = secret_certificate;
    if let Some((crt, key)) = tls_pair(id, &files)
        && let Ok(parsed) = certificate::parse(&crt, &key)
    {
        // Come back when it is due for renewal (a second from now at the earliest).
        let renewal = renewal_time(&parsed);
        record.renewal_time = Some(Time(renewal));
        let until = renewal.duration_since(now);
        recheck.get_or_insert(
            Duration::try_from(until)
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_secs(1)),
        );
        certificate = Some(parsed);
    }
    Ok(Certified {
        files,
        certificate,
        record: Some(record),
        recheck,
    })
}

/// The configuration handed to the edge, its digest for the status, and when to come back.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Site {
    pub wanted: Wanted,
    pub hash: String,
    pub requeue: Requeue,
}

pub(super) fn site(proxy: &Proxy, serve: &Serve, certified: &Certified) -> Site {
    let Valid {
        id,
        object,
        settings,
    } = &serve.valid;
    let config = site::render(
        id,
        object,
        settings,
        &serve.target,
        certified.certificate.is_some(),
    );
    let hash = hex::encode(&Sha256::digest(config.as_bytes())[..8]);
    Site {
        wanted: Wanted {
            id: id.clone(),
            object: object_ref(proxy),
            config,
            networks: serve.networks.clone(),
            files: [site::spec_files(id, settings), certified.files.clone()].concat(),
        },
        hash,
        requeue: certified.recheck.map_or(Requeue::OnChange, Requeue::After),
    }
}

pub(super) fn hosts(settings: &Settings) -> Vec<String> {
    settings
        .hosts
        .iter()
        .map(|h| h.as_str().to_owned())
        .collect()
}

/// When a certificate is renewed: two thirds into its lifetime.
pub(super) fn renewal_time(certificate: &Certificate) -> jiff::Timestamp {
    let life = certificate.not_after.as_second() - certificate.not_before.as_second();
    jiff::Timestamp::from_second(certificate.not_before.as_second() + life * 2 / 3)
        .unwrap_or(certificate.not_after)
}

/// The wait after `failures` failed issuances (see [`Category::Acme`]'s schedule).
pub(super) fn issuance_backoff(failures: u32) -> jiff::SignedDuration {
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
