//! Prometheus metrics of the reconcile loops. Labels are the controller and the error
//! category only, never object names: their number stays fixed however many objects exist.
//! The one exception is the alerts gauge, labelled by rule as Prometheus' own `ALERTS` is:
//! rules are few, and a rule's series go when the rule does. It never has container, host or
//! Proxy labels.

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
struct AlertLabels {
    namespace: String,
    rule: String,
    state: &'static str,
}

/// The states an alert is counted in.
pub const ALERT_STATES: [&str; 2] = ["pending", "firing"];

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
    alerts: Family<AlertLabels, Gauge>,
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
        let alerts = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "alerts",
            "Alerts of each AlertRule that are pending or firing, by namespace, rule and state",
            alerts.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
            leader,
            alerts,
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

    /// The rule's alerts in each of [`ALERT_STATES`] (`counts` in that order).
    pub fn set_alerts(&self, namespace: &str, rule: &str, counts: [usize; 2]) {
        for (state, count) in ALERT_STATES.into_iter().zip(counts) {
            let labels = AlertLabels {
                namespace: namespace.to_owned(),
                rule: rule.to_owned(),
                state,
            };
            self.alerts
                .get_or_create(&labels)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The rule is gone: so are its series.
    pub fn remove_alerts(&self, namespace: &str, rule: &str) {
        for state in ALERT_STATES {
            self.alerts.remove(&AlertLabels {
                namespace: namespace.to_owned(),
                rule: rule.to_owned(),
                state,
            });
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

    #[test]
    fn alerts_are_counted_by_rule_and_state_and_go_with_their_rule() {
        let metrics = Metrics::new();
        metrics.set_alerts("shop", "crashes", [1, 2]);
        metrics.set_alerts("shop", "certificates", [0, 1]);
        let text = metrics.encode();
        for line in [
            "infrapilot_alerts{namespace=\"shop\",rule=\"crashes\",state=\"pending\"} 1",
            "infrapilot_alerts{namespace=\"shop\",rule=\"crashes\",state=\"firing\"} 2",
            "infrapilot_alerts{namespace=\"shop\",rule=\"certificates\",state=\"pending\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        metrics.remove_alerts("shop", "crashes");
        let text = metrics.encode();
        assert!(!text.contains("rule=\"crashes\""), "{text}");
        assert!(text.contains("rule=\"certificates\""), "{text}");
    }
}
