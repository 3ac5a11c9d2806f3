//! The decide step without Docker (every ACME branch, TLS from a Secret, upstream missing,
//! Proxies claiming one host), then the whole pipeline against the fakes of `tests_support`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::decide::*;
use super::observe::Observed;
use super::{Proxies, RECHECK};
use crate::api::proxy::{self as api, CertificateStatus, Proxy, ProxySpec, ProxyStatus};
use crate::docker::{Attachment, ContainerFacts, DockerError, NetworkFacts};
use crate::edge::EdgeError;
use crate::proxy::upstream::{Reachable, Refusal};
use crate::proxy::{acme, certificate, site};
use crate::reconcile::tests_support::{
    MemoryDocker, MemoryEdge, MemoryIssuer, MemoryObjects, Recorder, context, fixed_now,
};
use crate::reconcile::{Category, Reconciler, Requeue};
use crate::secrets::{SecretError, SecretMap};

const HOST: &str = "a.example.com";

/// Midnight, `days` after today: certificates carry whole days.
fn day(days: i64) -> jiff::Timestamp {
    let today = fixed_now().as_second() - fixed_now().as_second() % 86_400;
    jiff::Timestamp::from_second(today + days * 86_400).unwrap()
}

/// From now until `at`.
fn until(at: jiff::Timestamp) -> Duration {
    Duration::try_from(at.duration_since(fixed_now())).unwrap()
}

/// A certificate for `names` valid from `from` for `days` days: (chain PEM, key PEM).
fn pem(names: &[&str], from: jiff::Timestamp, days: i64) -> (Vec<u8>, Vec<u8>) {
    let date = |t: jiff::Timestamp| {
        let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
        rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8)
    };
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_before = date(from);
    params.not_after = date(from + jiff::SignedDuration::from_hours(24 * days));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

fn proxy(name: &str, uid: &str, tls: Option<api::Tls>) -> Proxy {
    let spec = ProxySpec {
        hosts: vec![HOST.to_owned()],
        upstream: api::Upstream {
            name: Some("web".to_owned()),
            port: Some(8080),
            ..Default::default()
        },
        tls,
        rate_limit: None,
        access: None,
        websockets: false,
        client_max_body_size: None,
        timeouts: None,
        headers: None,
        suspend: false,
    };
    let mut proxy = Proxy::new(name, spec);
    proxy.metadata.namespace = Some("default".to_owned());
    proxy.metadata.uid = Some(uid.to_owned());
    proxy.metadata.generation = Some(1);
    proxy
}

fn acme_tls() -> Option<api::Tls> {
    Some(api::Tls {
        acme: Some(api::Acme {
            email: "ops@example.com".to_owned(),
            ..Default::default()
        }),
        redirect_http: true,
        ..Default::default()
    })
}

fn secret_tls() -> Option<api::Tls> {
    Some(api::Tls {
        secret_name: Some("site-tls".to_owned()),
        redirect_http: true,
        ..Default::default()
    })
}

fn with_record(mut proxy: Proxy, record: CertificateStatus) -> Proxy {
    proxy.status = Some(ProxyStatus {
        certificate: Some(record),
        ..Default::default()
    });
    proxy
}

fn reachable() -> Result<Result<Vec<Reachable>, Refusal>, DockerError> {
    Ok(Ok(vec![Reachable {
        container: "web".to_owned(),
        network: "app".to_owned(),
        address: "10.0.0.5:8080".parse().unwrap(),
    }]))
}

/// The edge's files for the Proxy `proxy` holding `pair`.
fn served(proxy: &Proxy, (crt, key): (Vec<u8>, Vec<u8>)) -> Vec<(String, Vec<u8>)> {
    let (crt_path, key_path) = site::tls_paths(&validate(proxy).unwrap().id);
    vec![(crt_path, crt), (key_path, key)]
}

fn plan(proxy: &Proxy, observed: Observed) -> Plan {
    decide(proxy, validate(proxy).unwrap(), observed, fixed_now())
}

fn serving(plan: Plan) -> Serve {
    match plan {
        Plan::Serve(serve) => *serve,
        other => panic!("not served: {other:?}"),
    }
}

/// The stop of a plan that leaves the edge as it is.
fn stopped(plan: Plan) -> Stop {
    match plan {
        Plan::Stop(stop) => stop,
        other => panic!("not stopped: {other:?}"),
    }
}

fn acme_observed(files: Vec<(String, Vec<u8>)>) -> Observed {
    Observed {
        upstream: Some(reachable()),
        served: Some(Ok(files)),
        ..Default::default()
    }
}

fn issue(serve: &Serve) -> &Issue {
    serve
        .acme
        .as_ref()
        .and_then(|a| a.issue.as_ref())
        .expect("an issuance")
}

fn issued(pair: (Vec<u8>, Vec<u8>)) -> acme::Issued {
    acme::Issued {
        chain_pem: String::from_utf8(pair.0).unwrap(),
        key_pem: String::from_utf8(pair.1).unwrap(),
    }
}

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

#[test]
fn without_tls_the_containers_are_served_over_http_on_their_network() {
    let p = proxy("web", "0a1b", None);
    let observed = Observed {
        upstream: Some(reachable()),
        ..Default::default()
    };
    let serve = serving(plan(&p, observed));
    assert_eq!(serve.networks, ["app"]);
    assert_eq!(serve.upstream.address, "10.0.0.5:8080");
    assert_eq!(serve.upstream.container.as_deref(), Some("web"));
    assert_eq!(serve.acme, None);
    let certified = certify(&serve, None, fixed_now()).unwrap();
    assert_eq!((certified.files.len(), &certified.certificate), (0, &None));
    let site = site(&p, &serve, &certified);
    assert!(site.wanted.config.contains("server 10.0.0.5:8080;"));
    assert!(!site.wanted.config.contains("listen 443"));
    assert_eq!(site.wanted.networks, ["app"]);
    assert_eq!(site.requeue, Requeue::OnChange);
}

#[test]
fn without_a_certificate_acme_issues_now_with_the_challenge_location_served_first() {
    let p = proxy("web", "0a1b", acme_tls());
    let serve = serving(plan(&p, acme_observed(Vec::new())));
    let issue = issue(&serve);
    assert_eq!(issue.request.directory, acme::LETS_ENCRYPT);
    assert_eq!(issue.request.hosts, [HOST]);
    assert_eq!(issue.request.email, "ops@example.com");
    assert!(
        issue
            .prepare
            .config
            .contains("/.well-known/acme-challenge/")
    );
    assert!(!issue.prepare.config.contains("listen 443"));
    assert!(issue.prepare.files.is_empty());

    let pair = pem(&[HOST], day(0), 90);
    let certified = certify(&serve, Some(Ok(issued(pair.clone()))), fixed_now()).unwrap();
    assert_eq!(certified.files, served(&p, pair));
    let record = certified.record.clone().unwrap();
    assert_eq!(record.failed_issuance_attempts, 0);
    assert_eq!(record.renewal_time, Some(Time(day(60))));
    assert_eq!(certified.recheck, Some(until(day(60))));
    assert!(
        site(&p, &serve, &certified)
            .wanted
            .config
            .contains("listen 443")
    );
}

#[test]
fn a_current_certificate_keeps_serving_until_two_thirds_of_its_life() {
    let p = proxy("web", "0a1b", acme_tls());
    let pair = pem(&[HOST], day(-30), 90);
    let serve = serving(plan(&p, acme_observed(served(&p, pair.clone()))));
    assert_eq!(serve.acme.as_ref().unwrap().issue, None);
    let certified = certify(&serve, None, fixed_now()).unwrap();
    assert_eq!(certified.files, served(&p, pair));
    assert_eq!(certified.record.unwrap().renewal_time, Some(Time(day(30))));
    assert_eq!(certified.recheck, Some(until(day(30))));
}

#[test]
fn a_certificate_due_for_renewal_or_missing_a_host_is_renewed_while_it_serves() {
    let p = proxy("web", "0a1b", acme_tls());
    for pair in [
        pem(&[HOST], day(-70), 90),
        pem(&["other.example.com"], day(-1), 90),
    ] {
        let files = served(&p, pair);
        let serve = serving(plan(&p, acme_observed(files.clone())));
        let issue = issue(&serve);
        // The current certificate keeps serving HTTPS while the challenge is answered.
        assert_eq!(issue.prepare.files, files);
        assert!(issue.prepare.config.contains("listen 443"));
    }
}

#[test]
fn after_failed_issuances_acme_waits_out_the_backoff_of_failed_issuance_attempts() {
    let record = |seconds_ago: i64| CertificateStatus {
        failed_issuance_attempts: 3,
        last_failure_time: Some(Time(
            fixed_now() - jiff::SignedDuration::from_secs(seconds_ago),
        )),
        ..Default::default()
    };
    // Three failures wait 120 s.
    let waiting = with_record(proxy("web", "0a1b", acme_tls()), record(60));
    let stop = stopped(plan(&waiting, acme_observed(Vec::new())));
    assert_eq!(
        (stop.reason, stop.category, stop.requeue),
        ("IssuanceFailed", Category::Acme, Requeue::After(RECHECK))
    );
    // A certificate due for renewal keeps serving meanwhile.
    let due = served(&waiting, pem(&[HOST], day(-70), 90));
    let serve = serving(plan(&waiting, acme_observed(due)));
    assert_eq!(serve.acme.as_ref().unwrap().issue, None);

    let over = with_record(proxy("web", "0a1b", acme_tls()), record(120));
    issue(&serving(plan(&over, acme_observed(Vec::new()))));
}

#[test]
fn a_failed_issuance_without_a_certificate_is_counted_and_retried_after_its_backoff() {
    let p = with_record(
        proxy("web", "0a1b", acme_tls()),
        CertificateStatus {
            failed_issuance_attempts: 3,
            last_failure_time: Some(Time(day(-1))),
            ..Default::default()
        },
    );
    let serve = serving(plan(&p, acme_observed(Vec::new())));
    let stop = certify(&serve, Some(Err("rate limited".to_owned())), fixed_now()).unwrap_err();
    assert_eq!(stop.reason, "IssuanceFailed");
    assert!(
        stop.message.contains("(attempt 4): rate limited"),
        "{}",
        stop.message
    );
    assert_eq!(stop.requeue, Requeue::After(Duration::from_secs(240)));
    let record = stop.certificate.unwrap();
    assert_eq!(record.failed_issuance_attempts, 4);
    assert_eq!(record.last_failure_time, Some(Time(fixed_now())));
}

#[test]
fn a_failed_renewal_keeps_the_current_certificate_and_retries_after_the_backoff() {
    let p = proxy("web", "0a1b", acme_tls());
    let files = served(&p, pem(&[HOST], day(-70), 90));
    let serve = serving(plan(&p, acme_observed(files.clone())));
    let certified = certify(&serve, Some(Err("timeout".to_owned())), fixed_now()).unwrap();
    assert_eq!(certified.files, files);
    assert_eq!(certified.recheck, Some(Duration::from_secs(30)));
    assert_eq!(certified.record.unwrap().failed_issuance_attempts, 1);
}

#[test]
fn a_certificate_from_a_secret_is_served_over_https() {
    let p = proxy("web", "0a1b", secret_tls());
    let pair = pem(&[HOST], day(-1), 90);
    let observed = Observed {
        secret: Some(Ok(pair.clone())),
        upstream: Some(reachable()),
        ..Default::default()
    };
    let serve = serving(plan(&p, observed));
    assert_eq!(serve.acme, None);
    let certified = certify(&serve, None, fixed_now()).unwrap();
    assert_eq!(certified.files, served(&p, pair));
    assert_eq!(certified.certificate.as_ref().unwrap().names, [HOST]);
    assert_eq!(certified.record, None);
    let site = site(&p, &serve, &certified);
    assert!(site.wanted.config.contains("listen 443"));
    assert_eq!(site.requeue, Requeue::OnChange);
}

#[test]
fn a_missing_or_unreadable_secret_stops_the_proxy_with_the_reason() {
    let p = proxy("web", "0a1b", secret_tls());
    let missing = SecretError::not_found("default", "site-tls");
    let stop = stopped(plan(
        &p,
        Observed {
            secret: Some(Err(missing.clone())),
            ..Default::default()
        },
    ));
    assert_eq!(
        (stop.reason, stop.category, stop.requeue),
        (
            "SecretUnavailable",
            missing.category(),
            Requeue::After(RECHECK)
        )
    );
    let stop = stopped(plan(
        &p,
        Observed {
            secret: Some(Ok((b"not a certificate".to_vec(), b"nor a key".to_vec()))),
            ..Default::default()
        },
    ));
    assert_eq!(stop.reason, "InvalidCertificate");
    assert!(
        stop.message.starts_with("Secret default/site-tls: "),
        "{}",
        stop.message
    );
}

#[test]
fn a_missing_upstream_waits_for_docker_to_report_a_change() {
    let p = proxy("web", "0a1b", None);
    let stop = stopped(plan(
        &p,
        Observed {
            upstream: Some(Ok(Err(Refusal::NotFound("name web".to_owned())))),
            ..Default::default()
        },
    ));
    assert_eq!(
        (stop.reason, stop.category, stop.requeue),
        ("UpstreamNotFound", Category::Upstream, Requeue::OnChange)
    );
    let stop = stopped(plan(
        &p,
        Observed {
            upstream: Some(Err(DockerError::Unreachable("refused".to_owned()))),
            ..Default::default()
        },
    ));
    assert_eq!(
        (stop.reason, stop.requeue),
        ("DockerUnavailable", Requeue::After(RECHECK))
    );
}

#[test]
fn an_edge_that_does_not_answer_stops_acme_before_any_issuance() {
    let p = proxy("web", "0a1b", acme_tls());
    let observed = Observed {
        upstream: Some(reachable()),
        served: Some(Err(EdgeError::Stopped)),
        ..Default::default()
    };
    let stop = stopped(plan(&p, observed));
    assert_eq!(
        (stop.reason, stop.requeue),
        ("EdgeUnavailable", Requeue::After(RECHECK))
    );
}

/// `name` in `namespace`, created `second`s after the epoch of [`fixed_now`], naming `hosts`.
fn claimant(namespace: &str, name: &str, second: i64, hosts: &[&str]) -> Proxy {
    let mut p = proxy(name, &format!("uid-{namespace}-{name}"), None);
    p.metadata.namespace = Some(namespace.to_owned());
    p.metadata.creation_timestamp = Some(Time(
        jiff::Timestamp::from_second(1_700_000_000 + second).unwrap(),
    ));
    p.spec.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
    p
}

/// The plan of `p` with `others` as the other Proxies the port lists.
fn plan_among(p: &Proxy, others: &[Proxy]) -> Plan {
    let valid = validate(p).unwrap();
    let observed = Observed {
        claims: Ok(super::claims::claims(p, &valid.settings.hosts, others)),
        upstream: Some(reachable()),
        ..Default::default()
    };
    decide(p, valid, observed, fixed_now())
}

/// The status of a Proxy whose last reconcile ended with Ready `status` and `reason`.
fn after(mut p: Proxy, status: bool, reason: &str) -> Proxy {
    let mut last = ProxyStatus {
        config_hash: Some("0123abcd".to_owned()),
        ..Default::default()
    };
    crate::status::set(
        &mut last.conditions,
        crate::status::Observation::ready(status, reason, "before"),
        Some(1),
        fixed_now(),
    );
    p.status = Some(last);
    p
}

#[test]
fn the_host_index_follows_each_proxy_as_reconciled_and_a_relist_replaces_it() {
    use super::claims::Index;
    let holder = claimant("team-a", "shop", 10, &[HOST]);
    let newcomer = claimant("team-b", "shop", 20, &[HOST]);
    let hosts = validate(&newcomer).unwrap().settings.hosts;
    let start = std::time::Instant::now();
    let mut index = Index::default();
    assert!(index.stale(start));
    index.replace(std::slice::from_ref(&holder), start);
    assert!(!index.stale(start + Index::RELIST / 2));
    assert!(index.stale(start + Index::RELIST));
    let held = index.claims(&newcomer, &hosts);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].rank.object(), "team-a/shop");

    // The holder moves to another host: its reconcile notes it, and the host is free.
    let mut moved = holder.clone();
    moved.spec.hosts = vec!["elsewhere.example.com".to_owned()];
    index.note(&moved);
    assert!(index.claims(&newcomer, &hosts).is_empty());
    // Back, then deleting: still listed, as a claim that holds nothing; then gone.
    index.note(&holder);
    let mut deleting = holder.clone();
    deleting.metadata.deletion_timestamp = Some(Time(fixed_now()));
    index.note(&deleting);
    assert!(index.claims(&newcomer, &hosts)[0].deleting);
    index.forget(&("team-a".to_owned(), "shop".to_owned()));
    assert!(index.claims(&newcomer, &hosts).is_empty());

    // A change the index missed is found by the next read of every Proxy.
    index.replace(&[holder.clone(), newcomer.clone()], start + Index::RELIST);
    assert_eq!(index.claims(&newcomer, &hosts).len(), 1);
    assert_eq!(
        index.claims(&holder, &hosts)[0].rank.object(),
        "team-b/shop"
    );
}

#[test]
fn of_two_proxies_claiming_one_host_the_older_is_served_and_the_newer_is_not() {
    let older = claimant("team-b", "shop", 10, &[HOST]);
    let newer = claimant("team-a", "shop", 20, &[HOST, "b.example.com"]);
    serving(plan_among(&older, &[older.clone(), newer.clone()]));
    let stop = stopped(plan_among(&newer, &[older.clone(), newer.clone()]));
    assert_eq!(
        (stop.reason, stop.category, stop.requeue),
        (
            HOST_CONFLICT,
            Category::Config,
            Requeue::After(Duration::from_secs(15))
        )
    );
    assert!(
        stop.message
            .contains(&format!("{HOST} by Proxy team-b/shop")),
        "{}",
        stop.message
    );
    assert!(!stop.message.contains("b.example.com"), "{}", stop.message);
}

#[test]
fn claims_created_at_the_same_time_are_ordered_by_namespace_then_name() {
    let a_z = claimant("a", "z", 10, &[HOST]);
    let b_a = claimant("b", "a", 10, &[HOST]);
    let b_b = claimant("b", "b", 10, &[HOST]);
    let all = [a_z.clone(), b_a.clone(), b_b.clone()];
    serving(plan_among(&a_z, &all));
    assert!(
        stopped(plan_among(&b_a, &all))
            .message
            .contains("Proxy a/z")
    );
    // Without a.z, b/a comes before b/b.
    serving(plan_among(&b_a, &[b_a.clone(), b_b.clone()]));
    assert!(
        stopped(plan_among(&b_b, &[b_a.clone(), b_b.clone()]))
            .message
            .contains("Proxy b/a")
    );
}

#[test]
fn a_proxy_being_deleted_holds_no_claim() {
    let mut going = claimant("team-a", "old", 10, &[HOST]);
    going.metadata.deletion_timestamp = Some(Time(fixed_now()));
    let newer = claimant("team-b", "new", 20, &[HOST]);
    serving(plan_among(&newer, &[going, newer.clone()]));
}

#[test]
fn a_wildcard_and_an_exact_host_are_no_conflict_but_two_equal_wildcards_are() {
    let wildcard = claimant("team-a", "all", 10, &["*.example.com"]);
    let exact = claimant("team-b", "one", 20, &[HOST]);
    let again = claimant("team-c", "all", 30, &["*.example.com"]);
    let all = [wildcard.clone(), exact.clone(), again.clone()];
    serving(plan_among(&exact, &all));
    serving(plan_among(&wildcard, &all));
    assert!(
        stopped(plan_among(&again, &all))
            .message
            .contains("*.example.com by Proxy team-a/all")
    );
}

#[test]
fn a_loser_that_was_served_is_withdrawn_from_the_edge_once() {
    let holder = claimant("team-a", "shop", 10, &[HOST]);
    let loser = claimant("team-b", "shop", 20, &[HOST]);
    let id = validate(&loser).unwrap().id;
    let all = [holder.clone(), loser.clone()];
    // Served before (or stopped with its site possibly in the edge): withdrawn.
    for reason in ["Serving", "IssuanceFailed", "EdgeUnavailable"] {
        let before = after(loser.clone(), reason == "Serving", reason);
        match plan_among(&before, &all) {
            Plan::Withdraw {
                id: withdrawn,
                stop,
            } => {
                assert_eq!(
                    (withdrawn.as_str(), stop.reason),
                    (id.as_str(), HOST_CONFLICT)
                );
            }
            other => panic!("{reason}: not withdrawn: {other:?}"),
        }
    }
    // Withdrawn already, or never reconciled: the edge is not asked.
    let withdrawn = after(loser.clone(), false, HOST_CONFLICT);
    assert_eq!(stopped(plan_among(&withdrawn, &all)).reason, HOST_CONFLICT);
    assert_eq!(stopped(plan_among(&loser, &all)).reason, HOST_CONFLICT);
    // The holder, served, is left as it is.
    let served = after(holder.clone(), true, "Serving");
    serving(plan_among(&served, &all));
}

#[test]
fn other_proxies_that_cannot_be_listed_stop_the_proxy_until_they_can() {
    let p = proxy("web", "0a1b", None);
    let observed = Observed {
        claims: Err(crate::reconcile::Failure {
            category: Category::Kubernetes,
            message: "the Kubernetes API: timed out".to_owned(),
        }),
        upstream: Some(reachable()),
        ..Default::default()
    };
    let stop = stopped(plan(&p, observed));
    assert_eq!(
        (stop.reason, stop.category, stop.requeue),
        (
            "ProxiesUnavailable",
            Category::Kubernetes,
            Requeue::After(RECHECK)
        )
    );
}

#[test]
fn an_invalid_spec_stops_before_anything_is_observed() {
    let mut p = proxy("web", "0a1b", None);
    p.spec.hosts = vec!["Not_A_Host".to_owned()];
    let stop = validate(&p).unwrap_err();
    assert_eq!(
        (stop.reason, stop.category, stop.requeue),
        ("InvalidSpec", Category::Config, Requeue::OnChange)
    );
}

// The whole pipeline against the fakes.

struct World {
    /// The Proxies the port lists.
    objects: Arc<MemoryObjects>,
    docker: Arc<MemoryDocker>,
    edge: Arc<MemoryEdge>,
    issuer: Arc<MemoryIssuer>,
    recorder: Arc<Recorder>,
    proxies: Proxies,
}

fn world() -> World {
    let web = ContainerFacts {
        id: "c-web".to_owned(),
        name: "web".to_owned(),
        running: true,
        network_mode: "app".to_owned(),
        labels: BTreeMap::new(),
        networks: vec![Attachment {
            network: "app".to_owned(),
            network_id: "n-app".to_owned(),
            ip: Some("10.0.0.5".parse().unwrap()),
        }],
    };
    let app = NetworkFacts {
        id: "n-app".to_owned(),
        name: "app".to_owned(),
        driver: "bridge".to_owned(),
        scope: "local".to_owned(),
    };
    let docker = Arc::new(MemoryDocker::with(vec![web], vec![app]));
    let edge = Arc::new(MemoryEdge::default());
    let issuer = Arc::new(MemoryIssuer::default());
    let objects = Arc::new(MemoryObjects::default());
    World {
        proxies: Proxies::new(objects.port(), docker.clone(), edge.clone(), issuer.clone()),
        objects,
        docker,
        edge,
        issuer,
        recorder: Arc::new(Recorder::default()),
    }
}

impl World {
    async fn reconcile(&self, proxy: &Proxy) -> crate::reconcile::Applied<ProxyStatus> {
        let ctx = context(&self.recorder, SecretMap::default());
        self.proxies.reconcile(proxy, &ctx).await
    }
}

fn ready(status: &ProxyStatus) -> (String, String) {
    let c = status.conditions.get(crate::status::READY).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn an_acme_certificate_is_issued_through_the_edge_audited_and_served() {
    let w = world();
    let pair = pem(&[HOST], day(0), 90);
    w.issuer
        .answers
        .lock()
        .unwrap()
        .push(Ok(issued(pair.clone())));
    let p = proxy("web", "0a1b", acme_tls());
    let applied = w.reconcile(&p).await;
    assert_eq!(ready(&applied.status), ("True".into(), "Serving".into()));
    assert_eq!(applied.failure, None);
    assert_eq!(applied.requeue, Requeue::After(until(day(60))));
    let record = applied.status.certificate.clone().unwrap();
    assert_eq!(record.not_after, Some(Time(day(90))));
    assert_eq!(record.renewal_time, Some(Time(day(60))));
    assert!(applied.status.tls_grade.is_some());
    assert_eq!(applied.status.networks, ["app"]);

    // First the challenge location, then the certificate.
    let applies = w.edge.applied.lock().unwrap().clone();
    assert_eq!(applies.len(), 2);
    assert!(applies[0].files.is_empty());
    assert_eq!(applies[1].files, served(&p, pair));
    assert!(w.edge.challenges.lock().unwrap().contains_key("token"));
    assert_eq!(w.issuer.requests.lock().unwrap()[0].hosts, [HOST]);
    let audit = w.recorder.audit.lock().unwrap().clone();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "certificate.issue");
    assert_eq!(audit[0].outcome, crate::audit::Outcome::Success);

    // Served and not due: nothing is issued again.
    let again = Proxy {
        status: Some(applied.status.clone()),
        ..p
    };
    w.reconcile(&again).await;
    assert_eq!(w.issuer.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_issuance_is_audited_and_counted_in_the_status() {
    let w = world();
    let p = proxy("web", "0a1b", acme_tls());
    let applied = w.reconcile(&p).await;
    assert_eq!(
        ready(&applied.status),
        ("False".into(), "IssuanceFailed".into())
    );
    assert_eq!(applied.requeue, Requeue::After(Duration::from_secs(30)));
    assert_eq!(
        applied.status.certificate.unwrap().failed_issuance_attempts,
        1
    );
    assert_eq!(
        w.edge.applied.lock().unwrap().len(),
        1,
        "the challenge only"
    );
    let audit = w.recorder.audit.lock().unwrap();
    assert_eq!(audit[0].outcome, crate::audit::Outcome::Failure);
    assert_eq!(audit[0].detail, "no answer queued");
}

#[tokio::test]
async fn a_proxy_whose_upstream_is_missing_never_asks_the_edge() {
    let w = world();
    let mut p = proxy("web", "0a1b", acme_tls());
    p.spec.upstream.name = Some("gone".to_owned());
    let applied = w.reconcile(&p).await;
    assert_eq!(
        ready(&applied.status),
        ("False".into(), "UpstreamNotFound".into())
    );
    assert_eq!(*w.edge.files_asked.lock().unwrap(), 0);
    assert!(w.edge.applied.lock().unwrap().is_empty());
    assert!(w.issuer.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_proxy_whose_secret_is_missing_asks_docker_nothing() {
    let w = world();
    let p = proxy("web", "0a1b", secret_tls());
    let applied = w.reconcile(&p).await;
    assert_eq!(
        ready(&applied.status),
        ("False".into(), "SecretUnavailable".into())
    );
    assert_eq!(w.docker.state.lock().unwrap().reads, 0);

    // The same Proxy with its Secret is served over HTTPS, from the container on its network.
    let (crt, key) = pem(&[HOST], day(-1), 90);
    let secrets = SecretMap::default();
    secrets.insert(
        "default",
        "site-tls",
        BTreeMap::from([("tls.crt".to_owned(), crt), ("tls.key".to_owned(), key)]),
    );
    let applied = w
        .proxies
        .reconcile(&p, &context(&w.recorder, secrets))
        .await;
    assert_eq!(ready(&applied.status), ("True".into(), "Serving".into()));
    assert_eq!(applied.status.upstream.unwrap().address, "10.0.0.5:8080");
    assert!(w.docker.state.lock().unwrap().reads > 0);
}

#[tokio::test]
async fn a_docker_that_does_not_answer_is_asked_again_soon() {
    let w = world();
    w.docker.state.lock().unwrap().unreachable = true;
    let p = proxy("web", "0a1b", None);
    let applied = w.reconcile(&p).await;
    assert_eq!(
        ready(&applied.status),
        ("False".into(), "DockerUnavailable".into())
    );
    assert_eq!(applied.requeue, Requeue::After(RECHECK));
    assert!(w.edge.applied.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_served_proxy_that_loses_its_host_is_withdrawn_and_takes_over_when_the_holder_goes() {
    let w = world();
    let mut loser = claimant("team-b", "shop", 20, &[HOST]);
    w.objects.put(&loser);
    let applied = w.reconcile(&loser).await;
    assert_eq!(ready(&applied.status), ("True".into(), "Serving".into()));
    loser.status = Some(applied.status);

    // An older Proxy names the host (it was edited to, so it is reconciled): it is served, and
    // sends the loser to be reconciled again, which then leaves the edge.
    let holder = claimant("team-a", "shop", 10, &[HOST]);
    w.objects.put(&holder);
    w.objects.put(&loser);
    let mut again = w
        .proxies
        .triggers()
        .expect("the Proxy reconciler has triggers");
    let served = w.reconcile(&holder).await;
    assert_eq!(ready(&served.status), ("True".into(), "Serving".into()));
    assert_eq!(
        again.try_recv().ok(),
        Some(("team-b".to_owned(), "shop".to_owned()))
    );
    w.edge.removed.lock().unwrap().clear();
    let reads = w.docker.state.lock().unwrap().reads;
    let applied = w.reconcile(&loser).await;
    assert_eq!(
        ready(&applied.status),
        ("False".into(), HOST_CONFLICT.into())
    );
    let id = validate(&loser).unwrap().id;
    assert_eq!(*w.edge.removed.lock().unwrap(), std::slice::from_ref(&id));
    assert_eq!(applied.status.config_hash, None);
    assert_eq!(applied.status.upstream, None);
    assert!(applied.status.networks.is_empty());
    assert_eq!(applied.requeue, Requeue::After(Duration::from_secs(15)));
    assert_eq!(applied.failure.map(|f| f.category), Some(Category::Config));
    // Not served, it asks Docker nothing.
    assert_eq!(w.docker.state.lock().unwrap().reads, reads);
    let message = &applied
        .status
        .conditions
        .get(crate::status::READY)
        .unwrap()
        .message;
    assert!(
        message.contains("a.example.com by Proxy team-a/shop"),
        "{message}"
    );

    // Rechecked while the holder stays: nothing more is asked of the edge.
    loser.status = Some(applied.status);
    let applies = w.edge.applied.lock().unwrap().len();
    w.reconcile(&loser).await;
    assert_eq!(w.edge.removed.lock().unwrap().len(), 1);
    assert_eq!(w.edge.applied.lock().unwrap().len(), applies);

    // The holder goes (its cleanup runs, then it leaves the store): the loser is served.
    let ctx = context(&w.recorder, SecretMap::default());
    w.proxies.cleanup(&holder, &ctx).await.unwrap();
    crate::runtime::objects::ObjectStore::delete(
        w.objects.as_ref(),
        crate::api::Kind::Proxy,
        "team-a",
        "shop",
    )
    .await
    .unwrap();
    let applied = w.reconcile(&loser).await;
    assert_eq!(ready(&applied.status), ("True".into(), "Serving".into()));
    assert_eq!(w.edge.applied.lock().unwrap().last().unwrap().id, id);
}

#[tokio::test]
async fn a_proxy_the_edge_left_out_is_reconciled_again_at_once() {
    let w = world();
    let (left_out, receiver) = tokio::sync::mpsc::unbounded_channel();
    *w.edge.left_out.lock().unwrap() = Some(receiver);
    let mut again = w.proxies.triggers().unwrap();
    let object = crate::audit::ObjectRef {
        kind: "Proxy".to_owned(),
        namespace: Some("team-a".to_owned()),
        name: "shop".to_owned(),
        uid: "u-shop".to_owned(),
        generation: 3,
    };
    left_out.send(object).unwrap();
    let key = tokio::time::timeout(Duration::from_secs(5), again.recv())
        .await
        .expect("sent back without waiting for a recheck");
    assert_eq!(key, Some(("team-a".to_owned(), "shop".to_owned())));
}

#[tokio::test]
async fn a_loser_is_reconciled_again_once_its_holder_is_reconciled_or_cleaned_up() {
    let w = world();
    let mut again = w.proxies.triggers().unwrap();
    // Times the loser was sent back (the channel also carries Docker's followed Proxies).
    let mut sent_back = move || {
        let mut times = 0;
        while let Ok(key) = again.try_recv() {
            times += usize::from(key == ("team-b".to_owned(), "shop".to_owned()));
        }
        times
    };
    let holder = claimant("team-a", "shop", 10, &[HOST]);
    let loser = claimant("team-b", "shop", 20, &[HOST]);
    let bystander = claimant("team-c", "blog", 5, &["blog.example.com"]);
    for p in [&holder, &loser, &bystander] {
        w.objects.put(p);
    }
    let applied = w.reconcile(&loser).await;
    assert_eq!(
        ready(&applied.status),
        ("False".into(), HOST_CONFLICT.into())
    );
    // Another Proxy's reconcile concerns no loser.
    w.reconcile(&bystander).await;
    assert_eq!(sent_back(), 0);
    // The holder's reconcile (it may have dropped the host) brings the loser back, once.
    w.reconcile(&holder).await;
    assert_eq!(sent_back(), 1);
    w.reconcile(&holder).await;
    assert_eq!(sent_back(), 0);
    // Still losing, it waits again; the holder's cleanup brings it back.
    w.reconcile(&loser).await;
    let ctx = context(&w.recorder, SecretMap::default());
    w.proxies.cleanup(&holder, &ctx).await.unwrap();
    assert_eq!(sent_back(), 1);
}

fn url_proxy(url: &str, tls: Option<api::UpstreamTls>) -> Proxy {
    let mut p = proxy("api", "0c1d", None);
    p.spec.upstream = api::Upstream {
        url: Some(url.to_owned()),
        tls,
        ..Default::default()
    };
    p
}

#[tokio::test]
async fn a_url_whose_name_does_not_resolve_is_served_and_not_ready_until_it_resolves() {
    let w = world();
    w.edge
        .unresolved
        .lock()
        .unwrap()
        .insert("api.internal".to_owned());
    let p = url_proxy("http://api.internal:8080/", None);
    let applied = w.reconcile(&p).await;
    assert_eq!(
        ready(&applied.status),
        ("False".into(), "NameNotResolved".into())
    );
    let upstream = applied.status.upstream.clone().unwrap();
    assert_eq!(
        upstream.problem.as_deref(),
        Some("api.internal does not resolve from the edge: its requests get 502 until it does")
    );
    assert_eq!(applied.requeue, Requeue::After(RECHECK));
    assert_eq!(applied.failure.unwrap().category, Category::Upstream);
    // Served all the same, so that it answers as soon as the name resolves.
    assert_eq!(w.edge.applied.lock().unwrap().len(), 1);

    w.edge.unresolved.lock().unwrap().clear();
    let again = Proxy {
        status: Some(applied.status),
        ..p
    };
    let applied = w.reconcile(&again).await;
    assert_eq!(ready(&applied.status), ("True".into(), "Serving".into()));
    assert_eq!(applied.status.upstream.unwrap().problem, None);

    // An address is never looked up.
    w.edge
        .unresolved
        .lock()
        .unwrap()
        .insert("10.0.0.9".to_owned());
    let applied = w.reconcile(&url_proxy("http://10.0.0.9:8080/", None)).await;
    assert_eq!(ready(&applied.status), ("True".into(), "Serving".into()));
}

#[tokio::test]
async fn an_https_upstream_hands_its_ca_bundle_to_the_edge_and_says_how_it_is_verified() {
    let w = world();
    let (ca, _) = pem(&["api.internal"], day(-1), 90);
    let tls = api::UpstreamTls {
        ca_bundle: Some(String::from_utf8(ca).unwrap()),
        ..Default::default()
    };
    let applied = w
        .reconcile(&url_proxy("https://api.internal/", Some(tls)))
        .await;
    assert_eq!(ready(&applied.status), ("True".into(), "Serving".into()));
    let upstream = applied.status.upstream.unwrap();
    assert_eq!(upstream.verification.as_deref(), Some("CABundle"));
    let applies = w.edge.applied.lock().unwrap().clone();
    let id = site::site_id("0c1d");
    assert_eq!(applies[0].files.len(), 1);
    assert_eq!(applies[0].files[0].0, site::upstream_ca_path(&id));
    assert!(applies[0].config.contains(&site::upstream_ca_path(&id)));

    let skip = api::UpstreamTls {
        insecure_skip_verify: true,
        ..Default::default()
    };
    let applied = w
        .reconcile(&url_proxy("https://api.internal/", Some(skip)))
        .await;
    assert_eq!(
        applied.status.upstream.unwrap().verification.as_deref(),
        Some("Skipped")
    );
    let applied = w.reconcile(&url_proxy("https://api.internal/", None)).await;
    assert_eq!(
        applied.status.upstream.unwrap().verification.as_deref(),
        Some("SystemCAs")
    );
}
