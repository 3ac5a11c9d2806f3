//! Standalone mode at scale, measured on the real binary (release build):
//!
//! - idle RSS with no objects (target: under 30 MB);
//! - 1,000 objects across every kind, from a cold start to "every object observed" (stored,
//!   and reconciled where a reconciler exists) (target: under 5 s), and RSS then (under 60 MB);
//! - a steady state with nothing changed, across several resyncs: no status written and no side
//!   effect (no audit record).
//!
//! Side effects are stubbed by the manifests themselves: the channels do not verify.
//!
//!     cargo build --release -p infrapilot && cargo bench -p infrapilot-e2e --bench standalone

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use infrapilot_e2e::operator::Operator;

const CHANNELS: usize = 400;
const PROXIES: usize = 200;
const RULES: usize = 150;
const TENANTS: usize = 100;
const POLICIES: usize = 100;
const RUNS: usize = 50;
const TOTAL: usize = CHANNELS + PROXIES + RULES + TENANTS + POLICIES + RUNS;

fn manifests(dir: &Path) {
    std::fs::create_dir_all(dir).expect("manifests dir");
    let mut docs: Vec<String> = Vec::new();
    for i in 0..CHANNELS {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: ch-{i}\nspec:\n  webhook:\n    url: http://127.0.0.1:9/{i}\n"));
    }
    for i in 0..PROXIES {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: Proxy\nmetadata:\n  name: px-{i}\nspec:\n  hosts: [app-{i}.example.com]\n  upstream:\n    name: app-{i}\n    port: 8080\n"));
    }
    for i in 0..RULES {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: AlertRule\nmetadata:\n  name: rule-{i}\nspec:\n  certificateExpiry:\n    within: 14d\n  channels: [{{name: ch-{i}}}]\n"));
    }
    for i in 0..TENANTS {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: tenant-{i}\nspec:\n  displayName: Tenant {i}\n"));
    }
    for i in 0..POLICIES {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: BackupValidationPolicy\nmetadata:\n  name: bvp-{i}\nspec:\n  source:\n    path: /backups/{i}/*.dump\n  schedule: \"30 3 * * *\"\n"));
    }
    for i in 0..RUNS {
        docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: BackupValidationRun\nmetadata:\n  name: run-{i}\nspec:\n  policyRef: {{name: bvp-{i}}}\n"));
    }
    for (n, chunk) in docs.chunks(100).enumerate() {
        std::fs::write(
            dir.join(format!("objects-{n:02}.yaml")),
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

async fn counts(db: &Path) -> (i64, i64, i64) {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let Ok(pool) = sqlx::AnyPool::connect(&url).await else {
        return (0, 0, 0);
    };
    let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM objects")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    let reconciled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM objects WHERE kind = 'AlertChannel' AND status IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap_or(0);
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_records")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    pool.close().await;
    (objects, reconciled, audit)
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

    // Cold start with 1,000 objects.
    let dir = base.path().join("thousand");
    manifests(&dir.join("manifests"));
    let started = Instant::now();
    let mut operator =
        Operator::start(&dir, &["run", "--manifests", "manifests", "--resync", "2s"])
            .expect("start");
    let db = dir.join(".infrapilot/state.db");
    let observed = loop {
        let (objects, reconciled, _) = counts(&db).await;
        if objects == TOTAL as i64 && reconciled == CHANNELS as i64 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not observed after 120 s: {objects} objects, {reconciled} channels"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded_rss = rss_kib(operator.process().pid().expect("pid"));

    // Steady state: three resyncs with nothing changed.
    let writes_before = operator.log().matches("status updated").count();
    let (_, _, audit_before) = counts(&db).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let writes_after = operator.log().matches("status updated").count();
    let (_, _, audit_after) = counts(&db).await;
    operator.stop().await.expect("stop");

    let mib = |kib: u64| kib as f64 / 1024.0;
    writeln!(
        report,
        "idle RSS, no objects:        {:>7.1} MiB  (target < 30 MiB: {:.2}x of target)",
        mib(idle_rss),
        mib(idle_rss) / 30.0
    )
    .ok();
    writeln!(report, "every object observed:       {:>7.2} s    ({TOTAL} objects; target < 5 s: {:.2}x of target)", observed.as_secs_f64(), observed.as_secs_f64() / 5.0).ok();
    writeln!(
        report,
        "RSS with {TOTAL} objects:      {:>7.1} MiB  (target < 60 MiB: {:.2}x of target)",
        mib(loaded_rss),
        mib(loaded_rss) / 60.0
    )
    .ok();
    writeln!(
        report,
        "steady state over 3 resyncs: {} status writes, {} side effects (target: 0 and 0)",
        writes_after - writes_before,
        audit_after - audit_before
    )
    .ok();
    #[allow(clippy::print_stdout)]
    {
        print!("{report}");
    }
}
