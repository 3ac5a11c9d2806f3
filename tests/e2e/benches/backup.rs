//! Backup validation on a dump of at least 200 MB restored size, on real Docker and the
//! PostgreSQL test image. Figures are ratios measured in one run, since machines are noisy:
//!
//! (a) the restore check against a plain `pg_restore` of the same dump into the same image
//!     (the dump copied into the container first, the server with the image's default
//!     settings), timed around pg_restore alone (target: at most 1.2x);
//! (b) the restore's throughput in restored megabytes per second (target: at least 80 MB/s);
//! (c) what the rest of the ladder (format, checksum, freshness, data, the server's start and
//!     removal) adds to the restore (target: under 2 s), for a run that starts from the image's
//!     warm image (the steady state) and for the image's first run, which initialises its
//!     server from scratch.
//!
//! The same plain pg_restore into a server with InfraPilot's throwaway settings (fsync off and
//! so on) is measured too, to show what streaming the dump through `docker exec` costs.
//!
//!     cargo build --release -p infrapilot && cargo bench -p infrapilot-e2e --bench backup
//!
//! Needs the PostgreSQL test image (`tests/run.sh` builds it). The dump (pgbench's tables at
//! scale 20, made in a container) is cached under ~/.cache/infrapilot-test/.

// A benchmark reports on stdout, and a failed step should stop it with its message.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infrapilot::api::backup::BackupValidationPolicySpec;
use infrapilot::backup::engine::postgres::{Postgres, SERVER_SETTINGS};
use infrapilot::backup::engine::{RestoreEngine, ServerSpec};
use infrapilot::backup::ladder::{Job, Outcome, climb};
use infrapilot_e2e::docker::images;
use tokio::process::Command;

const SCALE: u32 = 20;

async fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().await.unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Starts a container of the test image with `settings` (`-c name=value`) and waits until its
/// server has finished initialising and accepts connections.
async fn server(name: &str, settings: &[&str]) {
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", name])
        .output()
        .await;
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "infrapilot.io/e2e=bench",
        "--network",
        "none",
        "-e",
        "POSTGRES_HOST_AUTH_METHOD=trust",
        "-e",
        "POSTGRES_DB=validation",
        images::POSTGRES,
        "postgres",
    ];
    for setting in settings {
        args.extend(["-c", setting]);
    }
    docker(&args).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let logs = Command::new("docker")
            .args(["logs", name])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&logs.stdout).into_owned()
            + &String::from_utf8_lossy(&logs.stderr);
        if text.contains("PostgreSQL init process complete") {
            let ready = Command::new("docker")
                .args([
                    "exec",
                    name,
                    "pg_isready",
                    "-q",
                    "-d",
                    "validation",
                    "-U",
                    "postgres",
                ])
                .status()
                .await
                .unwrap();
            if ready.success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{name} did not start:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pgbench dump, made once and cached.
async fn dump() -> PathBuf {
    let cache = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/infrapilot-test");
    std::fs::create_dir_all(&cache).unwrap();
    let path = cache.join(format!("bench-pgbench-s{SCALE}.dump"));
    if path.exists() {
        return path;
    }
    println!("making the dump (pgbench scale {SCALE}), once");
    let name = "infrapilot-bench-source";
    server(name, &[]).await;
    docker(&[
        "exec",
        name,
        "pgbench",
        "-q",
        "-i",
        "-s",
        &SCALE.to_string(),
        "-U",
        "postgres",
        "validation",
    ])
    .await;
    docker(&[
        "exec",
        name,
        "pg_dump",
        "-U",
        "postgres",
        "-Fc",
        "-f",
        "/tmp/bench.dump",
        "validation",
    ])
    .await;
    let partial = path.with_extension("partial");
    docker(&[
        "cp",
        &format!("{name}:/tmp/bench.dump"),
        &partial.display().to_string(),
    ])
    .await;
    docker(&["rm", "-f", "-v", name]).await;
    std::fs::rename(&partial, &path).unwrap();
    path
}

/// A plain pg_restore of `dump` into a fresh container with `settings`: seconds for
/// pg_restore alone, and the restored size in bytes.
async fn plain_restore(dump: &Path, settings: &[&str]) -> (f64, u64) {
    let name = "infrapilot-bench-baseline";
    server(name, settings).await;
    docker(&[
        "cp",
        &dump.display().to_string(),
        &format!("{name}:/tmp/bench.dump"),
    ])
    .await;
    let started = Instant::now();
    docker(&[
        "exec",
        name,
        "pg_restore",
        "--exit-on-error",
        "--no-owner",
        "--no-privileges",
        "-U",
        "postgres",
        "-d",
        "validation",
        "/tmp/bench.dump",
    ])
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let size = docker(&[
        "exec",
        name,
        "psql",
        "-X",
        "-A",
        "-t",
        "-U",
        "postgres",
        "-d",
        "validation",
        "-c",
        "SELECT pg_database_size(current_database())",
    ])
    .await;
    docker(&["rm", "-f", "-v", name]).await;
    (seconds, size.parse().unwrap())
}

#[tokio::main]
async fn main() {
    let dump = dump().await;
    let size = std::fs::metadata(&dump).unwrap().len();
    println!("dump: {} ({:.0} MB)", dump.display(), size as f64 / 1e6);

    let (baseline, restored) = plain_restore(&dump, &[]).await;
    println!(
        "plain pg_restore, default server settings: {baseline:.2} s for {:.0} MB restored ({:.0} MB/s)",
        restored as f64 / 1e6,
        restored as f64 / 1e6 / baseline
    );
    assert!(
        restored >= 200_000_000,
        "the restored database must be at least 200 MB"
    );
    let (same_settings, _) = plain_restore(&dump, SERVER_SETTINGS).await;
    println!("plain pg_restore, InfraPilot's throwaway settings: {same_settings:.2} s");

    // Runs start from the image's warm image (see the engine), made beside the first run of
    // the image: remove it to show that first run too, then measure the steady state.
    let warm = docker(&["images", "-q", "infrapilot-restore-warm"]).await;
    for id in warm.lines() {
        docker(&["rmi", "-f", id]).await;
    }
    let engine: Arc<dyn RestoreEngine> = Arc::new(Postgres::from_engine(
        &infrapilot::docker::Engine::connect().unwrap(),
    ));
    let spec: BackupValidationPolicySpec = serde_json::from_value(serde_json::json!({
        "source": {"path": dump.display().to_string()},
        "schedule": "0 0 1 1 *",
        "engine": {"image": images::POSTGRES},
        "checks": {"expectTables": ["pgbench_accounts"], "minRows": {"pgbench_accounts": SCALE * 100_000}},
    }))
    .unwrap();
    println!(
        "first run of the image (initialised from scratch; its warm image is made beside it):"
    );
    let (first_total, first_outcome) = ladder(&spec, engine.clone()).await;
    let first = first_total - first_outcome.restore_ms.unwrap() as f64 / 1000.0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while docker(&["images", "-q", "infrapilot-restore-warm"])
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no warm image was made");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("a later run (from the warm image):");
    let (total, outcome) = ladder(&spec, engine).await;
    let restore = outcome.restore_ms.unwrap() as f64 / 1000.0;
    let stats = outcome.restore.unwrap();
    let rate = stats.database_bytes as f64 / 1e6 / restore;
    println!();
    println!(
        "(a) restore check {restore:.2} s vs plain pg_restore {baseline:.2} s: {:.2}x (target <= 1.2x); vs the same settings {same_settings:.2} s: {:.2}x",
        restore / baseline,
        restore / same_settings
    );
    println!(
        "(b) {rate:.0} MB/s restored ({:.0} MB; target >= 80 MB/s)",
        stats.database_bytes as f64 / 1e6
    );
    println!(
        "(c) the rest of the ladder, the server's start included, adds {:.2} s to the restore ({total:.2} s in all; target < 2 s); {:.2} s on the image's first run",
        total - restore,
        first
    );
}

/// Climbs the ladder once, printing each check; returns how long the climb took, in seconds,
/// and its outcome.
async fn ladder(
    spec: &BackupValidationPolicySpec,
    engine: Arc<dyn RestoreEngine>,
) -> (f64, Outcome) {
    let job = Job {
        spec: spec.clone(),
        file: None,
        server: ServerSpec {
            name: "infrapilot-bench-ladder".to_owned(),
            image: images::POSTGRES.to_owned(),
            labels: BTreeMap::from([("infrapilot.io/e2e".to_owned(), "bench".to_owned())]),
        },
        started: jiff::Timestamp::now(),
    };
    let started = Instant::now();
    let outcome = climb(&job, engine, |check| {
        println!(
            "  {} {:?} in {} ms: {}",
            check.name, check.result, check.duration_ms, check.message
        );
    })
    .await;
    let total = started.elapsed().as_secs_f64();
    assert!(outcome.failure().is_none(), "{:#?}", outcome.checks);
    (total, outcome)
}
