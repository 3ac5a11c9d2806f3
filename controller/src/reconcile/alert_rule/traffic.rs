//! The edge's traffic for errorRate and errorSpike rules: the edge's output followed through
//! the Docker API and counted in [`crate::alert::traffic::Traffic`]
//! (`docs/2026-12-04-error-rates.md`).
//!
//! The follower first reads the history Docker kept (from the longest span a rule needs, so a
//! restarted operator counts what happened before it started), and only then says it is
//! following: until then, and while the edge cannot be read, rules keep what their status
//! says, since no data is not zero traffic. A stream that ends (the edge recreated, the
//! connection broken) is opened again from the newest line counted, whose Docker time keeps
//! a line from being counted twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

use crate::alert::traffic::{Recorded, Traffic};
use crate::docker::{Docker, DockerError, LogLine};

/// Whether the counts can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Not read yet: rules wait, saying nothing new.
    NotYet,
    /// The history is read and new lines are counted as they come.
    Following,
    /// The edge's output cannot be read, with why.
    Failed(String),
}

/// What the follower and the rules share.
#[derive(Debug)]
pub struct EdgeTraffic {
    pub counts: Traffic,
    pub reading: Reading,
    /// The Proxy (`namespace/name`) and span of every error rule, by rule.
    rules: BTreeMap<(String, String), (String, Duration)>,
    /// A ring started empty: the history is to be read again.
    refill: bool,
}

impl Default for EdgeTraffic {
    fn default() -> Self {
        Self {
            counts: Traffic::default(),
            reading: Reading::NotYet,
            rules: BTreeMap::new(),
            refill: true,
        }
    }
}

impl EdgeTraffic {
    /// Records what a rule watches (`None`: nothing, for a rule of another condition or one
    /// deleted); returns whether the follower has something to do about it.
    pub fn watch(&mut self, rule: (String, String), watched: Option<(String, Duration)>) -> bool {
        let before = self.rules.get(&rule).cloned();
        if before == watched {
            return false;
        }
        match watched {
            Some(watched) => self.rules.insert(rule, watched),
            None => self.rules.remove(&rule),
        };
        let mut spans: HashMap<String, Duration> = HashMap::new();
        for (proxy, span) in self.rules.values() {
            let longest = spans.entry(proxy.clone()).or_default();
            *longest = (*longest).max(*span);
        }
        if self.counts.watch(&spans) {
            self.refill = true;
        }
        true
    }

    fn longest_span(&self) -> Duration {
        self.rules
            .values()
            .map(|(_, span)| *span)
            .max()
            .unwrap_or_default()
    }

    fn rules_of(&self, proxy: &str) -> Vec<(String, String)> {
        self.rules
            .iter()
            .filter(|(_, (p, _))| p == proxy)
            .map(|(rule, _)| rule.clone())
            .collect()
    }

    fn all_rules(&self) -> Vec<(String, String)> {
        self.rules.keys().cloned().collect()
    }
}

/// How long the follower waits for more rules before reading the history again: the rules of
/// a starting operator arrive one by one, and each read can be megabytes.
const SETTLE: Duration = Duration::from_millis(300);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// Follows the edge's output for as long as the rules' triggers are taken.
pub async fn follow(
    docker: Arc<dyn Docker>,
    edge: String,
    shared: Arc<Mutex<EdgeTraffic>>,
    changed: Arc<Notify>,
    triggers: UnboundedSender<(String, String)>,
) {
    let mut backoff = FIRST_RETRY;
    // The Docker time of the newest line counted.
    let mut newest: Option<Timestamp> = None;
    loop {
        if triggers.is_closed() {
            return;
        }
        let (empty, refill) = match shared.lock() {
            Ok(s) => (s.rules.is_empty(), s.refill),
            Err(_) => return,
        };
        if empty {
            changed.notified().await;
            continue;
        }
        if refill {
            tokio::time::sleep(SETTLE).await;
        }
        let since = {
            let Ok(mut s) = shared.lock() else { return };
            if s.refill {
                s.refill = false;
                s.counts.clear();
                newest = None;
            }
            let span = SignedDuration::try_from(s.longest_span()).unwrap_or(SignedDuration::MAX);
            newest.unwrap_or_else(|| {
                Timestamp::now()
                    .checked_sub(span)
                    .unwrap_or(Timestamp::UNIX_EPOCH)
            })
        };
        // The history, to its end: only then do the counts hold the rules' windows.
        let history = docker.output(&edge, since, false);
        match count(history, &shared, &mut newest, &triggers, false).await {
            Ok(()) => {
                backoff = FIRST_RETRY;
                set_reading(&shared, Reading::Following, &triggers);
            }
            Err(error) => {
                let reason = match error {
                    DockerError::NotFound(_) => format!(
                        "the edge container {edge} does not exist yet (it is created with the first Proxy)"
                    ),
                    other => format!("the edge's output cannot be read: {other}"),
                };
                tracing::debug!("error rules: {reason}");
                set_reading(&shared, Reading::Failed(reason), &triggers);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = changed.notified() => {}
                }
                backoff = (backoff * 2).min(LAST_RETRY);
                continue;
            }
        }
        // Then new lines as they come, from the second of the newest line counted.
        let since = newest.unwrap_or(since);
        let live = docker.output(&edge, since, true);
        tokio::select! {
            result = count(live, &shared, &mut newest, &triggers, true) => {
                if let Err(error) = result {
                    tracing::debug!("error rules: the edge's output stopped: {error}");
                }
                // Ended (the edge recreated, the connection broken): opened again at once;
                // a failure to reopen is what rules are told.
            }
            () = refilled(&shared, &changed) => {}
        }
    }
}

/// Returns once a ring started empty and the history is to be read again.
async fn refilled(shared: &Mutex<EdgeTraffic>, changed: &Notify) {
    loop {
        changed.notified().await;
        if shared.lock().map_or(true, |s| s.refill) {
            return;
        }
    }
}

/// Counts the lines of `output` newer than `newest`; with `live`, brings back the rules of a
/// Proxy each time one of its buckets is complete.
async fn count(
    mut output: futures::stream::BoxStream<'static, Result<LogLine, DockerError>>,
    shared: &Mutex<EdgeTraffic>,
    newest: &mut Option<Timestamp>,
    triggers: &UnboundedSender<(String, String)>,
    live: bool,
) -> Result<(), DockerError> {
    while let Some(line) = output.next().await {
        let line = line?;
        if newest.is_some_and(|n| line.time <= n) {
            // Docker's `since` is in whole seconds: this one was counted already.
            continue;
        }
        *newest = Some(line.time);
        let concerned = {
            let Ok(mut s) = shared.lock() else {
                return Ok(());
            };
            match s.counts.record(&line.line) {
                Recorded::Opened(proxy) if live => s.rules_of(&proxy),
                _ => Vec::new(),
            }
        };
        for rule in concerned {
            if triggers.send(rule).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sets how the edge is read; a change brings every error rule back.
fn set_reading(
    shared: &Mutex<EdgeTraffic>,
    reading: Reading,
    triggers: &UnboundedSender<(String, String)>,
) {
    let rules = match shared.lock() {
        Ok(mut s) if s.reading != reading => {
            s.reading = reading;
            s.all_rules()
        }
        _ => return,
    };
    for rule in rules {
        let _ = triggers.send(rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::NewContainer;
    use crate::reconcile::alert_rule::tests::brought_back;
    use crate::reconcile::tests_support::MemoryDocker;

    fn line(time: Timestamp, proxy: &str, status: u16) -> LogLine {
        let nginx = time.strftime("%Y-%m-%dT%H:%M:%S+00:00");
        LogLine {
            time,
            line: format!(r#"{{"time":"{nginx}","proxy":"{proxy}","status":{status}}}"#)
                .into_bytes(),
        }
    }

    #[tokio::test]
    async fn the_history_is_counted_before_rules_are_told_and_a_missing_edge_is_their_reason() {
        let docker = Arc::new(MemoryDocker::default());
        let shared = Arc::new(Mutex::new(EdgeTraffic::default()));
        let changed = Arc::new(Notify::new());
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let rule = ("shop".to_owned(), "api-errors".to_owned());
        shared.lock().unwrap().watch(
            rule.clone(),
            Some(("shop/api".to_owned(), Duration::from_secs(300))),
        );
        tokio::spawn(follow(
            docker.clone(),
            "edge".to_owned(),
            shared.clone(),
            changed.clone(),
            sender,
        ));
        // No edge yet: the rule is told why it cannot be evaluated.
        assert_eq!(brought_back(&mut receiver).await, rule);
        let reading = shared.lock().unwrap().reading.clone();
        assert!(
            matches!(&reading, Reading::Failed(why) if why.contains("does not exist yet")),
            "{reading:?}"
        );

        // The edge appears with two minutes of traffic in its output.
        let now = Timestamp::now();
        {
            let mut state = docker.state.lock().unwrap();
            state.output = (0..120)
                .map(|s| {
                    let at = now - SignedDuration::from_secs(120 - s);
                    line(at, if s % 2 == 0 { "shop/api" } else { "shop/web" }, 500)
                })
                .collect();
        }
        docker
            .create(&NewContainer {
                name: "edge".to_owned(),
                ..NewContainer::default()
            })
            .await
            .unwrap();
        assert_eq!(brought_back(&mut receiver).await, rule);
        let s = shared.lock().unwrap();
        assert_eq!(s.reading, Reading::Following);
        let counts = s.counts.counts("shop/api", Duration::from_secs(300), now);
        assert_eq!(
            (counts.requests, counts.errors),
            (60, 60),
            "shop/api's lines of the history, once each"
        );
    }

    #[test]
    fn a_rule_that_needs_a_new_ring_asks_for_the_history_again_and_one_that_does_not_does_not() {
        let mut traffic = EdgeTraffic {
            refill: false,
            ..EdgeTraffic::default()
        };
        let a = ("shop".to_owned(), "a".to_owned());
        let b = ("shop".to_owned(), "b".to_owned());
        let api = |secs| Some(("shop/api".to_owned(), Duration::from_secs(secs)));
        assert!(traffic.watch(a.clone(), api(300)));
        assert!(traffic.refill, "a Proxy newly watched");
        traffic.refill = false;
        assert!(!traffic.watch(a.clone(), api(300)), "nothing changed");
        assert!(traffic.watch(b.clone(), api(60)));
        assert!(!traffic.refill, "a shorter span fits in the ring");
        assert_eq!(traffic.rules_of("shop/api"), vec![a.clone(), b.clone()]);
        assert!(traffic.watch(a, None));
        assert!(
            traffic.refill,
            "the ring shrinks to b's span and starts over"
        );
        assert_eq!(traffic.all_rules(), vec![b]);
    }
}
