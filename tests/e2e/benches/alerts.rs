//! Alert rules on the real binary (release build) and real Docker, standalone mode:
//!
//! (a) a container's exit (Docker's `FinishedAt`) until the rule's status shows its alert
//!     Firing (`for: 0s`), p50 and p99 over 50 crashes (target: p99 at most 1 s);
//! (b) the same exit until the webhook receiver has the notification naming it
//!     (`groupWait: 0s`), p50 and p99 (target: p99 at most 1.5 s);
//! (c) traffic counting is measured by `cargo bench -p infrapilot --bench traffic` (the
//!     counting engine on one core, from recorded lines); the path from the edge's output
//!     through the Docker API to the rules is driven by the e2e test
//!     `error_rates_through_the_edge_fire_and_resolve_and_quiet_rules_beside_them_stay_quiet`,
//!     not timed here;
//! (d) idle: Docker API requests while nothing happens, beyond the one event stream (counted
//!     by a proxy in front of the Docker socket, which first shows it counts the start's
//!     requests) (target: 0).
//!
//! Times are read every 5 ms: from the state database for (a), from the receiver for (b).
//!
//!     cargo build --release -p infrapilot && cargo bench -p infrapilot-e2e --bench alerts
//!
//! Needs what `tests/run.sh` provisions (the Docker images); run it after the suite once.

// A benchmark reports on stdout, and a failed step should stop it with its message.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use infrapilot_e2e::docker::{SCOPE_LABEL, TestDocker};
use infrapilot_e2e::operator::Operator;
use infrapilot_e2e::webhook::WebhookServer;
use jiff::Timestamp;

const CRASHES: usize = 50;

/// The rule's status as the state database holds it.
async fn rule_status(pool: &sqlx::AnyPool) -> serde_json::Value {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM objects WHERE kind = 'AlertRule' AND name = 'crashes'",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    status
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn firing(status: &serde_json::Value, subject: &str) -> bool {
    status["activeAlerts"].as_array().is_some_and(|alerts| {
        alerts
            .iter()
            .any(|a| a["subject"] == subject && a["state"] == "Firing")
    })
}

fn told(webhook: &WebhookServer, subject: &str) -> bool {
    webhook.requests().iter().any(|r| {
        r.json().is_ok_and(|b| {
            b["alerts"].as_array().is_some_and(|alerts| {
                alerts
                    .iter()
                    .any(|a| a["status"] == "firing" && a["labels"]["container"] == subject)
            })
        })
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn since(earlier: Timestamp, later: Timestamp) -> Duration {
    later.duration_since(earlier).try_into().unwrap_or_default()
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let root = std::env::temp_dir().join(format!("infrapilot-alerts-bench-{}", std::process::id()));
    let docker = TestDocker::new("alerts-bench").await;
    let scope = docker.labels()[SCOPE_LABEL].clone();
    let webhook = WebhookServer::start().await.unwrap();
    let dir = root.join("operator");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("manifests/rule.yaml"),
        format!(
            "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: hook\nspec:\n  \
             webhook:\n    url: {url}\n---\napiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\n\
             metadata:\n  name: crashes\nspec:\n  containerCrash:\n    selector:\n      \
             {SCOPE_LABEL}: {scope}\n  for: 0s\n  groupWait: 0s\n  channels:\n    - name: hook\n",
            url = webhook.url("/alerts")
        ),
    )
    .unwrap();
    let socket = root.join("docker.sock");
    let calls = infrapilot_e2e::docker::DockerLink::start(&socket).await;
    let docker_host = format!("unix://{}", socket.display());
    let operator = Operator::start_with_env(
        &dir,
        &["run", "--manifests", "manifests"],
        &[("DOCKER_HOST", &docker_host)],
    )
    .expect("the operator starts");
    operator
        .wait_for_condition("alertrule", "crashes", "Ready", "True")
        .await;
    let pool = sqlx::AnyPool::connect(&format!(
        "sqlite://{}?mode=ro",
        dir.join(".infrapilot/state.db").display()
    ))
    .await
    .expect("the state database");

    // (d) idle: the start's requests (the event stream, the container list) were counted;
    // then nothing is asked while nothing happens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_start = calls.count();
    assert!(at_start > 0, "the counting socket saw the start's requests");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = calls.count() - at_start;
    println!(
        "(d) idle for 10 s with a containerCrash rule: {idle} Docker API requests beyond the event stream (target: 0; {at_start} at the start, counted)"
    );

    // (a) and (b): crashes one after another.
    let mut to_firing = Vec::new();
    let mut to_webhook = Vec::new();
    for i in 0..CRASHES {
        let name = docker.run_shell(&format!("crash-{i}"), &[], "exit 1").await;
        let exited = infrapilot_e2e::docker::finished_at(&name, Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut seen_firing, mut seen_told) = (None, None);
        while seen_firing.is_none() || seen_told.is_none() {
            if seen_firing.is_none() && firing(&rule_status(&pool).await, &name) {
                seen_firing = Some(Timestamp::now());
            }
            if seen_told.is_none() && told(&webhook, &name) {
                seen_told = Some(Timestamp::now());
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not alerted:\n{}",
                operator.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_firing.push(since(exited, seen_firing.unwrap()));
        to_webhook.push(since(exited, seen_told.unwrap()));
    }
    to_firing.sort();
    to_webhook.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "(a) exit -> Firing in status over {CRASHES} crashes: p50 {:.0} ms, p99 {:.0} ms (target p99 <= 1000 ms: {:.2}x of the target)",
        ms(percentile(&to_firing, 0.50)),
        ms(percentile(&to_firing, 0.99)),
        ms(percentile(&to_firing, 0.99)) / 1000.0
    );
    println!(
        "(b) exit -> webhook received over {CRASHES} crashes: p50 {:.0} ms, p99 {:.0} ms (target p99 <= 1500 ms: {:.2}x of the target)",
        ms(percentile(&to_webhook, 0.50)),
        ms(percentile(&to_webhook, 0.99)),
        ms(percentile(&to_webhook, 0.99)) / 1500.0
    );
    println!(
        "(c) traffic counting: see cargo bench -p infrapilot --bench traffic (the engine on one core)"
    );
    pool.close().await;
    operator.stop().await.expect("stop");
    docker.cleanup().await.expect("cleanup");
}
