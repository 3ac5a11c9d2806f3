//! The status (pure), from what was applied.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::apply::{Handed, Outcome};
use super::decide::{self, Stop};
use crate::api::proxy::{CertificateStatus, Proxy, ProxyStatus, TlsGrade};
use crate::edge::Served;
use crate::proxy::{certificate, site};
use crate::reconcile::{Applied, Category, Failure, Requeue};
use crate::status::{self, Observation};

pub(super) fn status(
    proxy: &Proxy,
    outcome: Outcome,
    now: jiff::Timestamp,
) -> Applied<ProxyStatus> {
    let generation = proxy.metadata.generation;
    let mut status = ProxyStatus {
        observed_generation: generation,
        ..proxy.status.clone().unwrap_or_default()
    };
    let Handed {
        serve,
        certified,
        site,
        answer,
        resolves,
    } = match outcome {
        Outcome::Stopped(stop) => return not_ready(status, stop, generation, now),
        Outcome::Withdrawn(stop) => {
            // Nothing of it is served: no upstream, networks, configuration or grade.
            let status = ProxyStatus {
                upstream: None,
                networks: Vec::new(),
                config_hash: None,
                tls_grade: None,
                ..status
            };
            return not_ready(status, stop, generation, now);
        }
        Outcome::Handed(handed) => *handed,
    };
    if let Some(record) = certified.record {
        status.certificate = Some(record);
    }
    match answer {
        Err(error) => {
            let stop = Stop::unavailable("EdgeUnavailable", error.to_string(), error.category());
            not_ready(status, stop, generation, now)
        }
        Ok(Served::Rejected(message)) => {
            let message = format!(
                "nginx rejected the configuration (the previous one keeps serving): {message}"
            );
            let stop = Stop::new(
                "NginxRejected",
                message,
                Category::Rejected,
                Requeue::OnChange,
            );
            not_ready(status, stop, generation, now)
        }
        Ok(Served::Serving) => {
            let settings = &serve.valid.settings;
            let hosts = decide::hosts(settings);
            let (certificate_status, tls_grade) = match (&certified.certificate, &proxy.spec.tls) {
                (Some(certificate), Some(tls)) => {
                    let hsts = tls
                        .hsts
                        .as_ref()
                        .and_then(|h| crate::api::common::parse_duration(&h.max_age))
                        .map(|d| d.as_secs());
                    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                    let setup = certificate::Setup {
                        policy: tls.policy,
                        hsts_seconds: hsts,
                        upstream_unverified: settings
                            .upstream_tls
                            .as_ref()
                            .is_some_and(|t| t.verify == site::Verify::Skip),
                    };
                    let (grade, reasons) = certificate::grade(certificate, &hosts, setup, now);
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
            let message = if settings.suspend {
                format!("{} answer 503 (suspended)", hosts.join(", "))
            } else {
                format!(
                    "serving {} from {}",
                    hosts.join(", "),
                    serve.upstream.address
                )
            };
            let reason = if settings.suspend {
                "Suspended"
            } else {
                "Serving"
            };
            let unresolved = (resolves == Some(false))
                .then(|| settings.url.as_deref().and_then(site::url_name))
                .flatten();
            let mut upstream = serve.upstream;
            upstream.problem = unresolved.map(|name| {
                format!("{name} does not resolve from the edge: its requests get 502 until it does")
            });
            let problem = upstream.problem.clone();
            let mut status = ProxyStatus {
                upstream: Some(upstream),
                networks: serve.networks,
                config_hash: Some(site.hash),
                certificate: certificate_status,
                tls_grade,
                ..status
            };
            if let Some(problem) = problem {
                // Served as written, so that it answers as soon as the name resolves; looked
                // at again on the upstream's schedule until then.
                let message = format!("{problem} (the configuration is served)");
                status::set(
                    &mut status.conditions,
                    Observation::ready(false, "NameNotResolved", &message),
                    generation,
                    now,
                );
                return Applied {
                    status,
                    requeue: Requeue::After(super::RECHECK),
                    failure: Some(Failure {
                        category: Category::Upstream,
                        message,
                    }),
                };
            }
            status::set(
                &mut status.conditions,
                Observation::ready(true, reason, message),
                generation,
                now,
            );
            Applied {
                status,
                requeue: site.requeue,
                failure: None,
            }
        }
    }
}

/// Ready=False with the stop's reason, and how to come back.
fn not_ready(
    mut status: ProxyStatus,
    stop: Stop,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Applied<ProxyStatus> {
    let Stop {
        reason,
        message,
        category,
        requeue,
        certificate,
    } = stop;
    if let Some(record) = certificate {
        status.certificate = Some(*record);
    }
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
