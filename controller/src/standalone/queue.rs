//! The per-object work queue of the standalone runtime: when each object is next due. An
//! object is queued at most once, at its earliest time, so a burst of changes to one object
//! costs one reconcile; objects being reconciled stay queued until they are free. Separate
//! from the loop so this bookkeeping is tested without a store or reconcilers.
//!
//! Due objects are served earliest first, and those queued for a reason (a manifest changed, a
//! related object changed, a retry came due) before routine work (the resync, which queues
//! every object): with thousands of objects a resync is a long backlog, and a change must not
//! wait behind it. controller-runtime's priority queue makes the same distinction. Serving in
//! key order instead let one kind starve the others: at 10,000 objects and a short resync,
//! Proxies were never reached behind AlertChannels queued again at every resync.

use std::collections::{BTreeSet, HashMap};

use tokio::time::Instant;

use super::sync::Key;

/// Why an object is queued; earlier variants are served first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Priority {
    /// Something happened that concerns the object: its manifest or a related object changed,
    /// or a retry or requeue it asked for came due.
    Change,
    /// A look at every object (the resync, the start): nothing is known to have changed.
    Routine,
}

/// When each queued object is due; an object is queued at most once, at its earliest time and
/// its most urgent priority.
#[derive(Debug, Default)]
pub(super) struct Queue {
    queued: HashMap<Key, (Priority, Instant, u64)>,
    /// One ordered set per priority: (due, arrival, key). Arrival breaks ties first come,
    /// first served.
    change: BTreeSet<(Instant, u64, Key)>,
    routine: BTreeSet<(Instant, u64, Key)>,
    arrivals: u64,
}

impl Queue {
    pub(super) fn at(&mut self, key: Key, when: Instant, priority: Priority) {
        let (priority, when, arrival) = match self.queued.get(&key) {
            Some(&(was, at, arrival)) => {
                let wanted = (was.min(priority), at.min(when));
                if wanted == (was, at) {
                    return;
                }
                self.set(was).remove(&(at, arrival, key.clone()));
                (wanted.0, wanted.1, arrival)
            }
            None => {
                self.arrivals += 1;
                (priority, when, self.arrivals)
            }
        };
        self.set(priority).insert((when, arrival, key.clone()));
        self.queued.insert(key, (priority, when, arrival));
    }

    /// Queues each of `keys` at `when`, in their order.
    pub(super) fn all(&mut self, keys: Vec<Key>, when: Instant, priority: Priority) {
        for key in keys {
            self.at(key, when, priority);
        }
    }

    fn set(&mut self, priority: Priority) -> &mut BTreeSet<(Instant, u64, Key)> {
        match priority {
            Priority::Change => &mut self.change,
            Priority::Routine => &mut self.routine,
        }
    }

    /// The earliest time an object that `ready` accepts is due.
    pub(super) fn next_due(&self, ready: impl Fn(&Key) -> bool) -> Option<Instant> {
        // Objects not ready are the few being reconciled: skipping them is cheap.
        let first = |set: &BTreeSet<(Instant, u64, Key)>| {
            set.iter()
                .find(|(_, _, key)| ready(key))
                .map(|(at, _, _)| *at)
        };
        first(&self.change)
            .into_iter()
            .chain(first(&self.routine))
            .min()
    }

    /// Takes at most `limit` due objects that `ready` accepts, changes first, then routine
    /// work, each earliest first.
    pub(super) fn pop_due(
        &mut self,
        now: Instant,
        limit: usize,
        ready: impl Fn(&Key) -> bool,
    ) -> Vec<Key> {
        let mut taken = Vec::new();
        for set in [&self.change, &self.routine] {
            taken.extend(
                set.iter()
                    .take_while(|(at, _, _)| *at <= now)
                    .filter(|(_, _, key)| ready(key))
                    .take(limit - taken.len())
                    .cloned(),
            );
        }
        taken
            .into_iter()
            .map(|entry| {
                let (_, _, key) = &entry;
                let (priority, _, _) = self.queued.remove(key).expect("queued keys are indexed");
                self.set(priority).remove(&entry);
                entry.2
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::sync::channel_key as key;
    use super::*;

    fn of_kind(kind: &str, name: &str) -> Key {
        Key {
            kind: kind.to_owned(),
            ..key(name)
        }
    }

    #[test]
    fn the_queue_keeps_each_object_once_at_its_earliest_time() {
        let now = Instant::now();
        let mut queue = Queue::default();
        let change = Priority::Change;
        queue.at(key("a"), now + Duration::from_secs(10), change);
        queue.at(key("a"), now + Duration::from_secs(1), change);
        queue.at(key("a"), now + Duration::from_secs(5), change);
        queue.at(key("b"), now + Duration::from_secs(20), change);
        let any = |_: &Key| true;
        assert_eq!(queue.next_due(any), Some(now + Duration::from_secs(1)));
        assert!(queue.pop_due(now, 10, any).is_empty());
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(1), 10, any),
            [key("a")]
        );
        // A running object stays queued until it is free; the limit bounds what is taken.
        queue.at(key("c"), now, change);
        let not_b = |k: &Key| k.name != "b";
        assert_eq!(queue.next_due(not_b), Some(now));
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(60), 1, not_b),
            [key("c")]
        );
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(60), 10, any),
            [key("b")]
        );
        assert_eq!(queue.next_due(any), None);
    }

    #[test]
    fn due_objects_are_served_earliest_first_whatever_their_kind() {
        let now = Instant::now();
        let mut queue = Queue::default();
        // Queued in this order; key order would serve the AlertChannels first.
        queue.at(of_kind("Proxy", "p"), now, Priority::Routine);
        queue.at(key("a"), now, Priority::Routine);
        queue.at(
            of_kind("Proxy", "q"),
            now + Duration::from_secs(1),
            Priority::Routine,
        );
        queue.at(key("b"), now + Duration::from_secs(2), Priority::Routine);
        let any = |_: &Key| true;
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(5), 3, any),
            [of_kind("Proxy", "p"), key("a"), of_kind("Proxy", "q")]
        );
    }

    #[test]
    fn a_change_is_served_before_the_routine_backlog_due_before_it() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut queue = Queue::default();
        for name in ["r1", "r2", "r3"] {
            queue.at(key(name), now, Priority::Routine);
        }
        queue.at(key("changed"), later, Priority::Change);
        // Routine work queued again for a change is promoted, keeping its earlier time.
        queue.at(key("r3"), later, Priority::Change);
        let any = |_: &Key| true;
        assert_eq!(
            queue.pop_due(later, 3, any),
            [key("r3"), key("changed"), key("r1")]
        );
        // A routine request for what is queued as a change leaves it a change.
        queue.at(key("c2"), later, Priority::Change);
        queue.at(key("c2"), now, Priority::Routine);
        assert_eq!(queue.pop_due(later, 1, any), [key("c2")]);
        assert_eq!(queue.pop_due(later, 5, any), [key("r2")]);
        assert_eq!(queue.next_due(any), None);
    }
}
