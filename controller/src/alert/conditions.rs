//! The conditions that read other objects' status, as pure functions of those objects and
//! the time: which subjects the condition holds for now, with the measured value, and when
//! the time alone next changes the answer.
//!
//! `containerCrash`, `errorRate` and `errorSpike` read the world outside the API (Docker's
//! event stream, the edge's access log) and have their own evaluators.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::timing::Observed;
use crate::api::alert::{BackupValidationFailed, CertificateExpiry};
use crate::api::backup::BackupValidationPolicy;
use crate::api::proxy::Proxy;

/// Issuance failures in a row, with no certificate served, that count as "will expire": the
/// Proxy has nothing valid to serve and retries are backing off.
pub const FAILED_ISSUANCES: u32 = 3;

/// What a condition found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Found {
    pub observed: Vec<Observed>,
    /// When the time alone next changes `observed` (a certificate entering `within`).
    pub changes_at: Option<Timestamp>,
}

fn name_of<K: kube::Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

fn selected(names: &[String], name: &str) -> bool {
    names.is_empty() || names.iter().any(|n| n == name)
}

/// `certificateExpiry`: every selected Proxy with TLS whose certificate expires within
/// `within` (or has expired), and every one whose issuance failed [`FAILED_ISSUANCES`] times
/// in a row with no certificate to serve. A Proxy whose TLS was turned off has nothing to
/// expire, whatever its status still shows.
pub fn certificate_expiry(
    spec: &CertificateExpiry,
    within: Duration,
    proxies: &[Proxy],
    now: Timestamp,
) -> Found {
    let within = SignedDuration::try_from(within).unwrap_or(SignedDuration::MAX);
    let mut found = Found::default();
    for proxy in proxies {
        let name = name_of(proxy);
        if !selected(&spec.proxies, &name) || proxy.spec.tls.is_none() {
            continue;
        }
        let Some(certificate) = proxy.status.as_ref().and_then(|s| s.certificate.as_ref()) else {
            continue;
        };
        let labels = BTreeMap::from([("proxy".to_owned(), name.clone())]);
        match &certificate.not_after {
            Some(not_after) => {
                let left = not_after.0.duration_since(now);
                if left <= within {
                    found.observed.push(Observed {
                        subject: name,
                        message: if left.is_negative() {
                            format!("expired {} ago (notAfter {})", human(-left), not_after.0)
                        } else {
                            format!("expires in {} (notAfter {})", human(left), not_after.0)
                        },
                        labels,
                    });
                } else if let Ok(enters) = not_after.0.checked_sub(within) {
                    found.changes_at = Some(found.changes_at.map_or(enters, |c| c.min(enters)));
                }
            }
            None if certificate.failed_issuance_attempts >= FAILED_ISSUANCES => {
                found.observed.push(Observed {
                    subject: name,
                    message: format!(
                        "no certificate: {} issuance attempts failed in a row",
                        certificate.failed_issuance_attempts
                    ),
                    labels,
                });
            }
            None => {}
        }
    }
    found
}

/// `backupValidationFailed`: every selected policy whose last `consecutiveFailures` finished
/// runs failed. A success resets the policy's count, which resolves the alert.
pub fn backup_validation_failed(
    spec: &BackupValidationFailed,
    policies: &[BackupValidationPolicy],
) -> Found {
    let mut found = Found::default();
    for policy in policies {
        let name = name_of(policy);
        if !selected(&spec.policies, &name) {
            continue;
        }
        let Some(status) = policy.status.as_ref() else {
            continue;
        };
        if status.consecutive_failures >= spec.consecutive_failures {
            let last = status
                .last_completed_run
                .as_ref()
                .map(|run| format!("; last run {}", run.name))
                .unwrap_or_default();
            found.observed.push(Observed {
                subject: name.clone(),
                message: format!(
                    "{} failed validation runs in a row{last}",
                    status.consecutive_failures
                ),
                labels: BTreeMap::from([("policy".to_owned(), name)]),
            });
        }
    }
    found
}

/// `3d 4h`, `5h 2m`, `12m`, `40s`: the two largest units, for messages.
fn human(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    let (days, hours, minutes) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::backup::{BackupValidationPolicyStatus, RunPhase, RunSummary};
    use crate::api::proxy::{CertificateStatus, ProxyStatus};

    fn now() -> Timestamp {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn proxy(name: &str, certificate: Option<CertificateStatus>) -> Proxy {
        let mut proxy: Proxy = serde_json::from_value(serde_json::json!({
            "apiVersion": "infrapilot.io/v1alpha1", "kind": "Proxy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"hosts": ["shop.example.com"], "upstream": {"name": "shop", "port": 80},
                "tls": {"secretName": "shop-tls"}},
        }))
        .unwrap();
        proxy.status = Some(ProxyStatus {
            certificate,
            ..ProxyStatus::default()
        });
        proxy
    }

    fn expiring(at: &str) -> Option<CertificateStatus> {
        Some(CertificateStatus {
            not_after: Some(Time(at.parse().unwrap())),
            ..CertificateStatus::default()
        })
    }

    #[test]
    fn certificates_within_the_window_or_expired_fire_and_the_next_entry_is_a_wake_up() {
        let spec = CertificateExpiry {
            within: "7d".into(),
            proxies: vec![],
        };
        let proxies = [
            proxy("soon", expiring("2026-12-07T12:00:00Z")),
            proxy("gone", expiring("2026-12-01T12:00:00Z")),
            proxy("later", expiring("2026-12-20T12:00:00Z")),
            proxy("plain", None),
        ];
        let found = certificate_expiry(&spec, Duration::from_secs(7 * 86_400), &proxies, now());
        let subjects: Vec<_> = found.observed.iter().map(|o| o.subject.as_str()).collect();
        assert_eq!(subjects, ["soon", "gone"]);
        // TLS turned off: what the status still shows expires nothing.
        let mut plain = proxy("was-tls", expiring("2026-12-05T12:00:00Z"));
        plain.spec.tls = None;
        let off = certificate_expiry(&spec, Duration::from_secs(7 * 86_400), &[plain], now());
        assert!(off.observed.is_empty());
        assert!(found.observed[0].message.starts_with("expires in 3d 0h"));
        assert!(found.observed[1].message.starts_with("expired 3d 0h ago"));
        assert_eq!(found.observed[0].labels["proxy"], "soon");
        assert_eq!(
            found.changes_at,
            Some("2026-12-13T12:00:00Z".parse().unwrap()),
            "`later` enters the 7-day window on the 13th"
        );
    }

    #[test]
    fn issuance_failing_with_no_certificate_fires_and_names_select_proxies() {
        let failing = Some(CertificateStatus {
            failed_issuance_attempts: FAILED_ISSUANCES,
            ..CertificateStatus::default()
        });
        let starting = Some(CertificateStatus {
            failed_issuance_attempts: 1,
            ..CertificateStatus::default()
        });
        let proxies = [
            proxy("a", failing.clone()),
            proxy("b", failing),
            proxy("c", starting),
        ];
        let spec = CertificateExpiry {
            within: "7d".into(),
            proxies: vec!["a".into(), "c".into()],
        };
        let found = certificate_expiry(&spec, Duration::from_secs(60), &proxies, now());
        assert_eq!(found.observed.len(), 1);
        assert_eq!(found.observed[0].subject, "a");
        assert!(
            found.observed[0]
                .message
                .contains("3 issuance attempts failed")
        );
    }

    fn policy(name: &str, failures: u32) -> BackupValidationPolicy {
        let mut policy: BackupValidationPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"schedule": "30 3 * * *", "source": {"path": "/backups/app.dump"}},
        }))
        .unwrap();
        policy.status = Some(BackupValidationPolicyStatus {
            consecutive_failures: failures,
            last_completed_run: Some(RunSummary {
                name: format!("{name}-1"),
                phase: if failures > 0 {
                    RunPhase::Failed
                } else {
                    RunPhase::Succeeded
                },
                start_time: None,
                completion_time: None,
            }),
            ..BackupValidationPolicyStatus::default()
        });
        policy
    }

    #[test]
    fn a_policy_fires_at_its_consecutive_failures_and_not_before() {
        let spec = BackupValidationFailed {
            policies: vec![],
            consecutive_failures: 2,
        };
        let found = backup_validation_failed(
            &spec,
            &[policy("once", 1), policy("twice", 2), policy("ok", 0)],
        );
        assert_eq!(found.observed.len(), 1);
        assert_eq!(found.observed[0].subject, "twice");
        assert_eq!(
            found.observed[0].message,
            "2 failed validation runs in a row; last run twice-1"
        );
        assert_eq!(found.observed[0].labels["policy"], "twice");
        assert_eq!(found.changes_at, None);
    }
}
