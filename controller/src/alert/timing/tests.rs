//! Each timing field pinned on a stepped clock: the rig evaluates at given seconds after a
//! fixed origin and delivers what is owed, successfully unless a channel is set to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use super::*;

const ORIGIN: i64 = 1_800_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(ORIGIN + secs).unwrap()
}

fn timing() -> Timing {
    Timing {
        for_: Duration::ZERO,
        keep_firing_for: Duration::ZERO,
        group_wait: Duration::ZERO,
        repeat_interval: Duration::from_secs(4 * 3600),
        send_resolved: true,
        silenced_until: None,
    }
}

fn seen(subjects: &[&str]) -> Vec<Observed> {
    subjects
        .iter()
        .map(|s| Observed {
            subject: (*s).to_owned(),
            message: format!("{s} crashed"),
            labels: BTreeMap::from([("container".to_owned(), (*s).to_owned())]),
        })
        .collect()
}

/// What one channel was sent at one evaluation: firing subjects, resolved subjects.
#[derive(Debug, PartialEq)]
struct Sent {
    channel: String,
    firing: Vec<String>,
    resolved: Vec<String>,
}

struct Rig {
    timing: Timing,
    ledger: Ledger,
    channels: Vec<String>,
    failing: BTreeSet<String>,
    wake_at: Option<Timestamp>,
}

impl Rig {
    fn new(timing: Timing) -> Self {
        Self {
            timing,
            ledger: Ledger::default(),
            channels: vec!["mail".to_owned()],
            failing: BTreeSet::new(),
            wake_at: None,
        }
    }

    fn eval(&mut self, observed: &[&str], secs: i64) -> Vec<Sent> {
        let now = at(secs);
        let step = step(
            &self.timing,
            &self.ledger,
            &seen(observed),
            &self.channels,
            now,
        );
        self.ledger = step.ledger;
        let mut sent = Vec::new();
        for n in step.notifications {
            if self.failing.contains(&n.channel) {
                self.ledger
                    .failed(&n.channel, "refused".into(), Duration::from_secs(5), now);
                continue;
            }
            self.ledger.delivered(&n, now);
            sent.push(Sent {
                channel: n.channel.clone(),
                firing: n.firing.iter().map(|a| a.subject.clone()).collect(),
                resolved: n.resolved.iter().map(|r| r.subject.clone()).collect(),
            });
        }
        self.wake_at = self.ledger.wake_at(step.wake_at, now);
        sent
    }

    fn wake_in(&self) -> Option<i64> {
        self.wake_at.map(|w| w.as_second() - ORIGIN)
    }
}

fn sent(channel: &str, firing: &[&str], resolved: &[&str]) -> Sent {
    Sent {
        channel: channel.to_owned(),
        firing: firing.iter().map(|s| (*s).to_owned()).collect(),
        resolved: resolved.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn for_zero_fires_and_notifies_at_once() {
    let mut rig = Rig::new(timing());
    assert_eq!(rig.eval(&["api"], 0), vec![sent("mail", &["api"], &[])]);
    assert_eq!(rig.ledger.state(), AlertState::Firing);
    // Nothing new: nothing sent, and only the repeat is due.
    assert_eq!(rig.eval(&["api"], 1), vec![]);
    assert_eq!(rig.wake_in(), Some(4 * 3600));
}

#[test]
fn for_keeps_an_alert_pending_until_it_elapses() {
    let mut rig = Rig::new(Timing {
        for_: Duration::from_secs(60),
        ..timing()
    });
    assert_eq!(rig.eval(&["api"], 0), vec![]);
    assert_eq!(rig.ledger.state(), AlertState::Pending);
    assert_eq!(rig.wake_in(), Some(60));
    assert_eq!(rig.eval(&["api"], 59), vec![]);
    assert_eq!(rig.ledger.active[0].state, AlertState::Pending);
    assert_eq!(rig.eval(&["api"], 60), vec![sent("mail", &["api"], &[])]);
    assert_eq!(rig.ledger.active[0].state, AlertState::Firing);
    assert_eq!(rig.ledger.active[0].since.0, at(0));
}

#[test]
fn a_pending_alert_that_clears_is_forgotten_without_a_word() {
    let mut rig = Rig::new(Timing {
        for_: Duration::from_secs(60),
        ..timing()
    });
    rig.eval(&["api"], 0);
    assert_eq!(rig.eval(&[], 30), vec![]);
    assert_eq!(rig.ledger.state(), AlertState::Inactive);
    assert!(rig.ledger.active.is_empty() && rig.ledger.resolved.is_empty());
    // Holding again starts `for` afresh.
    rig.eval(&["api"], 40);
    assert_eq!(rig.eval(&["api"], 90), vec![]);
    assert_eq!(rig.eval(&["api"], 100), vec![sent("mail", &["api"], &[])]);
}

#[test]
fn group_wait_gathers_alerts_that_fire_together() {
    let mut rig = Rig::new(Timing {
        group_wait: Duration::from_secs(30),
        ..timing()
    });
    assert_eq!(rig.eval(&["api"], 0), vec![]);
    assert_eq!(rig.wake_in(), Some(30));
    assert_eq!(rig.eval(&["api", "worker"], 10), vec![]);
    assert_eq!(rig.eval(&["api", "worker"], 29), vec![]);
    assert_eq!(
        rig.eval(&["api", "worker"], 30),
        vec![sent("mail", &["api", "worker"], &[])]
    );
    // A later alert waits groupWait from its own firing, and the group is sent whole.
    assert_eq!(rig.eval(&["api", "db", "worker"], 100), vec![]);
    assert_eq!(
        rig.eval(&["api", "db", "worker"], 130),
        vec![sent("mail", &["api", "db", "worker"], &[])]
    );
}

#[test]
fn repeat_interval_tells_again_while_firing() {
    let mut rig = Rig::new(Timing {
        repeat_interval: Duration::from_secs(3600),
        ..timing()
    });
    rig.eval(&["api"], 0);
    assert_eq!(rig.eval(&["api"], 3599), vec![]);
    assert_eq!(rig.eval(&["api"], 3600), vec![sent("mail", &["api"], &[])]);
    assert_eq!(rig.wake_in(), Some(7200));
    assert_eq!(rig.eval(&["api"], 5000), vec![]);
}

#[test]
fn keep_firing_for_rides_out_a_flap_and_then_resolves() {
    let mut rig = Rig::new(Timing {
        keep_firing_for: Duration::from_secs(120),
        ..timing()
    });
    rig.eval(&["api"], 0);
    // Cleared at 10: still firing until 130.
    assert_eq!(rig.eval(&[], 10), vec![]);
    assert_eq!(rig.ledger.state(), AlertState::Firing);
    assert_eq!(rig.wake_in(), Some(130));
    // It holds again at 60: the clearing is forgotten, nothing is sent.
    assert_eq!(rig.eval(&["api"], 60), vec![]);
    assert_eq!(rig.ledger.active[0].cleared_at, None);
    // Cleared at 70: resolves at 190, and the resolution is sent.
    assert_eq!(rig.eval(&[], 70), vec![]);
    assert_eq!(rig.eval(&[], 189), vec![]);
    assert_eq!(rig.eval(&[], 190), vec![sent("mail", &[], &["api"])]);
    assert_eq!(rig.ledger.state(), AlertState::Inactive);
    assert!(rig.ledger.resolved.is_empty());
    assert!(rig.ledger.channels[0].notified.is_empty());
}

#[test]
fn without_send_resolved_a_resolution_is_not_sent() {
    let mut rig = Rig::new(Timing {
        send_resolved: false,
        ..timing()
    });
    rig.eval(&["api"], 0);
    assert_eq!(rig.eval(&[], 10), vec![]);
    assert!(rig.ledger.resolved.is_empty());
    assert!(rig.ledger.channels[0].notified.is_empty());
    // Firing again is news again.
    assert_eq!(rig.eval(&["api"], 20), vec![sent("mail", &["api"], &[])]);
}

#[test]
fn a_resolution_goes_only_to_channels_told_of_the_firing() {
    let mut rig = Rig::new(timing());
    rig.eval(&["api"], 0);
    rig.channels.push("hook".to_owned());
    // The new channel is told what fires; the old one already knows.
    assert_eq!(rig.eval(&["api"], 5), vec![sent("hook", &["api"], &[])]);
    rig.channels.push("late".to_owned());
    assert_eq!(
        rig.eval(&[], 10),
        vec![sent("mail", &[], &["api"]), sent("hook", &[], &["api"])]
    );
}

#[test]
fn silenced_until_evaluates_but_sends_nothing_until_it_ends() {
    let mut rig = Rig::new(Timing {
        silenced_until: Some(at(600)),
        ..timing()
    });
    assert_eq!(rig.eval(&["api"], 0), vec![]);
    assert_eq!(rig.ledger.state(), AlertState::Firing);
    assert_eq!(rig.wake_in(), Some(600));
    assert_eq!(rig.eval(&["api", "worker"], 300), vec![]);
    // The silence ends: what is owed goes out, once.
    assert_eq!(
        rig.eval(&["api", "worker"], 600),
        vec![sent("mail", &["api", "worker"], &[])]
    );
    assert_eq!(rig.eval(&["api", "worker"], 601), vec![]);
}

#[test]
fn a_failing_channel_waits_for_its_retry_and_holds_up_no_other() {
    let mut rig = Rig::new(timing());
    rig.channels.push("hook".to_owned());
    rig.failing.insert("hook".to_owned());
    assert_eq!(rig.eval(&["api"], 0), vec![sent("mail", &["api"], &[])]);
    let hook = &rig.ledger.channels[1];
    assert_eq!(
        (hook.failures, hook.retry_at.as_ref().map(|t| t.0)),
        (1, Some(at(5)))
    );
    assert_eq!(hook.last_failure.as_deref(), Some("refused"));
    assert_eq!(rig.wake_in(), Some(5));
    assert_eq!(rig.eval(&["api"], 3), vec![]);
    rig.failing.clear();
    assert_eq!(rig.eval(&["api"], 5), vec![sent("hook", &["api"], &[])]);
    let hook = &rig.ledger.channels[1];
    assert_eq!((hook.failures, hook.retry_at.clone()), (0, None));
}

#[test]
fn a_restart_from_the_ledger_sends_nothing_twice() {
    let mut rig = Rig::new(Timing {
        group_wait: Duration::from_secs(10),
        ..timing()
    });
    rig.eval(&["api"], 0);
    rig.eval(&["api"], 10);
    // The ledger round-trips through the status as JSON; a new operator reads it back.
    let json = serde_json::to_string(&(
        &rig.ledger.active,
        &rig.ledger.resolved,
        &rig.ledger.channels,
    ))
    .unwrap();
    let (active, resolved, channels) = serde_json::from_str(&json).unwrap();
    let mut restarted = Rig::new(rig.timing.clone());
    restarted.ledger = Ledger {
        active,
        resolved,
        channels,
    };
    assert_eq!(restarted.eval(&["api"], 20), vec![]);
    assert_eq!(restarted.ledger.state(), AlertState::Firing);
    assert_eq!(restarted.ledger.active[0].since.0, at(0));
    assert_eq!(restarted.eval(&[], 30), vec![]);
    assert_eq!(restarted.eval(&[], 40), vec![sent("mail", &[], &["api"])]);
}

#[test]
fn a_subject_that_fires_again_before_its_resolution_is_sent_stays_one_alert() {
    let mut rig = Rig::new(Timing {
        group_wait: Duration::from_secs(30),
        ..timing()
    });
    rig.eval(&["api"], 0);
    rig.eval(&["api"], 30);
    rig.eval(&[], 40);
    assert_eq!(rig.ledger.resolved.len(), 1);
    // Fires again at 50, before the resolution was due (70): the receiver still thinks it
    // fires, so neither a resolution nor a new firing is sent.
    assert_eq!(rig.eval(&["api"], 50), vec![]);
    assert!(rig.ledger.resolved.is_empty());
    assert_eq!(rig.eval(&["api"], 80), vec![]);
}
