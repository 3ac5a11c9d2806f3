//! Standalone mode at scale, measured on the real binary (release build):
//!
//! - idle RSS with no objects (target: under 30 MB);
//! - 1,000 and 10,000 objects across every kind, from a cold start to "every object observed":
//!   stored, and carrying a status for every kind that has a reconciler (targets: under 5 s;
//!   RSS under 60 MB at 1,000 and under 100 MB at 10,000);
//! - a steady state once everything settled (no status written and no audit record for 3 s,
//!   no backup run pending or running), across three resyncs: no status written and no side
//!   effect. The workload includes objects whose reconcile really performs one, so that a
//!   repeat would show: a channel verified against a live local webhook (one audit record and
//!   one request), and a Proxy served by a real container through a real edge (an nginx reload;
//!   it must still answer afterwards).
//!
//! Other side effects are stubbed by the manifests themselves: the other channels do not
//! verify, the other Proxies name containers that do not exist, backups do not exist.
//!
//! With `INFRAPILOT_BASELINE_BIN` naming another build of the binary (an earlier commit's
//! release build), the idle and 1,000-object scenarios run with it too, in the same run and
//! alternating with this build, and the ratios are printed: both get the same machine, the
//! same warm caches and the same workload.
//!
//! Needs the Docker engine and the test images (`tests/env/images.sh`; `tests/run.sh` builds
//! them).
//!
//!     cargo build --release -p infrapilot && cargo bench -p infrapilot-e2e --bench standalone

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infrapilot_e2e::docker::{ContainerSpec, TestDocker, images};
use infrapilot_e2e::edge::TestEdge;
use infrapilot_e2e::operator::Operator;
use infrapilot_e2e::webhook::WebhookServer;

/// Prints a line of the report at once, so that a later failure keeps what was measured.
macro_rules! say {
    ($($arg:tt)*) => {{
        #[allow(clippy::print_stdout)]
        {
            println!($($arg)*);
        }
    }};
}

/// The host of the one Proxy served by a real container.
const SERVED_HOST: &str = "served.bench.test";

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
        // The verified channel and the served Proxy come on top.
        self.channels + self.proxies + self.rules + self.tenants + self.policies + self.runs + 2
    }

    /// Objects of `kinds` (those the build under measurement reconciles), which must all
    /// carry a status.
    fn reconciled(&self, kinds: &[String]) -> usize {
        kinds
            .iter()
            .map(|kind| match kind.as_str() {
                "AlertChannel" => self.channels + 1,
                "Proxy" => self.proxies + 1,
                "AlertRule" => self.rules,
                "Tenant" => self.tenants,
                "BackupValidationPolicy" => self.policies,
                "BackupValidationRun" => self.runs,
                other => panic!("the bench has no objects of {other}"),
            })
            .sum()
    }
}

fn manifests(dir: &Path, mix: &Mix, sink: &str, app: &str) {
    std::fs::create_dir_all(dir).expect("manifests dir");
    let mut docs: Vec<String> = Vec::new();
    docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: verified-sink\nspec:\n  verify: true\n  webhook:\n    url: {sink}\n"));
    docs.push(format!("apiVersion: infrapilot.io/v1alpha1\nkind: Proxy\nmetadata:\n  name: served\nspec:\n  hosts: [{SERVED_HOST}]\n  upstream:\n    name: {app}\n    port: 8080\n"));
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

/// A read-only connection to the operator's state database, once it exists.
async fn state(db: &Path) -> Option<sqlx::AnyPool> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .ok()
}

/// The kinds `binary` reconciles: those whose status its ClusterRole lets it write
/// (`infrapilot rbac`), so that a baseline build with fewer reconcilers is observed on its own
/// kinds.
fn reconciled_kinds(binary: &Path) -> Vec<String> {
    let output = std::process::Command::new(binary)
        .arg("rbac")
        .output()
        .expect("the binary runs");
    if !output.status.success() {
        // Builds from before the registry (752ae24, the baseline of the runtime issue) have no
        // `rbac` command; they reconciled these four (their `KINDS` in kubernetes/runtime.rs).
        return [
            "AlertChannel",
            "Proxy",
            "BackupValidationPolicy",
            "BackupValidationRun",
        ]
        .map(String::from)
        .to_vec();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- ")?.strip_suffix("/status"))
        .filter_map(infrapilot::api::Kind::lookup)
        .map(|kind| kind.name().to_owned())
        .collect()
}

/// Objects stored, and objects of `kinds` carrying a status: one pass over the table, since
/// the looks compete with the operator for the machine's two cores.
async fn observed_counts(pool: &sqlx::AnyPool, kinds: &[String]) -> (i64, i64) {
    let kinds: Vec<String> = kinds.iter().map(|kind| format!("'{kind}'")).collect();
    // The kind names are the crate's own constants.
    let sql = format!(
        "SELECT count(*), coalesce(sum(CASE WHEN kind IN ({}) AND status IS NOT NULL THEN 1 ELSE 0 END), 0) FROM objects",
        kinds.join(", ")
    );
    sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap_or((0, 0))
}

/// Audit records, and runs not yet ended.
async fn settle_counts(pool: &sqlx::AnyPool) -> (i64, i64) {
    let busy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM objects WHERE kind = 'BackupValidationRun' AND (status IS NULL \
         OR status LIKE '%\"phase\":\"Pending\"%' OR status LIKE '%\"phase\":\"Running\"%')",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(0);
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_records")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    (audit, busy)
}

/// The RSS of `binary` started with no objects, once it said it started and 2 s passed.
async fn idle_rss(binary: &Path, dir: &Path) -> u64 {
    std::fs::create_dir_all(dir.join("manifests")).expect("manifests dir");
    let mut idle = Operator::start_binary(binary, dir, &["run", "--manifests", "manifests"], &[])
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !idle.log().contains("standalone mode started") {
        assert!(
            Instant::now() < deadline,
            "the operator did not start:\n{}",
            idle.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(idle.process().pid().expect("pid"));
    idle.stop().await.expect("stop");
    rss
}

/// What one scenario measured.
struct Measured {
    total: usize,
    /// The kinds whose every object had to carry a status to count as observed.
    kinds: Vec<String>,
    observed: Duration,
    rss_kib: u64,
    settled: Duration,
    writes: usize,
    side_effects: i64,
    sink_requests: usize,
    reloads: usize,
}

/// Cold start of `binary` with the mix of `scale`, observed, settled, then three quiet
/// resyncs; the served Proxy's upstream is the container `app`.
async fn scenario(
    base: &Path,
    name: &str,
    scale: usize,
    binary: &Path,
    docker: &TestDocker,
    app: &str,
) -> Measured {
    let mix = Mix::of(scale);
    let sink = WebhookServer::start().await.expect("the webhook sink");
    let edge = TestEdge::new(docker);
    let dir = base.join(name);
    manifests(&dir.join("manifests"), &mix, &sink.url("/verify"), app);
    let mut args = vec!["run", "--manifests", "manifests", "--resync", "2s"];
    let edge_args = edge.args();
    args.extend(edge_args.iter().map(String::as_str));
    let kinds = reconciled_kinds(binary);
    let started = Instant::now();
    let mut operator = Operator::start_binary(binary, &dir, &args, &[]).expect("start");
    let db = dir.join(".infrapilot/state.db");
    let mut pool = None;
    let observed = loop {
        if pool.is_none() && db.exists() {
            pool = state(&db).await;
        }
        let (objects, reconciled) = match &pool {
            Some(pool) => observed_counts(pool, &kinds).await,
            None => (0, 0),
        };
        if objects == mix.total() as i64 && reconciled == mix.reconciled(&kinds) as i64 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{name}: not observed after 300 s: {objects} objects, {reconciled} with a status"
        );
        // Each look reads the whole table: every 20 ms, at 10,000 objects, that took one of
        // the machine's two cores from the operator it measures.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = rss_kib(operator.process().pid().expect("pid"));
    let pool = pool.expect("the state database was read");

    // Settled: every run ended, and 3 s without a status write, an audit record or a reload.
    let mut last = (usize::MAX, i64::MAX, usize::MAX);
    let mut quiet_since = Instant::now();
    let settled = loop {
        let log = operator.log();
        let writes = log.matches("status updated").count();
        let reloads = log.matches("reloaded nginx").count();
        let (audit, busy) = settle_counts(&pool).await;
        if (writes, audit, reloads) != last || busy > 0 {
            last = (writes, audit, reloads);
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{name}: not settled after 900 s: {busy} runs not ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The side effects that a repeat would show happened once already: the channel was
    // verified, and the served Proxy was written to nginx and answers.
    let sink_before = sink.requests().len();
    assert_eq!(sink_before, 1, "{name}: the channel was verified once");
    let log = operator.log();
    let reloads_before = log.matches("reloaded nginx").count();
    assert!(reloads_before >= 1, "{name}: nginx was never reloaded");
    edge.wait_for(SERVED_HOST, 200, app, || operator.log())
        .await;

    let writes_before = operator.log().matches("status updated").count();
    let (audit_before, _) = settle_counts(&pool).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let log = operator.log();
    let writes_after = log.matches("status updated").count();
    let reloads_after = log.matches("reloaded nginx").count();
    let (audit_after, _) = settle_counts(&pool).await;
    // Still served after the quiet resyncs.
    edge.wait_for(SERVED_HOST, 200, app, || operator.log())
        .await;
    pool.close().await;
    operator.stop().await.expect("stop");
    Measured {
        kinds,
        total: mix.total(),
        observed,
        rss_kib,
        settled,
        writes: writes_after - writes_before,
        side_effects: audit_after - audit_before,
        sink_requests: sink.requests().len() - sink_before,
        reloads: reloads_after - reloads_before,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn describe(who: &str, m: &Measured, rss_target: f64) {
    let total = m.total;
    say!("{who}, {total} objects:");
    say!(
        "  (observed: every object stored, and each of its {} with a status)",
        m.kinds.join(", ")
    );
    say!(
        "  every object observed:       {:>7.2} s    (target < 5 s: {:.2}x of target)",
        m.observed.as_secs_f64(),
        m.observed.as_secs_f64() / 5.0
    );
    say!(
        "  RSS once observed:           {:>7.1} MiB  (target < {rss_target} MiB: {:.2}x of target)",
        mib(m.rss_kib),
        mib(m.rss_kib) / rss_target
    );
    say!(
        "  settled after:               {:>7.2} s    (every run ended, 3 s quiet)",
        m.settled.as_secs_f64()
    );
    say!(
        "  steady state over 3 resyncs: {} status writes, {} audit records, {} webhook requests, {} nginx reloads (target: 0, 0, 0, 0)",
        m.writes,
        m.side_effects,
        m.sink_requests,
        m.reloads
    );
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let base = tempfile::tempdir().expect("temp dir");
    let this = infrapilot_e2e::operator::binary();
    let baseline = std::env::var_os("INFRAPILOT_BASELINE_BIN").map(PathBuf::from);
    let docker = TestDocker::new("standalone-bench").await;
    let app = docker
        .run(ContainerSpec::new(images::APP))
        .await
        .expect("the app container (build the test images with tests/env/images.sh)");

    say!("this build: {}", this.display());
    if let Some(baseline) = &baseline {
        say!("baseline:   {}", baseline.display());
    }

    // Idle, no objects; then 1,000 objects; the baseline first each time, so that this build
    // gets no warmer a machine than the baseline.
    let mut idle = Vec::new();
    let mut thousand = Vec::new();
    for (who, binary) in baseline
        .iter()
        .map(|b| ("baseline", b.as_path()))
        .chain([("this build", this.as_path())])
    {
        let rss = idle_rss(binary, &base.path().join(format!("idle-{who}"))).await;
        say!(
            "{who}, idle RSS with no objects: {:>7.1} MiB  (target < 30 MiB: {:.2}x of target)",
            mib(rss),
            mib(rss) / 30.0
        );
        idle.push(rss);
        let m = scenario(
            base.path(),
            &format!("scale-1-{who}"),
            1,
            binary,
            &docker,
            &app.name,
        )
        .await;
        describe(who, &m, 60.0);
        thousand.push(m);
    }
    if let ([base_idle, this_idle], [b, t]) = (idle.as_slice(), thousand.as_slice()) {
        let ratio = |this: f64, baseline: f64| this / baseline;
        say!(
            "this build / baseline, 1,000 objects (same run, same workload): observed {:.2}x, RSS {:.2}x, settled {:.2}x; idle RSS {:.2}x",
            ratio(t.observed.as_secs_f64(), b.observed.as_secs_f64()),
            ratio(t.rss_kib as f64, b.rss_kib as f64),
            ratio(t.settled.as_secs_f64(), b.settled.as_secs_f64()),
            ratio(*this_idle as f64, *base_idle as f64),
        );
    }

    let m = scenario(base.path(), "scale-10", 10, &this, &docker, &app.name).await;
    describe("this build", &m, 100.0);
    docker
        .cleanup()
        .await
        .expect("removing the bench's containers");
}
