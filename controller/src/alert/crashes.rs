//! Container crashes, from Docker's event stream rather than polling: a crash between two
//! polls is never missed, and it is seen within moments.
//!
//! A crash is a `die` with a non-zero exit code that no `docker stop`, `docker kill` or
//! restart asked for (those send a `kill` event first), or an `oom`. An unhealthy health check
//! holds until the check passes again. A crash keeps its container's alert for the rule's
//! `window`: a restart loop (a crash, an automatic restart, a crash...) is one alert, whose
//! value says "crash loop" once `restarts` crashes fall within the window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::conditions::Found;
use super::timing::Observed;
use crate::docker::{ContainerEvent, ContainerState};

/// How long after a `kill` a non-zero exit counts as asked for: `docker stop` waits 10 s by
/// default before it sends SIGKILL.
const ASKED_FOR: SignedDuration = SignedDuration::from_secs(60);

/// Crashes kept per container: far more than any rule's `restarts` (at most 1,000).
const KEPT: usize = 1_000;

/// How long crashes are kept: the longest window a rule may reasonably have.
const KEPT_FOR: SignedDuration = SignedDuration::from_hours(7 * 24);

#[derive(Clone, Debug, Default)]
struct Container {
    name: String,
    labels: BTreeMap<String, String>,
    /// When each crash happened, oldest first, with what it was.
    crashes: VecDeque<(Timestamp, String)>,
    /// When a `kill` (a stop, a kill, a restart asked for) was last seen.
    killed_at: Option<Timestamp>,
    /// When an OOM was last seen: its `die` follows.
    oom_at: Option<Timestamp>,
    unhealthy: bool,
}

/// What a rule watches: containers by name, by labels, or (neither) every one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub names: Vec<String>,
    pub selector: BTreeMap<String, String>,
}

impl Selection {
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let named = self.names.is_empty() || self.names.iter().any(|n| n == name);
        let labelled = self.selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        named && labelled
    }
}

/// Every container's recent crashes and health, by id.
#[derive(Debug, Default)]
pub struct Crashes {
    containers: HashMap<String, Container>,
    /// Whether the containers were listed once: until then an empty tracker knows nothing,
    /// and evaluating a rule on it would resolve the alerts a restarted operator inherited.
    listed: bool,
}

impl Crashes {
    /// Takes in one event; returns the container's name and labels when the event can change
    /// what a rule sees (so that the rules selecting it are evaluated again).
    pub fn observe(
        &mut self,
        event: &ContainerEvent,
        now: Timestamp,
    ) -> Option<(String, BTreeMap<String, String>)> {
        if event.container_name.is_empty() {
            // A network event: nothing about crashes.
            return None;
        }
        if event.action == "destroy" {
            self.containers.remove(&event.container_id);
            return Some((event.container_name.clone(), event.labels.clone()));
        }
        let container = self
            .containers
            .entry(event.container_id.clone())
            .or_default();
        container.name = event.container_name.clone();
        if !event.labels.is_empty() {
            container.labels = event.labels.clone();
        }
        let changed = match event.action.as_str() {
            "kill" => {
                container.killed_at = Some(now);
                false
            }
            "oom" => {
                container.oom_at = Some(now);
                false
            }
            "die" => {
                let exit = event.exit_code.unwrap_or_default();
                let recent =
                    |at: Option<Timestamp>| at.is_some_and(|t| now.duration_since(t) < ASKED_FOR);
                let what = if recent(container.oom_at) {
                    Some(format!("OOM-killed (exit code {exit})"))
                } else if exit != 0 && !recent(container.killed_at) {
                    Some(format!("exited with code {exit}"))
                } else {
                    None
                };
                container.killed_at = None;
                container.oom_at = None;
                match what {
                    Some(what) => {
                        container.crashes.push_back((now, what));
                        while container.crashes.len() > KEPT
                            || container
                                .crashes
                                .front()
                                .is_some_and(|(t, _)| now.duration_since(*t) > KEPT_FOR)
                        {
                            container.crashes.pop_front();
                        }
                        true
                    }
                    None => false,
                }
            }
            "health_status: unhealthy" => !std::mem::replace(&mut container.unhealthy, true),
            "health_status: healthy" => std::mem::replace(&mut container.unhealthy, false),
            _ => false,
        };
        changed.then(|| (container.name.clone(), container.labels.clone()))
    }

    /// Takes in every container's state after the event stream (re)connected, so that what
    /// happened while it was not listening is not missed: a container that exited on its own
    /// meanwhile is a crash at its exit time (unless that crash was seen already), health is
    /// as Docker has it now, and containers gone meanwhile are forgotten. An exit by SIGINT,
    /// SIGKILL or SIGTERM (130, 137, 143) without an OOM is taken as asked for: a stop leaves
    /// no other trace once its events are missed.
    /// Whether the containers have been listed since the operator started.
    pub fn listed(&self) -> bool {
        self.listed
    }

    pub fn relist(&mut self, states: &[ContainerState], now: Timestamp) {
        self.listed = true;
        let present: std::collections::HashSet<&str> =
            states.iter().map(|s| s.id.as_str()).collect();
        self.containers
            .retain(|id, _| present.contains(id.as_str()));
        for state in states {
            let container = self.containers.entry(state.id.clone()).or_default();
            container.name = state.name.clone();
            container.labels = state.labels.clone();
            container.unhealthy = state.unhealthy && state.running;
            let crashed = !state.running
                && (state.oom_killed || !matches!(state.exit_code, 0 | 130 | 137 | 143));
            let Some(finished) = state.finished_at.filter(|_| crashed) else {
                continue;
            };
            let seen = container
                .crashes
                .iter()
                .any(|(t, _)| t.duration_since(finished).abs() <= SignedDuration::from_secs(2));
            if seen || now.duration_since(finished) > KEPT_FOR {
                continue;
            }
            let what = if state.oom_killed {
                format!("OOM-killed (exit code {})", state.exit_code)
            } else {
                format!("exited with code {}", state.exit_code)
            };
            let at = container
                .crashes
                .iter()
                .position(|(t, _)| *t > finished)
                .unwrap_or(container.crashes.len());
            container.crashes.insert(at, (finished, what));
        }
    }

    /// The containers `selection` selects whose condition holds at `now`, and when the time
    /// alone next changes that (the newest crash leaving the window).
    pub fn evaluate(
        &self,
        selection: &Selection,
        restarts: u32,
        window: Duration,
        now: Timestamp,
    ) -> Found {
        let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
        let mut found = Found::default();
        let mut containers: Vec<&Container> = self
            .containers
            .values()
            .filter(|c| selection.selects(&c.name, &c.labels))
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        for container in containers {
            let recent: Vec<&(Timestamp, String)> = container
                .crashes
                .iter()
                .filter(|(t, _)| now.duration_since(*t) < window)
                .collect();
            let message = match recent.last() {
                Some(_) if recent.len() >= restarts as usize => Some(format!(
                    "crash loop: {} crashes within {}; last {}",
                    recent.len(),
                    human(window),
                    recent.last().map_or("", |(_, what)| what.as_str())
                )),
                Some((_, what)) => Some(what.clone()),
                None if container.unhealthy => Some("health check failing".to_owned()),
                None => None,
            };
            if let Some((newest, _)) = recent.last()
                && let Ok(leaves) = newest.checked_add(window)
            {
                found.changes_at = Some(found.changes_at.map_or(leaves, |c| c.min(leaves)));
            }
            if let Some(message) = message {
                let message = if container.unhealthy && !recent.is_empty() {
                    format!("{message}; health check failing")
                } else {
                    message
                };
                found.observed.push(Observed {
                    subject: container.name.clone(),
                    message,
                    labels: BTreeMap::from([("container".to_owned(), container.name.clone())]),
                });
            }
        }
        found
    }
}

fn human(d: SignedDuration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 && s >= 3600 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn event(action: &str, name: &str, exit: Option<i64>) -> ContainerEvent {
        ContainerEvent {
            action: action.to_owned(),
            container_id: format!("id-{name}"),
            container_name: name.to_owned(),
            labels: BTreeMap::from([("app".to_owned(), "shop".to_owned())]),
            exit_code: exit,
        }
    }

    fn every() -> Selection {
        Selection::default()
    }

    const WINDOW: Duration = Duration::from_secs(600);

    fn subjects(found: &Found) -> Vec<(&str, &str)> {
        found
            .observed
            .iter()
            .map(|o| (o.subject.as_str(), o.message.as_str()))
            .collect()
    }

    #[test]
    fn an_exit_nobody_asked_for_is_a_crash_and_a_stop_is_not() {
        let mut crashes = Crashes::default();
        crashes.observe(&event("start", "api", None), at(0));
        assert!(
            crashes
                .observe(&event("die", "api", Some(1)), at(5))
                .is_some()
        );
        // docker stop: kill, then a die with 143, then stop.
        crashes.observe(&event("start", "worker", None), at(0));
        crashes.observe(&event("kill", "worker", None), at(6));
        assert!(
            crashes
                .observe(&event("die", "worker", Some(143)), at(7))
                .is_none()
        );
        // A clean exit is no crash either.
        assert!(
            crashes
                .observe(&event("die", "job", Some(0)), at(8))
                .is_none()
        );
        let found = crashes.evaluate(&every(), 3, WINDOW, at(10));
        assert_eq!(subjects(&found), [("api", "exited with code 1")]);
        // The crash holds for the window, then resolves by time alone.
        assert_eq!(found.changes_at, Some(at(605)));
        assert!(
            crashes
                .evaluate(&every(), 3, WINDOW, at(605))
                .observed
                .is_empty()
        );
    }

    #[test]
    fn an_oom_kill_is_a_crash_whatever_its_exit_code() {
        let mut crashes = Crashes::default();
        crashes.observe(&event("oom", "api", None), at(1));
        assert!(
            crashes
                .observe(&event("die", "api", Some(137)), at(1))
                .is_some()
        );
        let found = crashes.evaluate(&every(), 3, WINDOW, at(2));
        assert_eq!(subjects(&found), [("api", "OOM-killed (exit code 137)")]);
    }

    #[test]
    fn a_restart_loop_is_one_alert_that_says_crash_loop() {
        let mut crashes = Crashes::default();
        for i in 0..5 {
            crashes.observe(&event("start", "api", None), at(i * 10));
            crashes.observe(&event("die", "api", Some(2)), at(i * 10 + 1));
        }
        let found = crashes.evaluate(&every(), 3, WINDOW, at(60));
        assert_eq!(found.observed.len(), 1);
        assert_eq!(
            found.observed[0].message,
            "crash loop: 5 crashes within 10m; last exited with code 2"
        );
        // Below `restarts`, the last crash is the value.
        let found = crashes.evaluate(&every(), 10, WINDOW, at(60));
        assert_eq!(found.observed[0].message, "exited with code 2");
    }

    #[test]
    fn unhealthy_holds_until_healthy_and_removed_containers_are_forgotten() {
        let mut crashes = Crashes::default();
        assert!(
            crashes
                .observe(&event("health_status: unhealthy", "db", None), at(0))
                .is_some()
        );
        assert!(
            crashes
                .observe(&event("health_status: unhealthy", "db", None), at(1))
                .is_none(),
            "no change, nothing to evaluate"
        );
        let found = crashes.evaluate(&every(), 3, WINDOW, at(2));
        assert_eq!(subjects(&found), [("db", "health check failing")]);
        assert!(
            crashes
                .observe(&event("health_status: healthy", "db", None), at(3))
                .is_some()
        );
        assert!(
            crashes
                .evaluate(&every(), 3, WINDOW, at(4))
                .observed
                .is_empty()
        );
        crashes.observe(&event("die", "db", Some(1)), at(5));
        crashes.observe(&event("destroy", "db", None), at(6));
        assert!(
            crashes
                .evaluate(&every(), 3, WINDOW, at(7))
                .observed
                .is_empty()
        );
    }

    fn state(name: &str, exit: i64, finished: i64) -> ContainerState {
        ContainerState {
            id: format!("id-{name}"),
            name: name.to_owned(),
            exit_code: exit,
            finished_at: Some(at(finished)),
            ..ContainerState::default()
        }
    }

    #[test]
    fn a_relist_finds_the_crashes_the_stream_missed_and_counts_none_twice() {
        let mut crashes = Crashes::default();
        // Seen by the stream at 10 s; gone meanwhile: forgotten.
        crashes.observe(&event("die", "api", Some(1)), at(10));
        crashes.observe(&event("die", "gone", Some(1)), at(10));
        crashes.relist(
            &[
                state("api", 1, 10),
                state("missed", 2, 20),
                state("stopped", 143, 20),
                ContainerState {
                    oom_killed: true,
                    ..state("oom", 137, 21)
                },
                ContainerState {
                    running: true,
                    unhealthy: true,
                    finished_at: None,
                    ..state("sick", 0, 0)
                },
            ],
            at(30),
        );
        let found = crashes.evaluate(&every(), 3, WINDOW, at(31));
        assert_eq!(
            subjects(&found),
            [
                ("api", "exited with code 1"),
                ("missed", "exited with code 2"),
                ("oom", "OOM-killed (exit code 137)"),
                ("sick", "health check failing"),
            ]
        );
        // The same exit again (another reconnect) is not a second crash.
        crashes.relist(&[state("api", 1, 10)], at(40));
        assert_eq!(
            crashes.evaluate(&every(), 2, WINDOW, at(41)).observed[0].message,
            "exited with code 1"
        );
    }

    #[test]
    fn a_rule_sees_only_the_containers_it_selects() {
        let mut crashes = Crashes::default();
        crashes.observe(&event("die", "api", Some(1)), at(0));
        crashes.observe(&event("die", "worker", Some(1)), at(0));
        let named = Selection {
            names: vec!["worker".into()],
            ..Selection::default()
        };
        assert_eq!(
            subjects(&crashes.evaluate(&named, 3, WINDOW, at(1)))[0].0,
            "worker"
        );
        let labelled = Selection {
            selector: BTreeMap::from([("app".into(), "other".into())]),
            ..Selection::default()
        };
        assert!(
            crashes
                .evaluate(&labelled, 3, WINDOW, at(1))
                .observed
                .is_empty()
        );
        assert_eq!(
            crashes.evaluate(&every(), 3, WINDOW, at(1)).observed.len(),
            2
        );
    }
}
