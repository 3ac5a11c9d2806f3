//! The AlertRule reconciler, a pipeline: validate (one condition, durations) → observe (the
//! objects the condition reads, the rule's channels) → decide (pure: the condition evaluated,
//! Alertmanager's timing stepped, see [`crate::alert::timing`]) → apply (deliver what is
//! owed, each attempt audited) → status (the alerts and the notification log, so that a
//! restarted operator neither sends twice nor forgets what it owes).
//!
//! The rule comes back when the time alone changes something (`for` elapsing, a group wait,
//! a repeat, a retry, a certificate entering the window), when a TLS Proxy or a
//! BackupValidationPolicy of its namespace changes (the relations below), and on the backoff
//! while one of its channels is missing or not Ready.

mod apply;
mod decide;
mod lists;
#[cfg(test)]
mod tests;
mod traffic;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

pub use decide::validate;

use crate::alert::crashes::{Crashes, Selection};
use crate::api::Kind;
use crate::api::alert::{AlertChannel, AlertRule, AlertRuleStatus, AlertState};
use crate::docker::Docker;
use crate::reconcile::{Applied, Category, Context, Failure, Reconciler, Requeue};
use crate::runtime::objects::{EVERY, Objects, Relation, Selector, Typed};
use crate::runtime::rbac::Rule;
use crate::status::{self, Observation};
use crate::telemetry::Metrics;
use decide::{ChannelProblem, Condition, Outside, Watched};
use traffic::{EdgeTraffic, Reading};

pub const CONTROLLER: &str = "alertrule";

/// The AlertRule reconciler.
pub struct AlertRules {
    objects: Objects,
    lists: lists::Lists,
    docker: Arc<dyn Docker>,
    /// Crashes and health of every container, from Docker's events ([`follow_crashes`]).
    crashes: Arc<Mutex<Crashes>>,
    /// What each containerCrash rule selects, so that an event brings back only its rules.
    crash_rules: Arc<Mutex<BTreeMap<(String, String), Selection>>>,
    /// Where rules are sent to be evaluated again, once the runtime took the triggers. The
    /// first containerCrash rule starts following Docker's events, the first error rule the
    /// edge's output: an operator without such rules makes no Docker request for them.
    follow: Mutex<Option<UnboundedSender<(String, String)>>>,
    following_crashes: AtomicBool,
    following_traffic: AtomicBool,
    /// The edge container's name, whose output holds every Proxy's access log.
    edge: String,
    /// The edge's traffic as counted ([`traffic::follow`]), and a wake-up for the follower
    /// when what the rules watch changes.
    traffic: Arc<Mutex<EdgeTraffic>>,
    traffic_changed: Arc<Notify>,
    /// The alerts gauge on /metrics, and the rule each uid has series for there, so that a
    /// deleted rule's series go with it.
    metrics: Arc<Metrics>,
    shown: Mutex<HashMap<String, (String, String)>>,
}

impl std::fmt::Debug for AlertRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlertRules")
    }
}

impl AlertRules {
    pub fn new(
        objects: Objects,
        docker: Arc<dyn Docker>,
        metrics: Arc<Metrics>,
        edge: String,
    ) -> Self {
        Self {
            objects,
            lists: lists::Lists::default(),
            docker,
            crashes: Arc::default(),
            crash_rules: Arc::default(),
            follow: Mutex::default(),
            following_crashes: AtomicBool::new(false),
            following_traffic: AtomicBool::new(false),
            edge,
            traffic: Arc::default(),
            traffic_changed: Arc::default(),
            metrics,
            shown: Mutex::default(),
        }
    }

    /// The rule's pending and firing alerts, on /metrics.
    fn show(&self, rule: &AlertRule, status: &AlertRuleStatus) {
        let (Some(namespace), Some(name)) = (
            rule.metadata.namespace.as_ref(),
            rule.metadata.name.as_ref(),
        ) else {
            return;
        };
        let uid = crate::runtime::driver::identity(&rule.metadata);
        let count = |state: AlertState| {
            status
                .active_alerts
                .iter()
                .filter(|a| a.state == state)
                .count()
        };
        self.metrics.set_alerts(
            namespace,
            name,
            [count(AlertState::Pending), count(AlertState::Firing)],
        );
        if let Ok(mut shown) = self.shown.lock() {
            shown.insert(uid, (namespace.clone(), name.clone()));
        }
    }

    /// Records what a rule selects (nothing, for a rule of another condition), and starts
    /// following Docker's events with the first containerCrash rule.
    fn watch_crashes(&self, rule: &AlertRule, condition: &Condition) {
        let key = (
            rule.metadata.namespace.clone().unwrap_or_default(),
            rule.metadata.name.clone().unwrap_or_default(),
        );
        let Ok(mut rules) = self.crash_rules.lock() else {
            return;
        };
        match condition {
            Condition::ContainerCrash { selection, .. } => {
                rules.insert(key, selection.clone());
            }
            _ => {
                rules.remove(&key);
                return;
            }
        }
        drop(rules);
        if let Some(triggers) = self.start(&self.following_crashes) {
            tokio::spawn(follow_crashes(
                self.docker.clone(),
                self.crashes.clone(),
                self.crash_rules.clone(),
                triggers,
            ));
        }
    }

    /// The triggers' sender, the first time `started` is asked (once the runtime took them).
    fn start(&self, started: &AtomicBool) -> Option<UnboundedSender<(String, String)>> {
        let sender = self.follow.lock().ok()?.clone()?;
        (!started.swap(true, Ordering::SeqCst)).then_some(sender)
    }

    /// Records the Proxy and span an error rule counts (nothing, for a rule of another
    /// condition), and starts following the edge's output with the first error rule.
    fn watch_traffic(&self, key: (String, String), condition: Option<&Condition>) {
        let watched = condition.and_then(Condition::traffic);
        let starts = watched.is_some();
        let changed = self
            .traffic
            .lock()
            .is_ok_and(|mut traffic| traffic.watch(key, watched));
        if changed {
            self.traffic_changed.notify_one();
        }
        if !starts {
            return;
        }
        if let Some(triggers) = self.start(&self.following_traffic) {
            tokio::spawn(traffic::follow(
                self.docker.clone(),
                self.edge.clone(),
                self.traffic.clone(),
                self.traffic_changed.clone(),
                triggers,
            ));
        }
    }

    /// The objects the condition reads. Fails only when they cannot be listed.
    async fn watched(&self, namespace: &str, condition: &Condition) -> Result<Watched, Failure> {
        Ok(match condition {
            // Only Proxies with TLS have a certificate; the plain ones are left in the store.
            Condition::CertificateExpiry { spec, .. } => Watched {
                proxies: self
                    .named_or_all(namespace, &spec.proxies, &tls_proxies())
                    .await?,
                ..Watched::default()
            },
            Condition::BackupValidationFailed(spec) => Watched {
                policies: self
                    .named_or_all(namespace, &spec.policies, &Selector::everything())
                    .await?,
                ..Watched::default()
            },
            Condition::ContainerCrash { .. }
            | Condition::ErrorRate { .. }
            | Condition::ErrorSpike { .. } => Watched::default(),
        })
    }

    /// The objects of `names` (every one of the namespace when empty), read one by one when
    /// named: a rule on one Proxy of a namespace with thousands reads one. Whole lists are
    /// shared by the rules that ask at once ([`lists`]).
    async fn named_or_all<K: Typed + 'static>(
        &self,
        namespace: &str,
        names: &[String],
        selector: &Selector,
    ) -> Result<Arc<Vec<K>>, Failure> {
        if names.is_empty() {
            return self.lists.list(&self.objects, namespace, selector).await;
        }
        let mut found = Vec::new();
        for name in names {
            found.extend(self.objects.get::<K>(namespace, name).await?);
        }
        Ok(Arc::new(found))
    }

    /// Channels that are missing or not Ready: shown on the rule, which still evaluates (and
    /// notifies the channels that work).
    async fn channel_problems(&self, rule: &AlertRule, namespace: &str) -> Vec<ChannelProblem> {
        let mut problems = Vec::new();
        for name in decide::channels(rule) {
            let problem = match self.objects.get::<AlertChannel>(namespace, &name).await {
                Ok(Some(channel)) => {
                    let status = channel.status.unwrap_or_default();
                    match status.conditions.get(status::READY) {
                        Some(ready) if ready.status == "False" => {
                            Some(("ChannelNotReady", format!("not Ready: {}", ready.message)))
                        }
                        _ => None,
                    }
                }
                Ok(None) => Some(("ChannelNotFound", "does not exist".to_owned())),
                Err(failure) => Some(("ChannelNotReady", failure.message)),
            };
            if let Some((reason, message)) = problem {
                problems.push(ChannelProblem {
                    channel: name,
                    reason,
                    message,
                });
            }
        }
        problems
    }
}

/// The rules of the changed object's namespace (those `every` accepts): which of them read
/// it by name is in their specs, and reading that here would mean a list per change.
fn rules_in_namespace(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["namespace"]
        .as_str()
        .map(|namespace| vec![(namespace.to_owned(), EVERY.to_owned())])
        .unwrap_or_default()
}

fn tls_proxies() -> Selector {
    Selector {
        present: vec!["spec.tls".to_owned()],
        ..Selector::everything()
    }
}

/// A policy concerns backup rules once a run of it has ended: before that it has no failures
/// to count. A thousand new policies writing their first status bring no rule back.
fn policy_with_runs(object: &Value) -> Vec<(String, String)> {
    if object["status"]["lastCompletedRun"].is_object() {
        rules_in_namespace(object)
    } else {
        Vec::new()
    }
}

/// A Proxy concerns certificate rules only when it has TLS: the thousands of plain Proxies of a
/// host never bring a rule back.
fn tls_proxy(object: &Value) -> Vec<(String, String)> {
    if object["spec"]["tls"].is_object() {
        rules_in_namespace(object)
    } else {
        Vec::new()
    }
}

fn watches_certificates(rule: &Value) -> bool {
    rule["spec"]["certificateExpiry"].is_object()
}

fn watches_backups(rule: &Value) -> bool {
    rule["spec"]["backupValidationFailed"].is_object()
}

#[async_trait]
impl Reconciler for AlertRules {
    type Object = AlertRule;
    type Status = AlertRuleStatus;

    const CONTROLLER: &'static str = CONTROLLER;
    // A rule owns nothing outside its object.
    const FINALIZER: Option<&'static str> = None;

    fn status(object: &Self::Object) -> Option<&Self::Status> {
        object.status.as_ref()
    }

    fn set_status(object: &mut Self::Object, status: Self::Status) {
        object.status = Some(status);
    }

    async fn reconcile(&self, rule: &AlertRule, ctx: &Context) -> Applied<Self::Status> {
        let applied = self.evaluate(rule, ctx).await;
        self.show(rule, &applied.status);
        applied
    }

    fn forget(&self, uid: &str) {
        // A rule made again under the same name (a new uid) keeps what it shows.
        let gone = self.shown.lock().ok().and_then(|mut shown| {
            shown
                .remove(uid)
                .filter(|rule| !shown.values().any(|other| other == rule))
        });
        if let Some((namespace, name)) = gone {
            self.metrics.remove_alerts(&namespace, &name);
            // A containerCrash rule's selection goes too: its events would bring back nothing;
            // and an error rule's Proxy, whose counts are dropped when no rule is left on it.
            if let Ok(mut rules) = self.crash_rules.lock() {
                rules.remove(&(namespace.clone(), name.clone()));
            }
            self.watch_traffic((namespace, name), None);
        }
    }

    async fn cleanup(&self, _rule: &AlertRule, _ctx: &Context) -> Result<(), Failure> {
        Ok(())
    }

    fn triggers(&self) -> Option<UnboundedReceiver<(String, String)>> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut follow) = self.follow.lock() {
            *follow = Some(sender);
        }
        Some(receiver)
    }

    const RBAC: &'static [Rule] = &[
        // Notifications go to the rule's channels, with their Secrets.
        Rule::infrapilot(&["alertchannels"], &["get"]),
        Rule::secrets(),
    ];

    fn relations() -> Vec<Relation> {
        vec![
            Relation {
                from: Kind::Proxy,
                map: tls_proxy,
                every: Some(watches_certificates),
            },
            Relation {
                from: Kind::BackupValidationPolicy,
                map: policy_with_runs,
                every: Some(watches_backups),
            },
        ]
    }
}

impl AlertRules {
    /// The pipeline (see the module's comment); [`Reconciler::reconcile`] shows its outcome.
    async fn evaluate(&self, rule: &AlertRule, ctx: &Context) -> Applied<AlertRuleStatus> {
        let now = (ctx.now)();
        let namespace = rule.metadata.namespace.clone().unwrap_or_default();
        let current = rule.status.clone().unwrap_or_default();
        let settings = match validate(&rule.spec, &namespace) {
            Ok(settings) => settings,
            Err(invalid) => {
                let message = format!("{}: {}", invalid.field, invalid.reason);
                return not_ready(rule, current, "InvalidSpec", message, now);
            }
        };
        let watched = match self.watched(&namespace, &settings.condition).await {
            Ok(watched) => watched,
            Err(failure) => {
                return Applied {
                    status: current,
                    requeue: Requeue::OnChange,
                    failure: Some(failure),
                };
            }
        };
        let problems = self.channel_problems(rule, &namespace).await;
        self.watch_crashes(rule, &settings.condition);
        let key = (
            namespace.clone(),
            rule.metadata.name.clone().unwrap_or_default(),
        );
        self.watch_traffic(key, Some(&settings.condition));
        if settings.condition.traffic().is_some() {
            let reading = self.traffic.lock().map(|t| t.reading.clone());
            match reading {
                Ok(Reading::Following) => {}
                // Nothing is known of the traffic before the history is read: the rule keeps
                // what its status says, and the follower brings it back.
                Ok(Reading::NotYet) | Err(_) => {
                    return Applied {
                        status: current,
                        requeue: Requeue::OnChange,
                        failure: None,
                    };
                }
                // Not read: no data is not zero traffic, so the alerts stay as they are.
                Ok(Reading::Failed(why)) => {
                    let message = format!("{why}; alerts keep their state until it can be read");
                    return not_ready(rule, current, "TrafficUnknown", message, now);
                }
            }
        }
        let listed = self.crashes.lock().is_ok_and(|c| c.listed());
        if matches!(settings.condition, Condition::ContainerCrash { .. }) && !listed {
            // Nothing is known of the containers before the first list: the rule keeps what
            // its status says, and the list brings it back.
            return Applied {
                status: current,
                requeue: Requeue::OnChange,
                failure: None,
            };
        }
        let found = {
            let crashes = self.crashes.lock();
            let traffic = self.traffic.lock();
            let none = (Crashes::default(), EdgeTraffic::default());
            let outside = Outside {
                crashes: crashes.as_deref().unwrap_or(&none.0),
                traffic: traffic.as_deref().map_or(&none.1.counts, |t| &t.counts),
            };
            decide::evaluate(&settings.condition, &watched, &outside, now)
        };
        let step = decide::decide(rule, &settings, &found, now);
        let mut ledger = step.ledger;
        let failure = apply::deliver(
            &self.objects,
            rule,
            settings.condition.name(),
            step.notifications,
            &mut ledger,
            ctx,
            now,
        )
        .await;
        // A channel that is missing or not Ready is the rule's failure, retried on the
        // backoff until it is there (channels are not watched: a namespace's rules would all
        // be read again at every channel's status write).
        let failure = failure.or_else(|| {
            problems.first().map(|problem| Failure {
                category: Category::Config,
                message: format!("AlertChannel {}: {}", problem.channel, problem.message),
            })
        });
        let status = decide::status(rule, &settings, &ledger, &problems, now);
        let requeue = match decide::wake_at(step.wake_at, &found, &ledger, now) {
            Some(at) => Requeue::After(
                at.duration_since(now)
                    .try_into()
                    .unwrap_or(std::time::Duration::from_secs(1)),
            ),
            None => Requeue::OnChange,
        };
        Applied {
            status,
            requeue,
            failure,
        }
    }
}

/// The rule's status as it was (its alerts and notification log kept), `Ready=False` with the
/// reason; it comes back when something changes.
fn not_ready(
    rule: &AlertRule,
    current: AlertRuleStatus,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> Applied<AlertRuleStatus> {
    let mut status = AlertRuleStatus {
        observed_generation: rule.metadata.generation,
        ..current
    };
    status::set(
        &mut status.conditions,
        Observation::ready(false, reason, message),
        rule.metadata.generation,
        now,
    );
    Applied {
        status,
        requeue: Requeue::OnChange,
        failure: None,
    }
}

/// Follows Docker's events for the crash rules: each event that changes a container's crashes
/// or health brings back the rules that select it. At the start and whenever the stream comes
/// back, every container's state is listed first (what happened meanwhile), and every crash
/// rule is evaluated again.
async fn follow_crashes(
    docker: Arc<dyn Docker>,
    crashes: Arc<Mutex<Crashes>>,
    rules: Arc<Mutex<BTreeMap<(String, String), Selection>>>,
    triggers: UnboundedSender<(String, String)>,
) {
    use futures::StreamExt;
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        let mut events = docker.events();
        // What happened while not listening (before the first subscription too).
        match docker.container_states().await {
            Ok(states) => {
                if let Ok(mut crashes) = crashes.lock() {
                    crashes.relist(&states, jiff::Timestamp::now());
                }
            }
            Err(error) => tracing::warn!("could not list containers for the crash rules: {error}"),
        }
        let all: Vec<(String, String)> = rules
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        for key in all {
            if triggers.send(key).is_err() {
                return;
            }
        }
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!("Docker events stopped for the crash rules: {error}");
                    break;
                }
            };
            backoff = std::time::Duration::from_millis(500);
            let changed = crashes
                .lock()
                .ok()
                .and_then(|mut c| c.observe(&event, jiff::Timestamp::now()));
            let Some((name, labels)) = changed else {
                continue;
            };
            let concerned: Vec<(String, String)> = rules
                .lock()
                .map(|r| {
                    r.iter()
                        .filter(|(_, selection)| selection.selects(&name, &labels))
                        .map(|(key, _)| key.clone())
                        .collect()
                })
                .unwrap_or_default();
            for key in concerned {
                if triggers.send(key).is_err() {
                    return;
                }
            }
        }
        if triggers.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
    }
}
