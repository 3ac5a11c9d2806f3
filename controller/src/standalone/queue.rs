//! The per-object work queue of the standalone runtime: when each object is next due. An
//! object is queued at most once, at its earliest time, so a burst of changes to one object
//! costs one reconcile; objects being reconciled stay queued until they are free. Separate
//! from the loop so this bookkeeping is tested without a store or reconcilers.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::sync::Key;

/// When each queued object is due; an object is queued at most once, at its earliest time.
#[derive(Debug, Default)]
pub(super) struct Queue {
    due: BTreeMap<Key, Instant>,
}

impl Queue {
    pub(super) fn at(&mut self, key: Key, when: Instant) {
        let entry = self.due.entry(key).or_insert(when);
        *entry = (*entry).min(when);
    }

    /// The earliest time an object that `ready` accepts is due.
    pub(super) fn next_due(&self, ready: impl Fn(&Key) -> bool) -> Option<Instant> {
        self.due
            .iter()
            .filter(|(k, _)| ready(k))
            .map(|(_, at)| *at)
            .min()
    }

    /// Takes at most `limit` due objects that `ready` accepts.
    pub(super) fn pop_due(
        &mut self,
        now: Instant,
        limit: usize,
        ready: impl Fn(&Key) -> bool,
    ) -> Vec<Key> {
        let due: Vec<Key> = self
            .due
            .iter()
            .filter(|(k, at)| **at <= now && ready(k))
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for key in &due {
            self.due.remove(key);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(name: &str) -> Key {
        Key {
            kind: "AlertChannel".to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn the_queue_keeps_each_object_once_at_its_earliest_time() {
        let now = Instant::now();
        let mut queue = Queue::default();
        queue.at(key("a"), now + Duration::from_secs(10));
        queue.at(key("a"), now + Duration::from_secs(1));
        queue.at(key("a"), now + Duration::from_secs(5));
        queue.at(key("b"), now + Duration::from_secs(20));
        let any = |_: &Key| true;
        assert_eq!(queue.next_due(any), Some(now + Duration::from_secs(1)));
        assert!(queue.pop_due(now, 10, any).is_empty());
        assert_eq!(
            queue.pop_due(now + Duration::from_secs(1), 10, any),
            [key("a")]
        );
        // A running object stays queued until it is free; the limit bounds what is taken.
        queue.at(key("c"), now);
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
}
