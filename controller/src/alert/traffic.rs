//! The edge's traffic as errorRate and errorSpike see it: access-log lines counted per Proxy
//! in 10-second buckets, and the two conditions evaluated on those counts
//! (`docs/2026-12-04-error-rates.md`). Pure: the lines come from whoever follows the edge's
//! output, the time from the caller.
//!
//! Memory is bounded by what the rules watch, not by the traffic: each watched Proxy has one
//! ring of [`BUCKET`]-wide buckets, as long as the longest span a rule on it needs; a busy Proxy
//! increments the same buckets. Lines of Proxies no rule watches are dropped once their `proxy`
//! field is read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;

/// The width of a bucket.
pub const BUCKET: Duration = Duration::from_secs(10);

/// Requests and 5xx responses over some span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

/// What became of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Not an access-log line, or one of a Proxy no rule watches.
    Dropped,
    Counted,
    /// Counted, and the first line of a newer bucket of this Proxy: the bucket before is
    /// complete, and the rules on the Proxy have something new to evaluate.
    Opened(String),
}

impl Recorded {
    pub fn counted(&self) -> bool {
        !matches!(self, Recorded::Dropped)
    }
}

/// The fields of an access-log line ([`crate::proxy::site::ACCESS_LOG_FORMAT`]) that count.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    proxy: Cow<'a, str>,
    status: u16,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

/// One Proxy's buckets: `buckets[i % len]` holds bucket number `i` (seconds since the epoch
/// divided by the width) for the `len` numbers up to `newest`.
#[derive(Debug)]
struct Ring {
    newest: i64,
    buckets: Vec<(u32, u32)>,
}

impl Ring {
    fn new(len: usize) -> Self {
        Self {
            newest: i64::MIN,
            buckets: vec![(0, 0); len.max(1)],
        }
    }

    fn len(&self) -> i64 {
        i64::try_from(self.buckets.len()).unwrap_or(i64::MAX)
    }

    fn slot(&self, number: i64) -> usize {
        usize::try_from(number.rem_euclid(self.len())).unwrap_or_default()
    }

    /// Counts a request in bucket `number`; returns whether it opened a newer bucket than any
    /// counted before (the one before it is then complete).
    fn add(&mut self, number: i64, error: bool) -> bool {
        let opened = number > self.newest;
        if self.newest == i64::MIN || number - self.newest >= self.len() {
            self.buckets.fill((0, 0));
            self.newest = number;
        } else if number > self.newest {
            // The buckets in between had no traffic.
            for skipped in self.newest + 1..=number {
                let slot = self.slot(skipped);
                self.buckets[slot] = (0, 0);
            }
            self.newest = number;
        } else if self.newest - number >= self.len() {
            // Older than anything kept: no rule can ask for it.
            return false;
        }
        let slot = self.slot(number);
        let bucket = &mut self.buckets[slot];
        bucket.0 = bucket.0.saturating_add(1);
        bucket.1 = bucket.1.saturating_add(u32::from(error));
        opened
    }

    /// The buckets numbered `from..=to` that are kept.
    fn sum(&self, from: i64, to: i64) -> Counts {
        let mut counts = Counts::default();
        if self.newest == i64::MIN {
            return counts;
        }
        let from = from.max(self.newest - self.len() + 1);
        for number in from..=to.min(self.newest) {
            let (requests, errors) = self.buckets[self.slot(number)];
            counts.requests += u64::from(requests);
            counts.errors += u64::from(errors);
        }
        counts
    }
}

fn number(time: Timestamp) -> i64 {
    time.as_second()
        .div_euclid(i64::try_from(BUCKET.as_secs()).unwrap_or(10))
}

fn buckets_for(span: Duration) -> usize {
    usize::try_from(span.as_secs().div_ceil(BUCKET.as_secs())).unwrap_or(usize::MAX) + 1
}

/// Counts of every watched Proxy (by `namespace/name`, as the edge tags its lines).
#[derive(Debug, Default)]
pub struct Traffic {
    rings: HashMap<String, Ring>,
}

impl Traffic {
    /// Keeps counts for exactly the Proxies in `spans`, each long enough for its span (the
    /// longest window plus baseline of the rules on it). Counts already kept stay when the
    /// span stays the same; a Proxy no longer watched has its ring dropped.
    ///
    /// Returns whether a ring started empty (a Proxy newly watched, or a span that changed):
    /// its history is then to be read again.
    pub fn watch(&mut self, spans: &HashMap<String, Duration>) -> bool {
        self.rings.retain(|proxy, _| spans.contains_key(proxy));
        let mut started = false;
        for (proxy, span) in spans {
            let len = buckets_for(*span);
            let kept = self
                .rings
                .get(proxy)
                .is_some_and(|r| r.buckets.len() == len);
            if !kept {
                // A new length would put the kept buckets in the wrong slots: start over.
                self.rings.insert(proxy.clone(), Ring::new(len));
                started = true;
            }
        }
        started
    }

    /// Forgets every count, keeping what is watched (before the history is read again).
    pub fn clear(&mut self) {
        for ring in self.rings.values_mut() {
            *ring = Ring::new(ring.buckets.len());
        }
    }

    /// Counts one access-log line.
    pub fn record(&mut self, line: &[u8]) -> Recorded {
        let Ok(line) = serde_json::from_slice::<Line<'_>>(line) else {
            return Recorded::Dropped;
        };
        let Some(ring) = self.rings.get_mut(line.proxy.as_ref()) else {
            return Recorded::Dropped;
        };
        // nginx's $time_iso8601 carries the edge's offset (`+00:00`).
        let Ok(time) = line.time.parse::<Timestamp>() else {
            return Recorded::Dropped;
        };
        if ring.add(number(time), line.status >= 500) {
            Recorded::Opened(line.proxy.into_owned())
        } else {
            Recorded::Counted
        }
    }

    /// Whether `proxy` is watched.
    pub fn watches(&self, proxy: &str) -> bool {
        self.rings.contains_key(proxy)
    }

    /// The counts of `proxy` over the `window` that ends at `end`, in whole buckets: the
    /// bucket holding `end` and those before it.
    pub fn counts(&self, proxy: &str, window: Duration, end: Timestamp) -> Counts {
        let Some(ring) = self.rings.get(proxy) else {
            return Counts::default();
        };
        let to = number(end);
        let len = i64::try_from(buckets_for(window)).unwrap_or(i64::MAX) - 1;
        ring.sum(to - len + 1, to)
    }

    /// Bytes the buckets take.
    pub fn bucket_bytes(&self) -> usize {
        self.rings
            .values()
            .map(|r| r.buckets.len() * std::mem::size_of::<(u32, u32)>())
            .sum()
    }
}

/// errorRate: the share of 5xx over the window, when there were at least `min_requests`
/// requests and the share is above `threshold_percent`; the measured value otherwise `None`.
pub fn error_rate(
    counts: Counts,
    threshold_percent: f64,
    min_requests: u32,
    window: &str,
) -> Option<String> {
    if counts.requests == 0 || counts.requests < u64::from(min_requests) {
        return None;
    }
    // Counts of one window stay far below 2^52: exact as f64.
    #[allow(clippy::cast_precision_loss)]
    let percent = counts.errors as f64 * 100.0 / counts.requests as f64;
    (percent > threshold_percent).then(|| {
        format!(
            "{percent:.1}% 5xx ({} of {}) over {window}",
            counts.errors, counts.requests
        )
    })
}

/// errorSpike: at least `min_errors` 5xx in the window, and at least `factor` times the
/// baseline's rate of 5xx scaled to the window's length.
pub fn error_spike(
    current: Counts,
    baseline: Counts,
    window: Duration,
    baseline_span: Duration,
    factor: f64,
    min_errors: u32,
) -> Option<String> {
    if current.errors < u64::from(min_errors) || current.errors == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let expected =
        baseline.errors as f64 * window.as_secs_f64() / baseline_span.as_secs_f64().max(1.0);
    #[allow(clippy::cast_precision_loss)]
    let errors = current.errors as f64;
    (errors >= factor * expected).then(|| {
        format!(
            "{} 5xx in {}s, {:.1} expected from the baseline",
            current.errors,
            window.as_secs(),
            expected
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(proxy: &str, status: u16, time: &str) -> Vec<u8> {
        format!(
            r#"{{"time":"{time}","proxy":"{proxy}","host":"a.example.com","method":"GET","uri":"/","status":{status},"bytes":12,"duration":0.001,"upstream":"172.18.0.3:8080","upstreamStatus":"{status}","client":"127.0.0.1","userAgent":"curl/8"}}"#
        )
        .into_bytes()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn watching(proxies: &[(&str, u64)]) -> Traffic {
        let mut traffic = Traffic::default();
        let spans = proxies
            .iter()
            .map(|(p, s)| ((*p).to_owned(), Duration::from_secs(*s)))
            .collect();
        traffic.watch(&spans);
        traffic
    }

    #[test]
    fn lines_are_counted_per_watched_proxy_in_their_buckets() {
        let mut traffic = watching(&[("shop/api", 300)]);
        let opened = Recorded::Opened("shop/api".to_owned());
        for (status, time, recorded) in [
            (200, "2026-12-04T10:00:01+00:00", opened.clone()),
            (502, "2026-12-04T10:00:09+00:00", Recorded::Counted),
            // A newer bucket: the one before is complete.
            (200, "2026-12-04T10:00:11+00:00", opened),
        ] {
            assert_eq!(traffic.record(&line("shop/api", status, time)), recorded);
        }
        // Another Proxy's line, and lines that are not access-log lines, count nothing.
        assert!(
            !traffic
                .record(&line("shop/web", 500, "2026-12-04T10:00:05+00:00"))
                .counted()
        );
        assert!(
            !traffic
                .record(b"2026/12/04 10:00:00 [notice] 1#1: reconfiguring")
                .counted()
        );
        assert!(
            !traffic
                .record(&line("shop/api", 500, "yesterday"))
                .counted()
        );
        let end = at("2026-12-04T10:00:15Z");
        assert_eq!(
            traffic.counts("shop/api", Duration::from_secs(60), end),
            Counts {
                requests: 3,
                errors: 1
            }
        );
        // The window of one bucket holds only the newest bucket.
        assert_eq!(
            traffic.counts("shop/api", Duration::from_secs(10), end),
            Counts {
                requests: 1,
                errors: 0
            }
        );
        assert_eq!(
            traffic.counts("shop/web", Duration::from_secs(60), end),
            Counts::default()
        );
    }

    #[test]
    fn old_buckets_leave_the_window_and_the_ring_and_memory_does_not_grow_with_traffic() {
        let mut traffic = watching(&[("shop/api", 60)]);
        let bytes = traffic.bucket_bytes();
        for second in 0..600 {
            let time = Timestamp::from_second(1_800_000_000 + second).unwrap();
            let text = time.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string();
            for _ in 0..10 {
                traffic.record(&line(
                    "shop/api",
                    if second % 2 == 0 { 500 } else { 200 },
                    &text,
                ));
            }
        }
        assert_eq!(
            traffic.bucket_bytes(),
            bytes,
            "6,000 lines, the same buckets"
        );
        let end = Timestamp::from_second(1_800_000_599).unwrap();
        let last_minute = traffic.counts("shop/api", Duration::from_secs(60), end);
        assert_eq!(last_minute.requests, 600, "{last_minute:?}");
        assert_eq!(last_minute.errors, 300);
        // Ten minutes later, with no traffic since, nothing is left in the window.
        let later = Timestamp::from_second(1_800_001_200).unwrap();
        assert_eq!(
            traffic.counts("shop/api", Duration::from_secs(60), later),
            Counts::default()
        );
        // A line older than the ring is dropped, not counted into a newer bucket.
        traffic.record(&line("shop/api", 500, "2026-01-01T00:00:00+00:00"));
        assert_eq!(
            traffic.counts("shop/api", Duration::from_secs(60), end),
            last_minute
        );
    }

    #[test]
    fn a_proxy_no_longer_watched_is_dropped_and_one_still_watched_keeps_its_counts() {
        let mut traffic = watching(&[("shop/api", 60), ("shop/web", 60)]);
        traffic.record(&line("shop/api", 500, "2026-12-04T10:00:01+00:00"));
        traffic.record(&line("shop/web", 500, "2026-12-04T10:00:01+00:00"));
        let spans = HashMap::from([("shop/api".to_owned(), Duration::from_secs(60))]);
        traffic.watch(&spans);
        let end = at("2026-12-04T10:00:05Z");
        assert_eq!(
            traffic
                .counts("shop/api", Duration::from_secs(60), end)
                .errors,
            1
        );
        assert!(
            !traffic
                .record(&line("shop/web", 500, "2026-12-04T10:00:02+00:00"))
                .counted()
        );
        assert_eq!(traffic.bucket_bytes(), 8 * 7);
    }

    #[test]
    fn error_rate_needs_enough_requests_and_a_share_above_the_threshold() {
        let counts = |requests, errors| Counts { requests, errors };
        assert_eq!(
            error_rate(counts(200, 25), 10.0, 20, "5m").as_deref(),
            Some("12.5% 5xx (25 of 200) over 5m")
        );
        assert_eq!(
            error_rate(counts(200, 20), 10.0, 20, "5m"),
            None,
            "not above"
        );
        assert_eq!(error_rate(counts(10, 10), 10.0, 20, "5m"), None, "too few");
        assert_eq!(error_rate(counts(0, 0), 0.0, 0, "5m"), None, "no traffic");
    }

    #[test]
    fn a_spike_is_measured_against_the_baseline_scaled_to_the_window() {
        let counts = |errors| Counts {
            requests: 1000,
            errors,
        };
        let (window, baseline) = (Duration::from_secs(300), Duration::from_secs(3600));
        // 24 errors an hour in the baseline: 2 expected in 5 minutes; 6 is three times that.
        assert!(error_spike(counts(6), counts(24), window, baseline, 3.0, 5).is_some());
        assert_eq!(
            error_spike(counts(5), counts(24), window, baseline, 3.0, 5),
            None
        );
        assert_eq!(
            error_spike(counts(4), counts(0), window, baseline, 3.0, 5),
            None,
            "under minErrors"
        );
        assert!(error_spike(counts(5), counts(0), window, baseline, 3.0, 5).is_some());
    }
}
