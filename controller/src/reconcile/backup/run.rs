//! The BackupValidationRun reconciler.
//!
//! A run is Pending, then Running, then Succeeded or Failed, and never changes after that.
//! The ladder takes minutes, so it does not run inside a reconcile: the reconcile that starts
//! a run spawns it and returns `Running`; each finished check and the end bring the run back
//! (through [`Reconciler::triggers`]) to show progress and, finally, the outcome. Its policy
//! follows its runs' changes through the relation it declares.
//!
//! Which runs this process is climbing is known only in memory. A run found `Running` that
//! this process is not climbing was interrupted (a restart, a change of leader): it ends
//! Failed with that reason, and its throwaway server, named after the run's uid, is removed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{POLICY_LABEL, RUN_LABEL, audit, name_of, namespace_of, trigger};
use crate::api::backup::{
    BackupInfo, BackupValidationPolicy, BackupValidationRun, BackupValidationRunStatus,
    CheckOutcome, CheckResult, RunPhase,
};
use crate::audit::Outcome as AuditOutcome;
use crate::backup::engine::{RestoreEngine, ServerSpec};
use crate::backup::ladder::{self, Job, Outcome};
use crate::backup::report::{EngineFacts, Report, RunIdentity};
use crate::reconcile::{Applied, Context, Failure, Reconciler, Requeue};
use crate::runtime::objects::Objects;
use crate::status::{self, Observation};

pub const CONTROLLER: &str = "backup-run";

/// How often a run waiting for another run of its policy looks again.
const WAIT: Duration = Duration::from_secs(5);

/// The BackupValidationRun reconciler with its outside world.
pub struct BackupRuns {
    objects: Objects,
    engine: Arc<dyn RestoreEngine>,
    reports: PathBuf,
    /// The runs this process is climbing, by uid.
    active: Arc<Mutex<HashMap<String, Arc<Mutex<Progress>>>>>,
    runs_tx: UnboundedSender<(String, String)>,
    runs_rx: Mutex<Option<UnboundedReceiver<(String, String)>>>,
    /// One permit per climb: throwaway servers are heavy, and a nightly schedule shared by
    /// many policies would otherwise start them all at once.
    slots: Arc<tokio::sync::Semaphore>,
    max_restores: usize,
}

impl std::fmt::Debug for BackupRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupRuns")
    }
}

/// A climb in progress.
#[derive(Debug, Default)]
struct Progress {
    /// (namespace, policy name): one climb per policy at a time.
    policy: (String, String),
    checks: Vec<CheckResult>,
    /// The final status, once the climb ended.
    finished: Option<BackupValidationRunStatus>,
}

impl BackupRuns {
    pub fn new(
        objects: Objects,
        engine: Arc<dyn RestoreEngine>,
        reports: PathBuf,
        max_restores: usize,
    ) -> Self {
        let (runs_tx, runs_rx) = unbounded_channel();
        let max_restores = max_restores.max(1);
        Self {
            objects,
            engine,
            reports,
            active: Arc::default(),
            runs_tx,
            runs_rx: Mutex::new(Some(runs_rx)),
            slots: Arc::new(tokio::sync::Semaphore::new(max_restores)),
            max_restores,
        }
    }

    fn progress(&self, uid: &str) -> Option<Arc<Mutex<Progress>>> {
        self.active.lock().ok()?.get(uid).cloned()
    }

    /// The run of the same policy this process is climbing, if any.
    fn busy(&self, policy: &(String, String)) -> bool {
        self.active.lock().is_ok_and(|active| {
            active.values().any(|p| {
                p.lock()
                    .is_ok_and(|p| &p.policy == policy && p.finished.is_none())
            })
        })
    }

    /// Starts climbing; returns the Running status.
    fn start(
        &self,
        run: &BackupValidationRun,
        policy: &BackupValidationPolicy,
        ctx: &Context,
        mut status: BackupValidationRunStatus,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> BackupValidationRunStatus {
        let (namespace, name, uid) = (namespace_of(run), name_of(run), uid_of(run));
        let now = (ctx.now)();
        let server = ServerSpec {
            name: container_name(&uid),
            image: policy.spec.engine.image.clone(),
            labels: BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "infrapilot".to_owned(),
                ),
                (RUN_LABEL.to_owned(), uid.clone()),
                (POLICY_LABEL.to_owned(), name_of(policy)),
            ]),
        };
        let job = Job {
            spec: policy.spec.clone(),
            file: run.spec.file.clone(),
            server: server.clone(),
            started: now,
        };
        let progress = Arc::new(Mutex::new(Progress {
            policy: (namespace.clone(), run.spec.policy_ref.name.clone()),
            ..Progress::default()
        }));
        if let Ok(mut active) = self.active.lock() {
            active.insert(uid.clone(), progress.clone());
        }
        status.phase = RunPhase::Running;
        status.start_time = Some(Time(now));
        status.container = Some(server.name.clone());
        status::set(
            &mut status.conditions,
            Observation::ready(false, "Running", "validating the backup"),
            run.metadata.generation,
            now,
        );

        let task = Climber {
            run: run.clone(),
            policy_name: run.spec.policy_ref.name.clone(),
            engine: self.engine.clone(),
            reports: self.reports.clone(),
            ctx: ctx.clone(),
            runs_tx: self.runs_tx.clone(),
            progress,
            running: status.clone(),
            _slot: slot,
        };
        tokio::spawn(task.climb(job, namespace, name));
        status
    }
}

/// The throwaway server of a run: named after its uid, so a restarted operator finds it.
pub fn container_name(uid: &str) -> String {
    format!("infrapilot-restore-{uid}")
}

fn uid_of(run: &BackupValidationRun) -> String {
    run.metadata.uid.clone().unwrap_or_default()
}

/// One climb, in the background.
struct Climber {
    run: BackupValidationRun,
    policy_name: String,
    engine: Arc<dyn RestoreEngine>,
    reports: PathBuf,
    ctx: Context,
    runs_tx: UnboundedSender<(String, String)>,
    progress: Arc<Mutex<Progress>>,
    running: BackupValidationRunStatus,
    /// Held until the climb ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Climber {
    async fn climb(self, job: Job, namespace: String, name: String) {
        let outcome = {
            let (progress, runs_tx) = (self.progress.clone(), self.runs_tx.clone());
            let (namespace, name) = (namespace.clone(), name.clone());
            ladder::climb(&job, self.engine.clone(), move |check| {
                if let Ok(mut progress) = progress.lock() {
                    progress.checks.push(check.clone());
                }
                trigger(&runs_tx, &namespace, &name);
            })
            .await
        };
        let finished = self.finish(&job, outcome, &namespace, &name).await;
        if let Ok(mut progress) = self.progress.lock() {
            progress.finished = Some(finished);
        }
        trigger(&self.runs_tx, &namespace, &name);
    }

    /// Writes the report and the audit record; returns the final status.
    async fn finish(
        &self,
        job: &Job,
        mut outcome: Outcome,
        namespace: &str,
        name: &str,
    ) -> BackupValidationRunStatus {
        let completion = (self.ctx.now)();
        let identity = RunIdentity {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid_of(&self.run),
            policy: self.policy_name.clone(),
        };
        let engine = EngineFacts {
            image: job.server.image.clone(),
            container: job.server.name.clone(),
            server_version: None,
        };
        // The report check is the report's own last line: written, then reported as written.
        let started = std::time::Instant::now();
        let (json, html) = Report::files(&self.reports, namespace, &self.policy_name, name);
        outcome.checks.push(CheckResult {
            name: "report".to_owned(),
            result: CheckOutcome::Passed,
            message: format!("written to {} and {}", json.display(), html.display()),
            duration_ms: 0,
        });
        let report = Report::new(identity, engine, &outcome, job.started, completion);
        let reports = self.reports.clone();
        let written = tokio::task::spawn_blocking(move || report.write(&reports)).await;
        let files = match written {
            Ok(Ok(files)) => {
                if let Some(check) = outcome.checks.last_mut() {
                    check.duration_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                }
                Some(files)
            }
            Ok(Err(error)) => {
                mark_report_failed(
                    &mut outcome,
                    format!(
                        "the report could not be written under {}: {error}",
                        self.reports.display()
                    ),
                );
                None
            }
            Err(error) => {
                mark_report_failed(&mut outcome, format!("writing the report stopped: {error}"));
                None
            }
        };

        let mut status = self.running.clone();
        status.container = None;
        status.checks = outcome.checks.clone();
        status.report = files;
        status.completion_time = Some(Time(completion));
        status.backup = outcome.file.as_ref().map(|file| BackupInfo {
            file: file.path.display().to_string(),
            size: file.size,
            sha256: outcome.sha256.clone(),
            format: outcome.detected.as_ref().map(|d| match d.compression {
                crate::backup::Compression::None => d.format.to_string(),
                compression => format!("{} ({compression})", d.format),
            }),
            // Whole seconds, as the status is stored: a status read back must equal the
            // one written, or every look would count as a change.
            modified: jiff::Timestamp::from_second(file.modified.as_second())
                .ok()
                .map(Time),
            server_version: outcome
                .detected
                .as_ref()
                .and_then(|d| d.server_version.clone()),
        });
        let (phase, reason, message) = match outcome.failure() {
            Some(check) => (
                RunPhase::Failed,
                "ValidationFailed",
                format!("{} check failed: {}", check.name, check.message),
            ),
            None => (RunPhase::Succeeded, "Validated", success_message(&outcome)),
        };
        status.phase = phase;
        status::set(
            &mut status.conditions,
            Observation::ready(phase == RunPhase::Succeeded, reason, &message),
            self.run.metadata.generation,
            completion,
        );
        let target = status
            .backup
            .as_ref()
            .map(|b| b.file.clone())
            .or_else(|| job.file.clone())
            .unwrap_or_else(|| job.spec.source.path.clone());
        let sha = outcome.sha256.as_deref().unwrap_or("not computed");
        audit(
            &self.ctx,
            CONTROLLER,
            &self.run,
            "backup.validate",
            target,
            if phase == RunPhase::Succeeded {
                AuditOutcome::Success
            } else {
                AuditOutcome::Failure
            },
            format!("sha256 {sha}; {message}"),
        )
        .await;
        status
    }
}

fn mark_report_failed(outcome: &mut Outcome, message: String) {
    if let Some(check) = outcome.checks.last_mut() {
        check.result = CheckOutcome::Failed;
        check.message = message;
    }
}

fn success_message(outcome: &Outcome) -> String {
    let rows: u64 = outcome.tables.iter().map(|t| t.rows).sum();
    match &outcome.restore {
        Some(stats) => format!(
            "every check passed: restored {} MB, {} tables with {rows} rows",
            stats.database_bytes / 1_000_000,
            outcome.tables.len()
        ),
        None => "every check passed".to_owned(),
    }
}

#[async_trait]
impl Reconciler for BackupRuns {
    type Object = BackupValidationRun;
    type Status = BackupValidationRunStatus;

    const CONTROLLER: &'static str = CONTROLLER;
    // A run owns its throwaway server only while this process climbs it, and removes it
    // itself; a restart removes what an interrupted run left. Nothing waits on deletion.
    const FINALIZER: Option<&'static str> = None;
    // A run reads its policy.
    const RBAC: &'static [crate::runtime::rbac::Rule] = &[crate::runtime::rbac::Rule::infrapilot(
        &["backupvalidationpolicies"],
        &["get"],
    )];

    fn status(object: &Self::Object) -> Option<&Self::Status> {
        object.status.as_ref()
    }

    fn set_status(object: &mut Self::Object, status: Self::Status) {
        object.status = Some(status);
    }

    async fn reconcile(&self, run: &BackupValidationRun, ctx: &Context) -> Applied<Self::Status> {
        let mut status = run.status.clone().unwrap_or_default();
        let done = |status: BackupValidationRunStatus| Applied {
            status,
            requeue: Requeue::OnChange,
            failure: None,
        };
        let (namespace, uid) = (namespace_of(run), uid_of(run));
        if matches!(status.phase, RunPhase::Succeeded | RunPhase::Failed) {
            // Its final status is stored: the climb's memory is no longer needed.
            if let Ok(mut active) = self.active.lock() {
                active.remove(&uid);
            }
            return done(status);
        }
        let policy_key = (namespace.clone(), run.spec.policy_ref.name.clone());

        if let Some(progress) = self.progress(&uid) {
            let finished = progress.lock().ok().and_then(|p| p.finished.clone());
            if let Some(finished) = finished {
                // Kept until the stored status shows it: a failed status write must not make
                // the next reconcile take the run for interrupted. Its policy hears of the
                // end once it is stored (the policy's relation to its runs).
                return done(finished);
            }
            if let Ok(progress) = progress.lock() {
                status.checks = progress.checks.clone();
            }
            return done(status);
        }

        let now = (ctx.now)();
        if status.phase == RunPhase::Running {
            return self.interrupted(run, ctx, status).await;
        }

        let policy = match self
            .objects
            .get::<BackupValidationPolicy>(&namespace, &policy_key.1)
            .await
        {
            Ok(Some(policy)) => policy,
            Ok(None) => {
                status::set(
                    &mut status.conditions,
                    Observation::ready(
                        false,
                        "PolicyNotFound",
                        format!(
                            "spec.policyRef: there is no BackupValidationPolicy {} in namespace {namespace}; the run waits for it",
                            policy_key.1
                        ),
                    ),
                    run.metadata.generation,
                    now,
                );
                return Applied {
                    status,
                    requeue: Requeue::After(Duration::from_secs(30)),
                    failure: None,
                };
            }
            Err(failure) => {
                return Applied {
                    status,
                    requeue: Requeue::After(Duration::from_secs(10)),
                    failure: Some(failure),
                };
            }
        };
        let waiting = if self.busy(&policy_key) {
            Err(format!(
                "another run of policy {} is running; runs of a policy go one at a time",
                policy_key.1
            ))
        } else {
            self.slots.clone().try_acquire_owned().map_err(|_| {
                format!(
                    "{} restores are running, as many as the operator runs at once \
                     (--max-restores); this one starts when one of them ends",
                    self.max_restores
                )
            })
        };
        let slot = match waiting {
            Ok(slot) => slot,
            Err(message) => {
                status::set(
                    &mut status.conditions,
                    Observation::ready(false, "Waiting", message),
                    run.metadata.generation,
                    now,
                );
                return Applied {
                    status,
                    requeue: Requeue::After(WAIT),
                    failure: None,
                };
            }
        };
        done(self.start(run, &policy, ctx, status, slot))
    }

    async fn cleanup(&self, _run: &BackupValidationRun, _ctx: &Context) -> Result<(), Failure> {
        Ok(())
    }

    fn triggers(&self) -> Option<UnboundedReceiver<(String, String)>> {
        self.runs_rx.lock().ok()?.take()
    }
}

impl BackupRuns {
    /// A run left Running by another process: remove its server and end it Failed.
    async fn interrupted(
        &self,
        run: &BackupValidationRun,
        ctx: &Context,
        mut status: BackupValidationRunStatus,
    ) -> Applied<BackupValidationRunStatus> {
        let container = status
            .container
            .clone()
            .unwrap_or_else(|| container_name(&uid_of(run)));
        if let Err(error) = self.engine.remove(&container).await {
            return Applied {
                status,
                requeue: Requeue::After(Duration::from_secs(10)),
                failure: Some(Failure {
                    category: crate::retry::Category::Unreachable,
                    message: format!(
                        "the interrupted run's throwaway server {container} could not be removed: {error}"
                    ),
                }),
            };
        }
        let now = (ctx.now)();
        let message = format!(
            "interrupted: the operator stopped while this run was running (a restart or a change of leader); its throwaway server {container} was removed"
        );
        audit(
            ctx,
            CONTROLLER,
            run,
            "backup.validate",
            container.clone(),
            AuditOutcome::Failure,
            message.clone(),
        )
        .await;
        status.phase = RunPhase::Failed;
        status.container = None;
        status.completion_time = Some(Time(now));
        status::set(
            &mut status.conditions,
            Observation::ready(false, "Interrupted", message),
            run.metadata.generation,
            now,
        );
        Applied {
            status,
            requeue: Requeue::OnChange,
            failure: None,
        }
    }
}

#[cfg(test)]
mod tests;
