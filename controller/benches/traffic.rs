//! Traffic counting for errorRate and errorSpike (issue 13's benchmark (c)), on the counting
//! engine itself (`infrapilot::alert::traffic`):
//!
//! - lines per second on one core: 1,000,000 access-log lines in the edge's format, spread
//!   over 100 watched Proxies and one hour, parsed and counted on this thread (target: at least
//!   50,000);
//! - the engine's memory for 100 Proxies with 1-hour windows, after that hour of traffic: what
//!   the process's resident memory grew by from just before the engine was made, the lines
//!   already in memory (target: under 20 MB). The buckets' own size is printed beside it.
//!
//! Where the lines come from (the edge's output through the Docker API) is not part of this
//! figure; that path lands with the rules that use it.
//!
//!     cargo bench -p infrapilot --bench traffic

// A report for people, on stdout; a failed setup is the bench's own bug.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use infrapilot::alert::traffic::Traffic;

/// The process's resident memory, in bytes.
fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

const PROXIES: usize = 100;
const LINES: usize = 1_000_000;
const HOUR: i64 = 3600;

fn main() {
    let start = 1_800_000_000i64;
    // The lines, built before anything is measured, as the edge writes them.
    let lines: Vec<Vec<u8>> = (0..LINES)
        .map(|i| {
            let second = start + (i as i64 * HOUR) / LINES as i64;
            let time = jiff::Timestamp::from_second(second)
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%S+00:00")
                .to_string();
            let status = if i % 20 == 0 { 502 } else { 200 };
            format!(
                r#"{{"time":"{time}","proxy":"shop/app-{}","host":"app-{}.example.com","method":"GET","uri":"/orders/{i}?page=2","status":{status},"bytes":5120,"duration":0.012,"upstream":"172.18.0.{}:8080","upstreamStatus":"{status}","client":"203.0.113.7","userAgent":"Mozilla/5.0 (X11; Linux x86_64)"}}"#,
                i % PROXIES,
                i % PROXIES,
                i % 250
            )
            .into_bytes()
        })
        .collect();

    let before = rss();
    let mut traffic = Traffic::default();
    let spans: HashMap<String, Duration> = (0..PROXIES)
        .map(|p| (format!("shop/app-{p}"), Duration::from_secs(HOUR as u64)))
        .collect();
    traffic.watch(&spans);
    drop(spans);

    let started = Instant::now();
    let mut counted = 0usize;
    for line in &lines {
        counted += usize::from(traffic.record(line).counted());
    }
    let took = started.elapsed();
    assert_eq!(counted, LINES, "every line is a watched Proxy's");
    let held = rss() - before;

    let end = jiff::Timestamp::from_second(start + HOUR - 1).unwrap();
    let counts = traffic.counts("shop/app-0", Duration::from_secs(HOUR as u64), end);
    assert_eq!(counts.requests, (LINES / PROXIES) as u64, "{counts:?}");

    let per_second = LINES as f64 / took.as_secs_f64();
    println!(
        "(c) counting: {LINES} lines over {PROXIES} Proxies in {:.2} s on one core: {:.0} lines/s (target >= 50,000: {:.1}x the target)",
        took.as_secs_f64(),
        per_second,
        per_second / 50_000.0
    );
    let mib = held as f64 / (1024.0 * 1024.0);
    println!(
        "(c) memory: resident memory grew {:.2} MiB for {PROXIES} Proxies with 1-hour windows after an hour of traffic (target < 20 MB: {:.3}x the target; the buckets themselves: {} bytes)",
        mib,
        held as f64 / 20_000_000.0,
        traffic.bucket_bytes()
    );
}
