//! Leader election under faults, against the emulator: a leader killed without giving its Lease
//! up, a leader whose Lease writes fail, and writes answered 409 Conflict. Who did what, and
//! when, comes from the emulator's record of writes: each replica talks to it with its own
//! bearer token, and each write is stamped with the time it was answered (the same clock as the
//! Lease's renewTime, which the replicas write from this machine's clock).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use infrapilot_e2e::kmock::{Fault, KubeEmulator, Write};
use infrapilot_e2e::operator::Operator;
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::webhook::WebhookServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, PostParams};
use nix::sys::signal::Signal;

use super::{channels, cluster, ready, start_replica_leasing, wait_readyz, webhook_channel};

/// Long enough that a loaded machine renews in time, short enough for a quick takeover.
const LEASE: &str = "6s";
/// The Lease object's path, for faults.
const LEASE_PATH: &str = "/leases/infrapilot$";

async fn lease(client: &kube::Client) -> Lease {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get("infrapilot")
        .await
        .expect("the Lease exists")
}

fn holder(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// When the Lease expires unless renewed: its renewTime plus its duration.
fn expiry(lease: &Lease) -> SystemTime {
    let spec = lease.spec.as_ref().expect("the Lease has a spec");
    let renewed = spec.renew_time.as_ref().expect("the Lease was renewed");
    let seconds = spec
        .lease_duration_seconds
        .expect("the Lease has a duration");
    SystemTime::from(renewed.0)
        + Duration::from_secs(u64::try_from(seconds).expect("a positive duration"))
}

fn acquired(lease: &Lease) -> SystemTime {
    let spec = lease.spec.as_ref().expect("the Lease has a spec");
    SystemTime::from(
        spec.acquire_time
            .as_ref()
            .expect("the Lease was acquired")
            .0,
    )
}

/// The writes `client` made to reconcile objects: everything but the Lease.
fn reconciling<'a>(writes: &'a [Write], client: &str) -> Vec<&'a Write> {
    writes
        .iter()
        .filter(|w| w.client.as_deref() == Some(client) && !w.path.contains("/leases"))
        .collect()
}

fn show(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at).map_or_else(|_| format!("{at:?}"), |t| t.to_string())
}

async fn probes(operator: &Operator) -> String {
    format!("http://{}", operator.probe_address().await)
}

/// Creates a webhook channel delivering to `/<name>` and waits until it is Ready.
async fn verified_channel(api: &Api<DynamicObject>, hook_base: &str, name: &str) {
    api.create(
        &PostParams::default(),
        &webhook_channel(name, &format!("{hook_base}/{name}")),
    )
    .await
    .expect("the emulator stores the channel");
    wait_verified(api, name).await;
}

async fn wait_verified(api: &Api<DynamicObject>, name: &str) {
    eventually(
        &format!("{name} to be verified"),
        Duration::from_secs(60),
        || async {
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            match ready(&object) {
                Some((status, reason)) if status == "True" => Ok(reason),
                other => Err(format!("Ready is {other:?}")),
            }
        },
    )
    .await;
}

/// Every channel of `names`, and no other, received exactly one verification request.
fn assert_verified_once<S: AsRef<str>>(hook: &WebhookServer, names: impl IntoIterator<Item = S>) {
    let mut counts = BTreeMap::<String, usize>::new();
    for request in hook.requests() {
        *counts.entry(request.path).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = names
        .into_iter()
        .map(|name| (format!("/{}", name.as_ref()), 1))
        .collect();
    assert_eq!(counts, expected);
}

/// Replica A leading, and replica B standing by, both with a Lease of [`LEASE`].
async fn leader_and_standby(emulator: &KubeEmulator) -> (Operator, Operator) {
    let first = start_replica_leasing(emulator, "replica-a", LEASE, &[]);
    wait_readyz(&probes(&first).await, "leading").await;
    let second = start_replica_leasing(emulator, "replica-b", LEASE, &[]);
    wait_readyz(&probes(&second).await, "standby").await;
    (first, second)
}

fn hook_base(hook: &WebhookServer) -> String {
    hook.url("").trim_end_matches('/').to_owned()
}

#[tokio::test]
async fn a_standby_takes_over_from_a_killed_leader_only_once_its_lease_has_expired() {
    let (emulator, client, hook) = cluster().await;
    let api = channels(client.clone());
    let base = hook_base(&hook);
    let (mut first, second) = leader_and_standby(&emulator).await;
    for name in ["before-1", "before-2"] {
        verified_channel(&api, &base, name).await;
    }

    // SIGKILL: no release, the Lease stays held until it expires.
    first.process().signal(Signal::SIGKILL).unwrap();
    first.process().wait(Duration::from_secs(10)).await.unwrap();
    let held = lease(&client).await;
    assert!(holder(&held).starts_with("replica-a-"), "{held:?}");
    let expires = expiry(&held);

    // Work for the standby, there before the Lease expires.
    for name in ["after-1", "after-2"] {
        api.create(
            &PostParams::default(),
            &webhook_channel(name, &format!("{base}/{name}")),
        )
        .await
        .unwrap();
    }
    let created = SystemTime::now();
    assert!(
        created < expires,
        "the channels were created at {} after the Lease expired at {}: the test proves nothing",
        show(created),
        show(expires)
    );
    for name in ["after-1", "after-2"] {
        wait_verified(&api, name).await;
    }

    let taken = lease(&client).await;
    assert!(holder(&taken).starts_with("replica-b-"), "{taken:?}");
    assert!(acquired(&taken) >= expires, "taken over before expiry");
    let writes = emulator.writes().await.unwrap();
    let standby = reconciling(&writes, "replica-b");
    assert!(!standby.is_empty(), "the standby never reconciled");
    let early: Vec<_> = standby.iter().filter(|w| w.at() < expires).collect();
    assert!(
        early.is_empty(),
        "the standby wrote before the Lease expired at {}: {early:?}",
        show(expires)
    );
    // Each channel verified once: the killed leader's by it, the others by the standby.
    assert_verified_once(&hook, ["after-1", "after-2", "before-1", "before-2"]);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_leader_that_cannot_renew_its_lease_stops_reconciling_before_the_lease_expires() {
    let (emulator, client, hook) = cluster().await;
    let api = channels(client.clone());
    let base = hook_base(&hook);
    let (mut first, second) = leader_and_standby(&emulator).await;

    // A steady stream of work: a channel, and the next once it is verified.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn({
        let (api, base, stop) = (api.clone(), base.clone(), stop.clone());
        async move {
            let mut names = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let name = format!("c{}", names.len());
                verified_channel(&api, &base, &name).await;
                names.push(name);
            }
            names
        }
    });
    wait_verified(&api, "c1").await;

    // The leader's Lease writes fail from now on; the standby's still work.
    let failing = SystemTime::now();
    emulator
        .inject(&Fault::writes(LEASE_PATH, 500).from_client("replica-a"))
        .await
        .unwrap();
    let held = lease(&client).await;
    assert!(holder(&held).starts_with("replica-a-"), "{held:?}");
    let expires = expiry(&held);

    // It exits, as a replica that lost its Lease does, to come back as a standby.
    let status = first.process().wait(Duration::from_secs(30)).await.unwrap();
    assert!(!status.success(), "{status:?}");
    eventually("the standby to lead", Duration::from_secs(30), || async {
        let taken = lease(&client).await;
        if holder(&taken).starts_with("replica-b-") {
            Ok(())
        } else {
            Err(format!("{taken:?}"))
        }
    })
    .await;
    eventually(
        "the standby to reconcile",
        Duration::from_secs(30),
        || async {
            let writes = emulator.writes().await.map_err(|e| e.to_string())?;
            if reconciling(&writes, "replica-b").len() >= 3 {
                Ok(())
            } else {
                Err(format!("{writes:?}"))
            }
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    let names = stream.await.unwrap();

    let writes = emulator.writes().await.unwrap();
    let refused: Vec<_> = writes
        .iter()
        .filter(|w| w.client.as_deref() == Some("replica-a") && w.status == 500)
        .collect();
    assert!(!refused.is_empty(), "no Lease write of the leader failed");
    let leader = reconciling(&writes, "replica-a");
    let last = leader.last().expect("the leader reconciled").at();
    // It was still reconciling while its renewals failed: what stopped it was the deadline.
    assert!(
        last > failing,
        "the leader's last write {} came before its renewals failed at {}",
        show(last),
        show(failing)
    );
    assert!(
        last < expires,
        "the leader wrote at {} after its Lease expired at {}",
        show(last),
        show(expires)
    );
    let standby = reconciling(&writes, "replica-b");
    let first_standby = standby.first().expect("the standby reconciled").at();
    assert!(
        first_standby >= expires,
        "the standby wrote at {} before the Lease expired at {}",
        show(first_standby),
        show(expires)
    );
    assert!(acquired(&lease(&client).await) >= expires);
    assert!(
        first.log().contains("not renewed in time"),
        "{}",
        first.process().log_tail(30)
    );
    // No channel was verified by both.
    assert_verified_once(&hook, &names);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn writes_with_a_stale_resource_version_conflict_and_the_operator_converges_anyway() {
    let (emulator, client, hook) = cluster().await;
    let api = channels(client.clone());
    let base = hook_base(&hook);
    let mut operator = start_replica_leasing(&emulator, "replica-a", LEASE, &[]);
    wait_readyz(&probes(&operator).await, "leading").await;

    // A client holding the channel as it was created: the operator has written its status
    // since, so a replace of that version is refused, as a real API server refuses it.
    let created = api
        .create(
            &PostParams::default(),
            &webhook_channel("ops", &format!("{base}/ops")),
        )
        .await
        .unwrap();
    wait_verified(&api, "ops").await;
    let mut stale = created.clone();
    stale.data["spec"]["webhook"]["method"] = "PUT".into();
    match api.replace("ops", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
        }
        other => panic!("a stale replace was not refused: {other:?}"),
    }
    // With the current version it is accepted, and the operator verifies the new spec.
    let mut current = api.get("ops").await.unwrap();
    current.data["spec"]["webhook"]["method"] = "PUT".into();
    api.replace("ops", &PostParams::default(), &current)
        .await
        .unwrap();
    let requests = hook.wait_for_requests(2, Duration::from_secs(30)).await;
    assert_eq!(requests[1].method, "PUT");

    // The operator's own writes answered 409: a status write and a Lease renewal.
    emulator
        .inject(&Fault::writes("/alertchannels/second/status$", 409).times(1))
        .await
        .unwrap();
    emulator
        .inject(&Fault::writes(LEASE_PATH, 409).times(1))
        .await
        .unwrap();
    verified_channel(&api, &base, "second").await;
    eventually(
        "a Lease renewal after the conflict",
        Duration::from_secs(30),
        || async {
            let writes = emulator.writes().await.map_err(|e| e.to_string())?;
            let renewals: Vec<u16> = writes
                .iter()
                .filter(|w| {
                    w.client.as_deref() == Some("replica-a")
                        && w.path.ends_with("/leases/infrapilot")
                })
                .map(|w| w.status)
                .collect();
            match renewals.iter().position(|s| *s == 409) {
                Some(at) if renewals[at + 1..].contains(&200) => Ok(()),
                _ => Err(format!("Lease writes so far: {renewals:?}")),
            }
        },
    )
    .await;

    let writes = emulator.writes().await.unwrap();
    let mut conflicts: Vec<String> = writes
        .iter()
        .filter(|w| w.status == 409)
        .map(|w| format!("{} {}", w.method, w.path))
        .collect();
    conflicts.sort();
    assert_eq!(
        conflicts,
        [
            "PATCH /apis/coordination.k8s.io/v1/namespaces/default/leases/infrapilot",
            "PATCH /apis/infrapilot.io/v1alpha1/namespaces/default/alertchannels/second/status",
            "PUT /apis/infrapilot.io/v1alpha1/namespaces/default/alertchannels/ops",
        ]
    );
    // Still the leader, still running, and the channel converged.
    assert!(holder(&lease(&client).await).starts_with("replica-a-"));
    assert!(operator.process().try_status().unwrap().is_none());
    let object = api.get("second").await.unwrap();
    assert_eq!(object.data["status"]["observedGeneration"], 1);
    operator.stop().await.unwrap();
}
