//! Prometheus metrics of the reconcile loops. Labels are the controller and the error
//! category only, never object names: their number stays fixed however many objects exist.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: &'static str,
    category: &'static str,
}

/// The operator's metrics, shared by every controller.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("infrapilot");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by controller and error category",
            failures.clone(),
        );
        // 1 ms to about 65 s: a reconcile that delivers a notification may wait on a timeout.
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 9))
        });
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take, by controller",
            durations.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles, else 0",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
            leader,
        }
    }

    /// Counts one reconcile, and its failure category when it failed.
    pub fn reconciled(
        &self,
        controller: &'static str,
        took: Duration,
        failure: Option<crate::retry::Category>,
    ) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(category) = failure {
            self.failures
                .get_or_create(&FailureLabels {
                    controller,
                    category: category.as_str(),
                })
                .inc();
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition format Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_failures_and_durations_are_exposed_without_object_names() {
        let metrics = Metrics::new();
        metrics.reconciled("alertchannel", Duration::from_millis(3), None);
        metrics.reconciled(
            "alertchannel",
            Duration::from_millis(20),
            Some(crate::retry::Category::Unreachable),
        );
        metrics.set_leader(true);
        let text = metrics.encode();
        assert!(
            text.contains("infrapilot_reconciles_total{controller=\"alertchannel\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "infrapilot_reconcile_failures_total{controller=\"alertchannel\",category=\"unreachable\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "infrapilot_reconcile_duration_seconds_count{controller=\"alertchannel\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("infrapilot_leader 1"), "{text}");
    }
}
