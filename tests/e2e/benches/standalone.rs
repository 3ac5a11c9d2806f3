//! Standalone mode at scale, measured on the real binary (release build):
//!
//! - idle RSS with no objects (target: under 30 MB);
//! - 1,000 and 10,000 objects across every kind, from a cold start to "every object observed":
//!   stored, and carrying a status for every kind that has a reconciler (targets: under 5 s;
//!   RSS under 60 MB at 1,000 and under 100 MB at 10,000);
//! - a steady state once everything settled (no status written and no audit record for 3 s,
//!   no backup run pending or running), across three resyncs: no status written and no side
//!   effect (no audit record). The workload includes a channel verified against a live local
//!   webhook, so that a repeated side effect would show: its verification is one audit record
//!   and one request, and must not happen again.
//!
//! Other side effects are stubbed by the manifests themselves: the other channels do not
//! verify, Proxies name containers that do not exist, backups do not exist.
//!
//!     cargo build --release -p infrapilot && cargo bench -p infrapilot-e2e --bench standalone

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use infrapilot_e2e::operator::Operator;
use infrapilot_e2e::webhook::WebhookServer;

/// How many objects of each kind a scenario has; `scale` 1 is 1,000 objects, 10 is 10,000.
/// Runs stay at 50 (each waits for a restore slot); channels make up the difference.
struct Mix {
    channels: usize,
    proxies: usize,
    rules: usize,
    tenants: usize,
    policies: usize,
    runs: usize,
}

impl Mix {
    fn of(scale: usize) -> Self {
        Self {
            channels: 400 * scale + 50 * (scale - 1),
            proxies: 200 * scale,
            rules: 150 * scale,
            tenants: 100 * scale,
            policies: 100 * scale,
            runs: 50,
        }
    }

    fn total(&self) -> usize {
        // The verified channel comes on top.
        self.channels + self.proxies + self.rules + self.tenants + self.policies + self.runs + 1
    }

    /// Objects of the kinds with a reconciler, which must all carry a status.
    fn reconciled(&self) -> usize {
        self.channels + self.proxies + self.policies + self.runs + 1
    }
}

fn manifests(dir: &Path, mix: &Mix, sink: &str) {
    std::fs::create_dir_all(dir).expect("manifests dir");
    let mut docs: Vec<String> = Vec::new();
    docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: verified-sink\nspec:\n  verify: true\n  webhook:\n    url: {sink}\n"));
    for i in 0..mix.channels {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: ch-{i}\nspec:\n  webhook:\n    url: http://127.0.0.1:9/{i}\n"));
    }
    for i in 0..mix.proxies {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: Proxy\nmetadata:\n  name: px-{i}\nspec:\n  hosts: [app-{i}.example.com]\n  upstream:\n    name: app-{i}\n    port: 8080\n"));
    }
    for i in 0..mix.rules {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: rule-{i}\nspec:\n  certificateExpiry:\n    within: 14d\n  channels: [{{name: ch-{i}}}]\n"));
    }
    for i in 0..mix.tenants {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: tenant-{i}\nspec:\n  displayName: Tenant {i}\n"));
    }
    for i in 0..mix.policies {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: BackupValidationPolicy\nmetadata:\n  name: bvp-{i}\nspec:\n  source:\n    path: /backups/{i}/*.dump\n  schedule: \"30 3 * * *\"\n"));
    }
    for i in 0..mix.runs {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: BackupValidationRun\nmetadata:\n  name: run-{i}\nspec:\n  policyRef: {{name: bvp-{i}}}\n"));
    }
    for (n, chunk) in docs.chunks(100).enumerate() {
        std::fs::write(
            dir.join(format!("objects-{n:03}.yaml")),
            chunk.join("---\n"),
        )
        .expect("writing manifests");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Objects stored; objects of kinds with a reconciler carrying a status; audit records; runs
/// not yet ended.
async fn counts(db: &Path) -> (i64, i64, i64, i64) {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let Ok(pool) = sqlx::AnyPool::connect(&url).await else {
        return (0, 0, 0, 0);
    };
    let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM objects")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    let kinds: Vec<String> = infrapilot::runtime::registry::kinds()
        .iter()
        .map(|kind| format!("'{}'", kind.name()))
        .collect();
    // The kind names are the crate's own constants.
    let reconciled: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM objects WHERE kind IN ({}) AND status IS NOT NULL",
        kinds.join(", ")
    )))
    .fetch_one(&pool)
    .await
    .unwrap_or(0);
    let busy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM objects WHERE kind = 'BackupValidationRun' AND (status IS NULL \
         OR status LIKE '%\"phase\":\"Pending\"%' OR status LIKE '%\"phase\":\"Running\"%')",
    )
    .fetch_one(&pool)
    .await
    .unwrap_or(0);
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_records")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    pool.close().await;
    (objects, reconciled, audit, busy)
}

async fn wait_started(operator: &Operator) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !operator.log().contains("standalone mode started") {
        assert!(
            Instant::now() < deadline,
            "the operator did not start:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What one scenario measured.
struct Measured {
    total: usize,
    observed: Duration,
    rss_kib: u64,
    settled: Duration,
    writes: usize,
    side_effects: i64,
    sink_requests: usize,
}

/// Cold start with the mix of `scale`, observed, settled, then three quiet resyncs.
async fn scenario(base: &Path, scale: usize) -> Measured {
    let mix = Mix::of(scale);
    let sink = WebhookServer::start().await.expect("the webhook sink");
    let dir = base.join(format!("scale-{scale}"));
    manifests(&dir.join("manifests"), &mix, &sink.url("/verify"));
    let started = Instant::now();
    let mut operator =
        Operator::start(&dir, &["run", "--manifests", "manifests", "--resync", "2s"])
            .expect("start");
    let db = dir.join(".infrapilot/state.db");
    let observed = loop {
        let (objects, reconciled, _, _) = counts(&db).await;
        if objects == mix.total() as i64 && reconciled == mix.reconciled() as i64 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not observed after 300 s: {objects} objects, {reconciled} with a status"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = rss_kib(operator.process().pid().expect("pid"));

    // Settled: every run ended, and 3 s without a status write or an audit record.
    let mut last = (usize::MAX, i64::MAX);
    let mut quiet_since = Instant::now();
    let settled = loop {
        let writes = operator.log().matches("status updated").count();
        let (_, _, audit, busy) = counts(&db).await;
        if (writes, audit) != last || busy > 0 {
            last = (writes, audit);
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "not settled after 900 s: {busy} runs not ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The verified channel's one side effect happened (so a repeat would be seen).
    let sink_before = sink.requests().len();
    assert_eq!(sink_before, 1, "the channel was verified once");

    let writes_before = operator.log().matches("status updated").count();
    let (_, _, audit_before, _) = counts(&db).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let writes_after = operator.log().matches("status updated").count();
    let (_, _, audit_after, _) = counts(&db).await;
    operator.stop().await.expect("stop");
    Measured {
        total: mix.total(),
        observed,
        rss_kib,
        settled,
        writes: writes_after - writes_before,
        side_effects: audit_after - audit_before,
        sink_requests: sink.requests().len() - sink_before,
    }
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let base = tempfile::tempdir().expect("temp dir");
    let mut report = String::new();
    writeln!(
        report,
        "binary: {}",
        infrapilot_e2e::operator::binary().display()
    )
    .ok();

    // Idle, no objects.
    let idle_dir = base.path().join("idle");
    let mut idle = Operator::standalone(&idle_dir).expect("start");
    wait_started(&idle).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(idle.process().pid().expect("pid"));
    idle.stop().await.expect("stop");
    let mib = |kib: u64| kib as f64 / 1024.0;
    writeln!(
        report,
        "idle RSS, no objects:        {:>7.1} MiB  (target < 30 MiB: {:.2}x of target)",
        mib(idle_rss),
        mib(idle_rss) / 30.0
    )
    .ok();

    for (scale, rss_target) in [(1, 60.0), (10, 100.0)] {
        let m = scenario(base.path(), scale).await;
        let total = m.total;
        writeln!(report, "every object observed:       {:>7.2} s    ({total} objects; target < 5 s: {:.2}x of target)", m.observed.as_secs_f64(), m.observed.as_secs_f64() / 5.0).ok();
        writeln!(
            report,
            "RSS with {total} objects:     {:>7.1} MiB  (target < {rss_target} MiB: {:.2}x of target)",
            mib(m.rss_kib),
            mib(m.rss_kib) / rss_target
        )
        .ok();
        writeln!(
            report,
            "settled after:               {:>7.2} s    ({total} objects: every run ended, 3 s quiet)",
            m.settled.as_secs_f64()
        )
        .ok();
        writeln!(
            report,
            "steady state over 3 resyncs: {} status writes, {} side effects, {} webhook requests ({total} objects; target: 0, 0, 0)",
            m.writes, m.side_effects, m.sink_requests
        )
        .ok();
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{report}");
    }
}
