//! Kubernetes mode against kmock's emulator: the real `infrapilot run` binary, its real kube
//! `Controller` over HTTP, leader election on a real Lease object, probes and metrics.

use std::time::Duration;

use infrapilot::api::Kind;
use infrapilot_e2e::docker::{ContainerSpec, TestDocker, images};
use infrapilot_e2e::dumps::{Fixture, Kind as DumpKind};
use infrapilot_e2e::edge::TestEdge;
use infrapilot_e2e::kmock::KubeEmulator;
use infrapilot_e2e::operator::Operator;
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::webhook::WebhookServer;
use infrapilot_e2e::{env, names};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;

/// Leader election under faults: a killed leader, a leader that cannot renew, conflicts.
mod leader;

const RESOURCES: [&str; 9] = [
    "apiextensions.k8s.io/v1/customresourcedefinitions",
    "infrapilot.io/v1alpha1/alertchannels",
    "infrapilot.io/v1alpha1/alertrules",
    "infrapilot.io/v1alpha1/proxies",
    "infrapilot.io/v1alpha1/backupvalidationpolicies",
    "infrapilot.io/v1alpha1/backupvalidationruns",
    "coordination.k8s.io/v1/leases",
    "events.k8s.io/v1/events",
    "v1/secrets",
];

/// An emulated cluster with our CRD installed, a client of it, and a webhook receiver.
async fn cluster() -> (KubeEmulator, kube::Client, WebhookServer) {
    let emulator = KubeEmulator::start(&RESOURCES)
        .await
        .expect("the emulator starts");
    let client = emulator.client().expect("a client of the emulator");
    install_crd(client.clone()).await;
    let hook = WebhookServer::start()
        .await
        .expect("the webhook receiver starts");
    (emulator, client, hook)
}

/// Installs the CRDs of the kinds with controllers, marked Established (the emulator has no
/// apiextensions controller to do it).
async fn install_crd(client: kube::Client) {
    for kind in [
        Kind::AlertChannel,
        Kind::AlertRule,
        Kind::Proxy,
        Kind::BackupValidationPolicy,
        Kind::BackupValidationRun,
    ] {
        let mut crd = kind.crd().clone();
        crd.status = Some(CustomResourceDefinitionStatus {
            conditions: Some(vec![CustomResourceDefinitionCondition {
                type_: "Established".to_owned(),
                status: "True".to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &crd)
            .await
            .expect("the emulator stores the CRD");
    }
}

fn channels(client: kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "infrapilot.io".to_owned(),
        version: "v1alpha1".to_owned(),
        api_version: "infrapilot.io/v1alpha1".to_owned(),
        kind: "AlertChannel".to_owned(),
        plural: "alertchannels".to_owned(),
    };
    Api::namespaced_with(client, "default", &resource)
}

fn ready(object: &DynamicObject) -> Option<(String, String)> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

#[tokio::test]
async fn an_alert_channel_created_in_the_cluster_is_verified_and_its_status_written() {
    let (emulator, client, hook) = cluster().await;

    let operator = start_replica(&emulator, "replica-a");
    let probes = format!("http://{}", operator.probe_address().await);

    // The webhook URL comes from a Secret, read from the API by reference.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hook", "namespace": "default"},
        "stringData": {"url": hook.url("/alerts")},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let channel: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "ops", "namespace": "default"},
        "spec": {"webhook": {"urlSecretRef": {"name": "hook", "key": "url"}}, "verify": true},
    }))
    .unwrap();
    let api = channels(client.clone());
    api.create(&PostParams::default(), &channel).await.unwrap();

    let reconciled = eventually(
        "the channel to be Ready",
        Duration::from_secs(30),
        || async {
            let object = api.get("ops").await.map_err(|e| e.to_string())?;
            match ready(&object) {
                Some((status, reason)) if status == "True" => Ok((object, reason)),
                other => Err(format!(
                    "Ready is {other:?}; operator log:\n{}",
                    operator.log()
                )),
            }
        },
    )
    .await;
    assert_eq!(reconciled.1, "Verified");
    assert_eq!(reconciled.0.data["status"]["verified"], true);
    assert_eq!(reconciled.0.data["status"]["observedGeneration"], 1);
    let requests = hook.wait_for_requests(1, Duration::from_secs(5)).await;
    assert_eq!(requests[0].path, "/alerts");
    assert_eq!(requests[0].json().unwrap()["kind"], "Verification");

    // The leader holds the Lease; the delivery and its audit record are Events on the object.
    let holder = lease_holder(client.clone()).await.unwrap_or_default();
    assert!(holder.starts_with("replica-a-"), "holder {holder:?}");
    let events = eventually("the events", Duration::from_secs(10), || async {
        let list = client
            .request::<serde_json::Value>(http_get(
                "/apis/events.k8s.io/v1/namespaces/default/events",
            ))
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["regarding"]["name"] == "ops")
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
        if reasons.contains(&"Verified".to_owned()) && reasons.contains(&"Audited".to_owned()) {
            Ok(reasons)
        } else {
            Err(format!("events so far: {reasons:?}"))
        }
    })
    .await;
    assert!(!events.is_empty());

    // The state database holds the audit log's tables and nothing of standalone mode's.
    sqlx::any::install_default_drivers();
    let state = operator.dir().join(".infrapilot/state.db");
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", state.display()))
        .await
        .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        tables,
        ["_sqlx_migrations_audit", "audit_head", "audit_records"]
    );
    pool.close().await;

    // Ready once the watch cache synced; metrics count the reconcile without object names.
    wait_readyz(&probes, "every watch cache has synced").await;
    let metrics = reqwest::get(format!("{probes}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("infrapilot_reconciles_total{controller=\"alertchannel\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("infrapilot_leader 1"), "{metrics}");
    assert!(
        !metrics.contains("ops"),
        "no object names in metrics: {metrics}"
    );

    // A spec change is verified again; the status stays written by the operator.
    let change = json!({"spec": {"webhook": {"method": "PUT"}}});
    api.patch("ops", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let requests = hook.wait_for_requests(2, Duration::from_secs(30)).await;
    assert_eq!(requests[1].method, "PUT");

    // SIGTERM: reconciles finish, the Lease is given up for a standby to take at once.
    operator.stop().await.unwrap();
    let holder = lease_holder(client).await;
    assert!(
        holder.as_deref().is_none_or(str::is_empty),
        "the Lease is still held by {holder:?}"
    );
}

/// Who holds the leader Lease.
async fn lease_holder(client: kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client, "default")
        .get("infrapilot")
        .await
        .expect("the Lease exists")
        .spec
        .and_then(|s| s.holder_identity)
}

/// Starts `infrapilot run` against the emulator as replica `instance`.
fn start_replica(emulator: &KubeEmulator, instance: &str) -> Operator {
    start_replica_with(emulator, instance, &[])
}

/// [`start_replica`] with more options.
fn start_replica_with(emulator: &KubeEmulator, instance: &str, extra: &[String]) -> Operator {
    // Not shorter: a leader stops once a renewal is half its grace (a third of the Lease)
    // late, and a loaded machine (restores running beside) can be that slow with 3 s.
    start_replica_leasing(emulator, instance, "6s", extra)
}

/// [`start_replica_with`] with a Lease of `lease_duration`. The replica talks to the emulator
/// as the client (bearer token) `instance`, which the emulator records with its writes.
fn start_replica_leasing(
    emulator: &KubeEmulator,
    instance: &str,
    lease_duration: &str,
    extra: &[String],
) -> Operator {
    let dir = env::test_dir(&names::unique(instance));
    std::fs::create_dir_all(&dir).expect("the test directory");
    let kubeconfig = dir.join("kubeconfig");
    emulator
        .write_kubeconfig_as(&kubeconfig, Some(instance))
        .expect("the kubeconfig is written");
    let mut args = vec![
        "run",
        "--probe-address",
        "127.0.0.1:0",
        "--lease-namespace",
        "default",
        "--lease-duration",
        lease_duration,
        "--instance",
        instance,
    ];
    args.extend(extra.iter().map(String::as_str));
    Operator::start_with_env(
        &dir,
        &args,
        &[("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path"))],
    )
    .expect("the operator starts")
}

/// Waits until `/readyz` answers 200 with a reason containing `reason`.
async fn wait_readyz(probes: &str, reason: &str) {
    eventually(
        &format!("/readyz to say {reason}"),
        Duration::from_secs(20),
        || async {
            let response = reqwest::get(format!("{probes}/readyz"))
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            if status == 200 && text.contains(reason) {
                Ok(())
            } else {
                Err(format!("{status}: {text}"))
            }
        },
    )
    .await;
}

async fn wait_ready(
    api: &Api<DynamicObject>,
    name: &str,
    operators: &[&Operator],
) -> (String, String) {
    eventually(
        &format!("{name} to have a Ready condition"),
        Duration::from_secs(30),
        || async {
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            ready(&object).ok_or_else(|| {
                let logs: Vec<String> = operators.iter().map(|o| o.log()).collect();
                format!(
                    "no Ready condition yet; operator logs:\n{}",
                    logs.join("\n---\n")
                )
            })
        },
    )
    .await
}

fn webhook_channel(name: &str, url: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"webhook": {"url": url}, "verify": true},
    }))
    .expect("a valid AlertChannel")
}

#[tokio::test]
async fn a_standby_replica_takes_over_when_the_leader_stops() {
    let (emulator, client, hook) = cluster().await;
    let api = channels(client.clone());

    let first = start_replica(&emulator, "replica-a");
    let first_probes = format!("http://{}", first.probe_address().await);
    wait_readyz(&first_probes, "leading").await;
    let second = start_replica(&emulator, "replica-b");
    let second_probes = format!("http://{}", second.probe_address().await);
    // The standby is healthy and ready to take over, but does not reconcile.
    wait_readyz(&second_probes, "standby").await;

    api.create(
        &PostParams::default(),
        &webhook_channel("first", &hook.url("/first")),
    )
    .await
    .unwrap();
    assert_eq!(
        wait_ready(&api, "first", &[&first, &second]).await.0,
        "True"
    );
    assert!(second.log().contains("waiting to lead"), "{}", second.log());
    assert!(
        !second.log().contains("status updated"),
        "the standby reconciled:\n{}",
        second.log()
    );

    // The leader stops and gives the Lease up; the standby takes over and reconciles.
    first.stop().await.unwrap();
    api.create(
        &PostParams::default(),
        &webhook_channel("second", &hook.url("/second")),
    )
    .await
    .unwrap();
    assert_eq!(wait_ready(&api, "second", &[&second]).await.0, "True");
    let holder = lease_holder(client).await.unwrap_or_default();
    assert!(holder.starts_with("replica-b-"), "holder {holder:?}");
    // Each channel was verified exactly once, whichever replica did it.
    let paths: Vec<String> = hook.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/first", "/second"]);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_object_is_reported_and_the_others_keep_reconciling() {
    let (emulator, client, hook) = cluster().await;
    let api = channels(client.clone());
    // The API server's schema would refuse this; an older CRD or a newer client may not.
    let broken: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"webhook": {"url": hook.url("/broken"), "method": "TELEPORT"}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &broken).await.unwrap();
    api.create(
        &PostParams::default(),
        &webhook_channel("good", &hook.url("/good")),
    )
    .await
    .unwrap();

    let operator = start_replica(&emulator, "replica-a");
    assert_eq!(
        wait_ready(&api, "broken", &[&operator]).await,
        ("False".to_owned(), "InvalidSpec".to_owned())
    );
    let object = api.get("broken").await.unwrap();
    let message = object.data["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("TELEPORT"), "{message}");
    assert_eq!(
        wait_ready(&api, "good", &[&operator]).await,
        ("True".to_owned(), "Verified".to_owned())
    );
    // Fixing the object brings it back.
    let fix = json!({"spec": {"webhook": {"method": "POST"}}});
    api.patch("broken", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    eventually(
        "the fixed channel to be Ready",
        Duration::from_secs(30),
        || async {
            let object = api.get("broken").await.map_err(|e| e.to_string())?;
            match ready(&object) {
                Some((status, _)) if status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_proxy_is_served_and_its_finalizer_removes_it_on_delete() {
    let (emulator, client, _hook) = cluster().await;
    let docker = TestDocker::new("k8s-proxy").await;
    let app = docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let edge = TestEdge::new(&docker);
    let operator = start_replica_with(&emulator, "replica-a", &edge.args());

    let resource = ApiResource {
        group: "infrapilot.io".to_owned(),
        version: "v1alpha1".to_owned(),
        api_version: "infrapilot.io/v1alpha1".to_owned(),
        kind: "Proxy".to_owned(),
        plural: "proxies".to_owned(),
    };
    let proxies: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let proxy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "Proxy",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"hosts": ["shop.example.test"], "upstream": {"name": app.name, "port": 8080}},
    }))
    .unwrap();
    proxies
        .create(&PostParams::default(), &proxy)
        .await
        .unwrap();
    assert_eq!(
        wait_ready(&proxies, "shop", &[&operator]).await,
        ("True".to_owned(), "Serving".to_owned())
    );
    let object = proxies.get("shop").await.unwrap();
    assert_eq!(
        object.metadata.finalizers,
        Some(vec!["infrapilot.io/proxy".to_owned()])
    );
    edge.wait_for("shop.example.test", 200, &app.name, || operator.log())
        .await;

    // Deleting waits for the finalizer: the site goes, then the object.
    proxies.delete("shop", &Default::default()).await.unwrap();
    edge.wait_for("shop.example.test", 404, "", || operator.log())
        .await;
    eventually("the Proxy to be gone", Duration::from_secs(20), || async {
        // kmock's 404 has a reason kube does not read as NotFound: check the code.
        match proxies.get("shop").await {
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error.to_string()),
            Ok(object) => Err(format!("still there: {:?}", object.metadata)),
        }
    })
    .await;
    operator.stop().await.unwrap();
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("a valid request")
}

fn infrapilot_api(client: kube::Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "infrapilot.io".to_owned(),
        version: "v1alpha1".to_owned(),
        api_version: "infrapilot.io/v1alpha1".to_owned(),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    };
    Api::namespaced_with(client, "default", &resource)
}

#[tokio::test]
async fn a_backup_policy_creates_an_owned_run_that_restores_and_reports_in_the_cluster() {
    let (emulator, client, _hook) = cluster().await;
    let fixture = Fixture::make("k8s-backup", &[DumpKind::Custom])
        .await
        .unwrap();
    let operator = start_replica(&emulator, "replica-a");
    let policies = infrapilot_api(
        client.clone(),
        "BackupValidationPolicy",
        "backupvalidationpolicies",
    );
    let runs = infrapilot_api(client, "BackupValidationRun", "backupvalidationruns");
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationPolicy",
        "metadata": {"name": "nightly", "namespace": "default"},
        "spec": {
            "source": {"path": fixture.path(DumpKind::Custom)},
            "engine": {"image": images::POSTGRES},
            "schedule": "0 3 * * *",
            "runOnCreate": true,
            "checks": {"expectTables": ["customers", "orders"], "minRows": {"orders": 1}},
        },
    }))
    .unwrap();
    let created = policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    // The run is an object of the cluster, owned by its policy, and ends with its status.
    let run = eventually("a finished run", Duration::from_secs(120), || async {
        let list = runs
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        match list.items.first() {
            Some(run)
                if run.data["status"]["phase"] == "Succeeded"
                    || run.data["status"]["phase"] == "Failed" =>
            {
                Ok(run.clone())
            }
            other => Err(format!(
                "{:?}\noperator log:\n{}",
                other.map(|r| &r.data["status"]),
                operator.log()
            )),
        }
    })
    .await;
    assert_eq!(run.data["status"]["phase"], "Succeeded", "{:#}", run.data);
    let owner = &run.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(Some(&owner.uid), created.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    let report = run.data["status"]["report"]["json"].as_str().unwrap();
    assert!(std::path::Path::new(report).is_file(), "{report}");

    // The policy hears of it and shows it.
    eventually("the policy Validated", Duration::from_secs(30), || async {
        let policy = policies.get("nightly").await.map_err(|e| e.to_string())?;
        match ready(&policy) {
            Some((status, reason)) if status == "True" && reason == "Validated" => {
                Ok(policy.data["status"].clone())
            }
            other => Err(format!("{other:?}: {:#}", policy.data["status"])),
        }
    })
    .await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_rule_on_a_failing_policy_gets_its_status_written_and_notifies_in_the_cluster() {
    let (emulator, client, hook) = cluster().await;
    let dir = env::test_dir(&names::unique("k8s-alert"));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.dump");
    std::fs::write(&corrupt, b"not a dump").unwrap();
    let operator = start_replica(&emulator, "alerts");
    let create = |api: Api<DynamicObject>, object: serde_json::Value| async move {
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
    };
    create(
        channels(client.clone()),
        json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
            "metadata": {"name": "ops", "namespace": "default"},
            "spec": {"webhook": {"url": hook.url("/alerts")}}}),
    )
    .await;
    let rules = infrapilot_api(client.clone(), "AlertRule", "alertrules");
    create(
        rules.clone(),
        json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertRule",
            "metadata": {"name": "backups", "namespace": "default"},
            "spec": {"backupValidationFailed": {"consecutiveFailures": 1},
                "groupWait": "0s", "channels": [{"name": "ops"}]}}),
    )
    .await;
    create(
        infrapilot_api(client, "BackupValidationPolicy", "backupvalidationpolicies"),
        json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationPolicy",
            "metadata": {"name": "nightly", "namespace": "default"},
            "spec": {"source": {"path": corrupt}, "engine": {"image": images::POSTGRES},
                "schedule": "0 3 * * *", "runOnCreate": true}}),
    )
    .await;

    // The run fails at its format check; the policy's status change brings the rule, which
    // fires and tells the channel in Alertmanager's words.
    let requests = hook.wait_for_requests(1, Duration::from_secs(60)).await;
    let body = requests[0].json().unwrap();
    assert_eq!(body["version"], "4", "{body:#}\n{}", operator.log());
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["labels"]["policy"], "nightly");
    let rule = eventually("the rule's status", Duration::from_secs(30), || async {
        let rule = rules.get("backups").await.map_err(|e| e.to_string())?;
        if rule.data["status"]["state"] == "Firing"
            && rule.data["status"]["channels"][0]["notified"][0] == "nightly"
        {
            Ok(rule)
        } else {
            Err(format!("{:#}", rule.data["status"]))
        }
    })
    .await;
    assert_eq!(
        ready(&rule),
        Some(("True".to_owned(), "Evaluated".to_owned()))
    );
    assert_eq!(rule.data["status"]["observedGeneration"], 1);
    assert_eq!(hook.requests().len(), 1, "told once");

    // The leader's /metrics counts the firing alert; a deleted rule's series leave it (the
    // rule has no finalizer: the operator hears of it when it leaves the watch cache).
    let series = "infrapilot_alerts{namespace=\"default\",rule=\"backups\",state=\"firing\"}";
    eventually(
        "the firing alert on /metrics",
        Duration::from_secs(30),
        || async {
            match operator.metric(series).await? {
                Some(1) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    rules.delete("backups", &Default::default()).await.unwrap();
    eventually(
        "the deleted rule's series gone",
        Duration::from_secs(30),
        || async {
            match operator.metric(series).await? {
                None => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_channel_backs_off_while_its_neighbour_is_verified_and_a_spec_change_is_taken_at_once()
 {
    let (emulator, client, hook) = cluster().await;
    let failing = WebhookServer::start().await.expect("a second receiver");
    failing.respond_with(500);
    let operator = start_replica(&emulator, "backoff");
    let api = channels(client.clone());
    for (name, url) in [("broken", failing.url("/down")), ("ops", hook.url("/up"))] {
        let channel: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertChannel",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"webhook": {"url": url}, "verify": true},
        }))
        .unwrap();
        api.create(&PostParams::default(), &channel).await.unwrap();
    }

    // The neighbour is verified; the failing channel's first attempt arrives (so the count
    // below could see a retry loop), and its failure is in its status.
    let (status, reason) = wait_ready(&api, "ops", &[&operator]).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Verified"));
    let first = failing.wait_for_requests(1, Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    let (status, reason) = wait_ready(&api, "broken", &[&operator]).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DeliveryRejected")
    );

    // Each failed attempt writes status, which comes back as a watch event; that must not
    // start another attempt ahead of the backoff (15 s after a rejection, then 30 s).
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let attempts = failing.requests().len();
    assert!(
        attempts <= 3,
        "{attempts} attempts within 10 s (first at {:?}); operator log:\n{}",
        first[0].path,
        operator.log()
    );
    assert_eq!(hook.requests().len(), 1, "the neighbour was verified once");

    // A spec change is a new generation: taken at once, not after the backoff.
    let change = json!({"spec": {"webhook": {"method": "PUT"}}});
    api.patch("broken", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let requests = failing
        .wait_for_requests(attempts + 1, Duration::from_secs(5))
        .await;
    assert_eq!(requests[attempts].method, "PUT");
    operator.stop().await.unwrap();
}
