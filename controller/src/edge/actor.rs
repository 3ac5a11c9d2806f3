//! The task that owns the edge: its state (what nginx serves, which networks it is on), the
//! loop that answers requests, and the batching that coalesces the changes arriving while one
//! is applied, so a burst of changes costs one or two reloads. Separate from `apply` so the
//! scheduling (when to apply) stays apart from the transaction (how to apply).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::handle::Request;
use super::{EdgeError, EdgeOptions, Served, Wanted};
use crate::audit::{Audit, NewRecord, ObjectRef, Outcome};
use crate::docker::Docker;

/// The controller name in the edge's audit records.
const CONTROLLER: &str = "proxy";
/// The least time between two reloads while changes keep coming.
const RELOAD_SPACING: Duration = Duration::from_millis(750);

/// A Proxy's configuration as nginx serves it.
#[derive(Clone, Debug)]
pub(super) struct Live {
    pub(super) config: String,
    pub(super) networks: Vec<String>,
    pub(super) files: Vec<(String, Vec<u8>)>,
    pub(super) object: Option<ObjectRef>,
}

pub(super) struct Owner {
    pub(super) docker: Arc<dyn Docker>,
    pub(super) options: EdgeOptions,
    pub(super) audit: Arc<dyn Audit>,
    /// The edge container's id once known to run.
    pub(super) container: Option<String>,
    /// Whether `live` was read back from an edge that already ran.
    pub(super) seeded: bool,
    pub(super) live: BTreeMap<String, Live>,
    /// Networks the edge was connected to for Proxies.
    pub(super) attached: BTreeSet<String>,
    /// The resolver file as last written ([`crate::proxy::site::resolver_config`]).
    pub(super) resolver: Option<String>,
    /// Proxies the edge stopped serving on its own (left out of a recreated edge): their
    /// reconciler hears of them at once, rather than at their next recheck.
    pub(super) left_out: mpsc::UnboundedSender<ObjectRef>,
}

/// One batch: what each Proxy wants now (None: removal), and who waits for the answer.
#[derive(Default)]
struct Batch {
    wanted: BTreeMap<String, (Option<Wanted>, ObjectRef)>,
    applies: Vec<(String, oneshot::Sender<Result<Served, EdgeError>>)>,
    removes: Vec<oneshot::Sender<Result<(), EdgeError>>>,
}

impl Batch {
    fn add(&mut self, request: Request) {
        match request {
            // Answered before batching (see `Owner::run`).
            Request::Warm => {}
            Request::Challenge(_, _, reply) => {
                let _ = reply.send(Err(EdgeError::Stopped));
            }
            Request::Files(_, reply) => {
                let _ = reply.send(Err(EdgeError::Stopped));
            }
            Request::AcmeState(_, _, reply) => {
                let _ = reply.send(Err(EdgeError::Stopped));
            }
            Request::Apply(wanted, reply) => {
                self.applies.push((wanted.id.clone(), reply));
                let object = wanted.object.clone();
                self.wanted
                    .insert(wanted.id.clone(), (Some(wanted), object));
            }
            Request::Remove(id, object, reply) => {
                self.removes.push(reply);
                self.wanted.insert(id, (None, object));
            }
        }
    }
}

impl Owner {
    pub(super) async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut last_reload: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(self.options.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    // Challenges and questions are answered at once: they change no configuration.
                    let request = match request {
                        Request::Warm => {
                            if self.container.is_none()
                                && let Err(error) = self.ensure_running(None).await
                            {
                                warn!(edge = %self.options.name, "cannot start the edge: {error}");
                            }
                            continue;
                        }
                        Request::Challenge(token, answer, reply) => {
                            let _ = reply.send(self.publish_challenge(&token, &answer).await);
                            continue;
                        }
                        Request::Files(id, reply) => {
                            let _ = reply.send(self.live_files(&id).await);
                            continue;
                        }
                        Request::AcmeState(name, write, reply) => {
                            let _ = reply.send(self.acme_state(&name, write).await);
                            continue;
                        }
                        other => other,
                    };
                    // A change after a quiet spell is applied at once. Right after a reload,
                    // the next one waits out RELOAD_SPACING, and everything that arrives
                    // meanwhile joins it: a burst of changes costs a few reloads, not one each.
                    if let Some(last) = last_reload {
                        tokio::time::sleep_until(last + RELOAD_SPACING).await;
                    }
                    let mut batch = Batch::default();
                    batch.add(request);
                    while let Ok(more) = requests.try_recv() {
                        batch.add(more);
                    }
                    let started = tokio::time::Instant::now();
                    if self.process(batch).await {
                        last_reload = Some(started);
                    }
                }
                _ = check.tick() => {
                    if self.container.is_some()
                        && let Err(error) = self.ensure_running(None).await
                    {
                        warn!(edge = %self.options.name, "cannot keep the edge running: {error}");
                    }
                }
            }
        }
    }
    /// Applies a batch and answers its requests; returns whether nginx was reloaded.
    async fn process(&mut self, batch: Batch) -> bool {
        let Batch {
            wanted,
            applies,
            removes,
        } = batch;
        let trigger = wanted.values().next().map(|(_, object)| object.clone());
        let result = match self.ensure_running(trigger).await {
            Ok(()) => self.apply(wanted).await,
            Err(error) => Err(error),
        };
        let reloaded = matches!(&result, Ok((_, true)));
        match result.map(|(outcomes, _)| outcomes) {
            Ok(outcomes) => {
                for (id, reply) in applies {
                    let served = outcomes.get(&id).cloned().unwrap_or(Served::Serving);
                    let _ = reply.send(Ok(served));
                }
                for reply in removes {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) => {
                for (_, reply) in applies {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in removes {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        reloaded
    }

    pub(super) async fn audit(
        &self,
        object: Option<&ObjectRef>,
        action: &str,
        target: &str,
        result: &Result<(), String>,
    ) {
        let object = object.cloned().unwrap_or_else(|| ObjectRef {
            kind: "Edge".to_owned(),
            namespace: None,
            name: self.options.name.clone(),
            uid: String::new(),
            generation: 0,
        });
        let (outcome, detail) = match result {
            Ok(()) => (Outcome::Success, String::new()),
            Err(error) => (Outcome::Failure, error.clone()),
        };
        let record = NewRecord {
            controller: CONTROLLER.to_owned(),
            object,
            action: action.to_owned(),
            target: target.to_owned(),
            outcome,
            detail,
        };
        if let Err(error) = self.audit.record(record).await {
            tracing::error!(%error, "could not write the audit record of an edge change");
        }
    }
}
