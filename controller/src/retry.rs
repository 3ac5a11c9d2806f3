//! Why something failed, and when to try again: one schedule per failure category, used by
//! both runtimes around every reconcile, by AlertChannel deliveries and by ACME issuance.
//!
//! A schedule is "first delay, doubling to a cap". The first delay says what the cause is
//! likely to be: an API hiccup passes within a second, an unreachable endpoint within seconds,
//! a setting a person must fix takes longer. ACME servers limit failed validations per hour,
//! so issuance starts at 30 s and is capped at 6 hours. Written here rather than taken from
//! `backon`: those crates drive a retry loop around one future, while here the delay is only
//! computed (from a count the runtime keeps per object, or one the object's status carries),
//! and the waiting is the runtime's queue.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The low-cardinality cause of a failure: the metrics' `category` label, the key of the
/// backoff schedule, and a hint in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// The Kubernetes API failed or refused a request.
    Kubernetes,
    /// The state database failed.
    State,
    /// An endpoint (a webhook, the Docker engine, an SMTP server) could not be reached.
    Unreachable,
    /// An endpoint did not answer in time.
    Timeout,
    /// The Docker engine refused a request or lacks something asked for.
    Docker,
    /// A referenced Secret is missing or unusable.
    Secret,
    /// A setting is unusable as written: a person must change it.
    Config,
    /// The object cannot be read by this version.
    Invalid,
    /// The other side refused what was sent (nginx a configuration, an SMTP server a message).
    Rejected,
    /// The upstream a Proxy names is not there (yet).
    Upstream,
    /// A certificate could not be issued by the ACME server.
    Acme,
    /// The finalizer could not be handled.
    Finalizer,
    /// A fault of InfraPilot's own (a task stopped).
    Internal,
}

impl Category {
    pub const ALL: [Category; 13] = [
        Category::Kubernetes,
        Category::State,
        Category::Unreachable,
        Category::Timeout,
        Category::Docker,
        Category::Secret,
        Category::Config,
        Category::Invalid,
        Category::Rejected,
        Category::Upstream,
        Category::Acme,
        Category::Finalizer,
        Category::Internal,
    ];

    /// The label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Kubernetes => "kubernetes",
            Category::State => "state",
            Category::Unreachable => "unreachable",
            Category::Timeout => "timeout",
            Category::Docker => "docker",
            Category::Secret => "secret",
            Category::Config => "config",
            Category::Invalid => "invalid",
            Category::Rejected => "rejected",
            Category::Upstream => "upstream",
            Category::Acme => "acme",
            Category::Finalizer => "finalizer",
            Category::Internal => "internal",
        }
    }

    /// When to try again after failures of this category.
    pub fn schedule(self) -> Schedule {
        let seconds = Duration::from_secs;
        match self {
            Category::Kubernetes | Category::State | Category::Finalizer => Schedule {
                first: seconds(1),
                cap: seconds(600),
            },
            Category::Unreachable | Category::Timeout => Schedule {
                first: seconds(5),
                cap: seconds(600),
            },
            Category::Acme => Schedule {
                first: seconds(30),
                cap: seconds(6 * 3600),
            },
            Category::Docker
            | Category::Secret
            | Category::Config
            | Category::Invalid
            | Category::Rejected
            | Category::Upstream
            | Category::Internal => Schedule {
                first: seconds(15),
                cap: seconds(600),
            },
        }
    }

    /// The delay after `failures` failures of this category in a row.
    pub fn delay(self, failures: u32) -> Duration {
        self.schedule().delay(failures)
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exponential backoff: `first` after one failure, doubling with each further failure, never
/// more than `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub first: Duration,
    pub cap: Duration,
}

impl Schedule {
    /// The delay after `failures` failures in a row (0 and 1 both give `first`).
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        self.first.saturating_mul(1u32 << exponent).min(self.cap)
    }
}

/// Failures in a row per object (keyed by uid), for the runtimes' backoff. An object is
/// forgotten once it reconciles cleanly.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Counts one more failure of the object and returns the delay before the next attempt.
    pub fn next(&self, uid: &str, category: Category) -> Duration {
        let failures = match self.failures.lock() {
            Ok(mut map) => {
                let count = map.entry(uid.to_owned()).or_default();
                *count = count.saturating_add(1);
                *count
            }
            Err(_) => 1,
        };
        category.delay(failures)
    }

    pub fn reset(&self, uid: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_schedule_starts_by_its_category_doubles_and_is_capped() {
        let s = Duration::from_secs;
        assert_eq!(Category::Kubernetes.delay(1), s(1));
        assert_eq!(Category::Kubernetes.delay(3), s(4));
        assert_eq!(Category::Unreachable.delay(0), s(5));
        assert_eq!(Category::Unreachable.delay(1), s(5));
        assert_eq!(Category::Timeout.delay(2), s(10));
        assert_eq!(Category::Secret.delay(2), s(30));
        assert_eq!(Category::Secret.delay(40), s(600));
        assert_eq!(Category::Acme.delay(1), s(30));
        assert_eq!(Category::Acme.delay(3), s(120));
        assert_eq!(Category::Acme.delay(30), s(6 * 3600));
        assert_eq!(Category::Acme.delay(u32::MAX), s(6 * 3600));
    }

    #[test]
    fn backoff_counts_per_object_and_forgets_on_success() {
        let backoff = Backoff::default();
        let s = Duration::from_secs;
        assert_eq!(backoff.next("a", Category::Unreachable), s(5));
        assert_eq!(backoff.next("a", Category::Unreachable), s(10));
        assert_eq!(backoff.next("b", Category::Unreachable), s(5));
        // The count is the object's, whatever the category of each failure.
        assert_eq!(backoff.next("a", Category::Kubernetes), s(4));
        backoff.reset("a");
        assert_eq!(backoff.next("a", Category::Unreachable), s(5));
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::BTreeSet<_> =
            Category::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), Category::ALL.len());
    }
}
