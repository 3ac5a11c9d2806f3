//! The ladder: one validation of one backup, check by check.
//!
//! format → sqlSyntax → checksum → freshness → restore → data. Each check ends Passed, Failed
//! or Skipped with a message and its duration. A failure of a blocking check stops the climb
//! (later checks are Skipped with the reason); freshness does not block, so that a stale
//! backup is still proven restorable. Every step has a timeout, and the throwaway server is
//! removed at the end whatever happened. The report is written by the caller.
//!
//! The throwaway server is started as soon as the file is found, while the file-level checks
//! run: its initialisation overlaps them instead of adding to the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::task::JoinHandle;

use super::engine::{
    EngineError, RestoreEngine, RestoreStats, ServerSpec, ServerVersion, TableRows, Throwaway,
};
use super::format::Detected;
use super::source::BackupFile;
use super::{Dump, DumpFormat, checksum, format, source, syntax};
use crate::api::backup::{BackupValidationPolicySpec, CheckOutcome, CheckResult, QueryAssertion};
use crate::api::common::parse_duration;

/// The check names, as status and reports show them.
pub const FORMAT: &str = "format";
pub const SQL_SYNTAX: &str = "sqlSyntax";
pub const CHECKSUM: &str = "checksum";
pub const FRESHNESS: &str = "freshness";
pub const RESTORE: &str = "restore";
pub const DATA: &str = "data";

/// How long the steps that have no setting of their own may take.
const FILE_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const START_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a climb that ended early lets its server's start finish before removing it.
const START_SETTLE: Duration = Duration::from_secs(30);
const LIST_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DATA_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What to validate and with what.
#[derive(Clone, Debug)]
pub struct Job {
    pub spec: BackupValidationPolicySpec,
    /// A run's own file, instead of the policy's newest match.
    pub file: Option<String>,
    /// The throwaway server of this run.
    pub server: ServerSpec,
    pub started: Timestamp,
}

/// What a climb found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub checks: Vec<CheckResult>,
    pub file: Option<BackupFile>,
    pub detected: Option<Detected>,
    pub sha256: Option<String>,
    pub server_version: Option<ServerVersion>,
    pub restore: Option<RestoreStats>,
    pub restore_ms: Option<u64>,
    pub tables: Vec<TableRows>,
    pub queries: Vec<QueryResult>,
}

impl Outcome {
    /// The first failed check, if any.
    pub fn failure(&self) -> Option<&CheckResult> {
        self.checks
            .iter()
            .find(|c| c.result == CheckOutcome::Failed)
    }
}

/// One data assertion's value and verdict.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    pub name: String,
    pub value: Option<String>,
    pub passed: bool,
    pub message: String,
}

/// Climbs the ladder. `progress` sees each check as it finishes.
pub async fn climb(
    job: &Job,
    engine: Arc<dyn RestoreEngine>,
    progress: impl Fn(&CheckResult) + Send + Sync,
) -> Outcome {
    let mut climb = Climb {
        job,
        outcome: Outcome::default(),
        progress: &progress,
        stopped: None,
    };
    let server = climb.run(&engine).await;
    // Whatever happened, the server goes, by name. A start still in flight is let finish
    // first: aborted between its create request and Docker's answer, it would leave a
    // container that a removal sent now cannot see yet. Starting is only create and start
    // (readiness is waited for later), so this is quick, but for a pull of a missing image,
    // which is aborted after a while (a create never sent leaves nothing behind).
    if let Some(mut start) = server
        && tokio::time::timeout(START_SETTLE, &mut start)
            .await
            .is_err()
    {
        start.abort();
    }
    if let Err(error) = engine.remove(&job.server.name).await {
        tracing::warn!(container = %job.server.name, "could not remove the throwaway server: {error}");
    }
    climb.outcome
}

struct Climb<'a> {
    job: &'a Job,
    outcome: Outcome,
    progress: &'a (dyn Fn(&CheckResult) + Send + Sync),
    /// The check whose failure stopped the climb.
    stopped: Option<&'static str>,
}

type Started = JoinHandle<Result<Box<dyn Throwaway>, EngineError>>;

impl Climb<'_> {
    fn record(&mut self, name: &str, result: CheckOutcome, message: String, started: Instant) {
        let check = CheckResult {
            name: name.to_owned(),
            result,
            message,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        (self.progress)(&check);
        self.outcome.checks.push(check);
    }

    fn pass(&mut self, name: &str, message: String, started: Instant) {
        self.record(name, CheckOutcome::Passed, message, started);
    }

    /// A failure; a blocking one stops the climb.
    fn fail(&mut self, name: &'static str, message: String, started: Instant, blocking: bool) {
        self.record(name, CheckOutcome::Failed, message, started);
        if blocking && self.stopped.is_none() {
            self.stopped = Some(name);
        }
    }

    fn skip(&mut self, name: &str, message: &str) {
        self.record(
            name,
            CheckOutcome::Skipped,
            message.to_owned(),
            Instant::now(),
        );
    }

    /// Skips `name` when an earlier check stopped the climb; says whether it did.
    fn stopped_before(&mut self, name: &str) -> bool {
        match self.stopped {
            Some(by) => {
                self.skip(name, &format!("not run: the {by} check failed"));
                true
            }
            None => false,
        }
    }

    /// Runs the checks; returns the server's start task if one was begun.
    async fn run(&mut self, engine: &Arc<dyn RestoreEngine>) -> Option<Started> {
        let checks = self.job.spec.checks.clone();
        let begun = Instant::now();

        // Find the file. Without one there is nothing to check: that is the format check's
        // failure, since it is the first to look at the file.
        let wanted = self.job.file.clone();
        let pattern = self.job.spec.source.path.clone();
        let found = blocking(FILE_STEP_TIMEOUT, move || match &wanted {
            Some(file) => source::file(file).map_err(|e| e.to_string()),
            None => source::newest(&pattern).map_err(|e| e.to_string()),
        })
        .await;
        let file = match found {
            Ok(file) => file,
            Err(message) => {
                self.fail(FORMAT, message, begun, true);
                for name in [SQL_SYNTAX, CHECKSUM, FRESHNESS, RESTORE, DATA] {
                    self.stopped_before(name);
                }
                return None;
            }
        };
        self.outcome.file = Some(file.clone());

        let server: Option<Started> = (checks.restore.enabled || checks.format).then(|| {
            let (engine, spec) = (engine.clone(), self.job.server.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(START_TIMEOUT, engine.start(&spec)).await {
                    Ok(started) => started,
                    Err(_) => Err(EngineError::Failed(format!(
                        "the throwaway server did not start within {START_TIMEOUT:?}"
                    ))),
                }
            })
        });
        let mut server = ServerSlot::new(server);

        // format
        let started = Instant::now();
        let detected = {
            let file = file.clone();
            blocking(FILE_STEP_TIMEOUT, move || {
                format::detect(&file).map_err(|e| e.to_string())
            })
            .await
        };
        let detected = match detected {
            Ok(detected) => detected,
            Err(message) => {
                // An unreadable dump cannot be restored even when the check is off.
                self.fail(FORMAT, message, started, true);
                self.finish_stopped(&[SQL_SYNTAX]);
                self.checksum(&file, checks.checksum).await;
                self.finish_stopped(&[FRESHNESS, RESTORE, DATA]);
                return server.into_task();
            }
        };
        self.outcome.detected = Some(detected.clone());
        let dump = Dump {
            path: file.path.clone(),
            format: detected.format,
            compression: detected.compression,
            database: None,
        };
        if checks.format {
            self.format(&detected, &dump, &mut server, started).await;
        } else {
            self.skip(FORMAT, "disabled by the policy");
        }

        // sqlSyntax
        let mut roles = Vec::new();
        let mut dump = dump;
        if !self.stopped_before(SQL_SYNTAX) {
            if detected.format != DumpFormat::Plain {
                self.skip(
                    SQL_SYNTAX,
                    "not a plain dump: pg_restore reads the archive's entries itself",
                );
            } else if !checks.sql_syntax {
                self.skip(SQL_SYNTAX, "disabled by the policy");
            } else {
                let started = Instant::now();
                let (path, compression) = (file.path.clone(), detected.compression);
                let checked = blocking(FILE_STEP_TIMEOUT, move || {
                    let reader = super::open(&path, compression).map_err(|e| e.to_string())?;
                    syntax::check_plain(std::io::BufReader::with_capacity(1 << 16, reader))
                        .map_err(|e| e.to_string())
                })
                .await;
                match checked {
                    Ok(summary) => {
                        roles = summary.roles.iter().cloned().collect();
                        dump.database = summary.connect_database.clone();
                        self.pass(
                            SQL_SYNTAX,
                            format!(
                                "{} statements parsed by PostgreSQL's parser; {} COPY blocks",
                                summary.statements, summary.copy_blocks
                            ),
                            started,
                        );
                    }
                    Err(message) => self.fail(SQL_SYNTAX, message, started, true),
                }
            }
        }

        // checksum: always computed (the audit log records it), compared when asked.
        if self.stopped.is_some() {
            self.checksum(&file, false).await;
            self.finish_stopped(&[FRESHNESS, RESTORE, DATA]);
            return server.into_task();
        }
        self.checksum(&file, checks.checksum).await;
        self.freshness(&file);

        // restore
        if self.stopped_before(RESTORE) {
            self.finish_stopped(&[DATA]);
            return server.into_task();
        }
        if !checks.restore.enabled {
            self.skip(RESTORE, "disabled by the policy");
            self.skip(DATA, "not run: the restore check is disabled");
            return server.into_task();
        }
        let restored = self.restore(&detected, &dump, &roles, &mut server).await;
        match restored {
            Some(throwaway) => self.data(throwaway).await,
            None => {
                self.stopped_before(DATA);
            }
        }
        server.into_task()
    }

    fn finish_stopped(&mut self, names: &[&str]) {
        for name in names {
            self.stopped_before(name);
        }
    }

    async fn format(
        &mut self,
        detected: &Detected,
        dump: &Dump,
        server: &mut ServerSlot,
        started: Instant,
    ) {
        let mut message = describe(detected);
        if detected.format == DumpFormat::Plain {
            self.pass(FORMAT, message, started);
            return;
        }
        // An archive's table of contents is read by the engine's own pg_restore, unless the
        // dump is newer than it: the restore check then fails with that reason.
        let throwaway = match server.get().await {
            Ok(throwaway) => throwaway,
            Err(error) => {
                self.fail(
                    FORMAT,
                    format!("{message}; its table of contents could not be read: {error}"),
                    started,
                    true,
                );
                return;
            }
        };
        let version = match self.server_version(throwaway).await {
            Ok(version) => version,
            Err(error) => {
                self.fail(FORMAT, format!("{message}; {error}"), started, true);
                return;
            }
        };
        if detected
            .server_major
            .is_some_and(|major| major > version.major)
        {
            message.push_str(&format!(
                "; table of contents not listed: the engine's PostgreSQL {} is older than the dump",
                version.text
            ));
            self.pass(FORMAT, message, started);
            return;
        }
        match tokio::time::timeout(LIST_TIMEOUT, throwaway.list_contents(dump)).await {
            Ok(Ok(toc)) => {
                message.push_str(&format!(
                    "; table of contents: {} entries, {} with table data",
                    toc.entries, toc.table_data
                ));
                self.pass(FORMAT, message, started);
            }
            Ok(Err(error)) => self.fail(
                FORMAT,
                format!("{message}; its table of contents is unreadable: {error}"),
                started,
                true,
            ),
            Err(_) => self.fail(
                FORMAT,
                format!(
                    "{message}; listing its table of contents took longer than {LIST_TIMEOUT:?}"
                ),
                started,
                true,
            ),
        }
    }

    async fn server_version(
        &mut self,
        throwaway: &dyn Throwaway,
    ) -> Result<ServerVersion, EngineError> {
        if let Some(version) = &self.outcome.server_version {
            return Ok(version.clone());
        }
        let version = throwaway.version().await?;
        self.outcome.server_version = Some(version.clone());
        Ok(version)
    }

    async fn checksum(&mut self, file: &BackupFile, compare: bool) {
        let started = Instant::now();
        let hashed = {
            let file = file.clone();
            blocking(FILE_STEP_TIMEOUT, move || {
                let sha256 = checksum::sha256(&file)
                    .map_err(|e| format!("cannot read {} to hash it: {e}", file.path.display()))?;
                let sidecar = if compare {
                    checksum::sidecar(&file)?
                } else {
                    None
                };
                let verdict = sidecar
                    .as_ref()
                    .map(|sidecar| checksum::verify(&file, sidecar, &sha256));
                Ok((sha256, sidecar, verdict))
            })
            .await
        };
        let (sha256, sidecar, verdict) = match hashed {
            Ok(hashed) => hashed,
            Err(message) => {
                if compare {
                    self.fail(CHECKSUM, message, started, true);
                }
                return;
            }
        };
        self.outcome.sha256 = Some(sha256.clone());
        if !compare {
            if self.stopped.is_none() {
                self.skip(
                    CHECKSUM,
                    &format!("sha256 {sha256} recorded; comparison disabled by the policy"),
                );
            } else {
                self.stopped_before(CHECKSUM);
            }
            return;
        }
        match (sidecar, verdict) {
            (Some(sidecar), Some(Ok(()))) => self.pass(
                CHECKSUM,
                format!(
                    "sha256 {sha256}; matches {}",
                    sidecar.path.display()
                ),
                started,
            ),
            (_, Some(Err(message))) => self.fail(CHECKSUM, message, started, true),
            _ => self.pass(
                CHECKSUM,
                format!("sha256 {sha256} recorded; there is no .sha256 or .md5 file next to the backup to compare with"),
                started,
            ),
        }
    }

    fn freshness(&mut self, file: &BackupFile) {
        let checks = &self.job.spec.checks;
        if checks.max_age.is_none() && checks.min_size.is_none() {
            self.skip(FRESHNESS, "neither maxAge nor minSize is set");
            return;
        }
        let started = Instant::now();
        let mut facts = Vec::new();
        let mut problems = Vec::new();
        if let Some(max_age) = &checks.max_age {
            let age = self
                .job
                .started
                .duration_since(file.modified)
                .unsigned_abs();
            let limit = parse_duration(max_age).unwrap_or(Duration::MAX);
            if age > limit {
                problems.push(format!(
                    "the backup is {} old, more than maxAge {max_age}",
                    human_duration(age)
                ));
            } else {
                facts.push(format!("{} old (maxAge {max_age})", human_duration(age)));
            }
        }
        if let Some(min_size) = &checks.min_size {
            let limit = parse_size(min_size).unwrap_or(0);
            if file.size < limit {
                problems.push(format!(
                    "the backup has {} bytes, less than minSize {min_size}",
                    file.size
                ));
            } else {
                facts.push(format!("{} bytes (minSize {min_size})", file.size));
            }
        }
        if problems.is_empty() {
            self.pass(FRESHNESS, facts.join("; "), started);
        } else {
            // A stale backup is still worth proving restorable: not blocking.
            self.fail(FRESHNESS, problems.join("; "), started, false);
        }
    }

    async fn restore<'s>(
        &mut self,
        detected: &Detected,
        dump: &Dump,
        roles: &[String],
        server: &'s mut ServerSlot,
    ) -> Option<&'s dyn Throwaway> {
        let started = Instant::now();
        let timeout = parse_duration(&self.job.spec.checks.restore.timeout)
            .unwrap_or(Duration::from_secs(30 * 60));
        let throwaway = match server.get().await {
            Ok(throwaway) => throwaway,
            Err(error) => {
                self.fail(
                    RESTORE,
                    format!("the throwaway server could not start: {error}"),
                    started,
                    true,
                );
                return None;
            }
        };
        let version = match self.server_version(throwaway).await {
            Ok(version) => version,
            Err(error) => {
                self.fail(RESTORE, error.to_string(), started, true);
                return None;
            }
        };
        if let Some(major) = detected.server_major
            && major > version.major
        {
            self.fail(
                RESTORE,
                format!(
                    "the dump comes from PostgreSQL {}, which the engine image {} (PostgreSQL {}) cannot read: set engine.image to PostgreSQL {major} or newer",
                    detected.server_version.as_deref().unwrap_or("?"),
                    self.job.server.image,
                    version.text
                ),
                started,
                true,
            );
            return None;
        }
        let restoring = async {
            throwaway.ready(timeout).await?;
            let began = Instant::now();
            let stats = throwaway.restore(dump, roles).await?;
            Ok::<_, EngineError>((stats, began.elapsed()))
        };
        match tokio::time::timeout(timeout, restoring).await {
            Ok(Ok((stats, took))) => {
                let seconds = took.as_secs_f64().max(0.001);
                let rate = stats.database_bytes as f64 / seconds / 1e6;
                self.pass(
                    RESTORE,
                    format!(
                        "restored into PostgreSQL {} in {seconds:.1} s: {} MB of data at {rate:.0} MB/s",
                        version.text,
                        stats.database_bytes / 1_000_000
                    ),
                    started,
                );
                self.outcome.restore_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
                self.outcome.restore = Some(stats);
                Some(throwaway)
            }
            Ok(Err(error)) => {
                self.fail(RESTORE, error.to_string(), started, true);
                None
            }
            Err(_) => {
                self.fail(
                    RESTORE,
                    format!(
                        "the restore did not finish within {}; its server was removed",
                        self.job.spec.checks.restore.timeout
                    ),
                    started,
                    true,
                );
                None
            }
        }
    }

    async fn data(&mut self, throwaway: &dyn Throwaway) {
        let started = Instant::now();
        let checks = self.job.spec.checks.clone();
        let assessed = tokio::time::timeout(DATA_TIMEOUT, async {
            let tables = throwaway.tables().await?;
            let mut queries = Vec::new();
            for assertion in &checks.queries {
                queries.push(assess(assertion, throwaway.query(&assertion.sql).await));
            }
            Ok::<_, EngineError>((tables, queries))
        })
        .await;
        let (tables, queries) = match assessed {
            Ok(Ok(assessed)) => assessed,
            Ok(Err(error)) => {
                self.fail(DATA, error.to_string(), started, true);
                return;
            }
            Err(_) => {
                self.fail(
                    DATA,
                    format!("the data checks took longer than {DATA_TIMEOUT:?}"),
                    started,
                    true,
                );
                return;
            }
        };
        let problems = data_problems(&checks.expect_tables, &checks.min_rows, &tables, &queries);
        let rows: u64 = tables.iter().map(|t| t.rows).sum();
        let summary = format!(
            "{} tables with {rows} rows; {} of {} queries as expected",
            tables.len(),
            queries.iter().filter(|q| q.passed).count(),
            queries.len()
        );
        self.outcome.tables = tables;
        self.outcome.queries = queries;
        if problems.is_empty() {
            self.pass(DATA, summary, started);
        } else {
            self.fail(DATA, problems.join("; "), started, true);
        }
    }
}

/// The throwaway server, started in the background and awaited where first needed.
struct ServerSlot {
    task: Option<Started>,
    server: Option<Result<Box<dyn Throwaway>, EngineError>>,
}

impl ServerSlot {
    fn new(task: Option<Started>) -> Self {
        Self { task, server: None }
    }

    async fn get(&mut self) -> Result<&dyn Throwaway, EngineError> {
        if self.server.is_none() {
            let result = match self.task.take() {
                Some(task) => match task.await {
                    Ok(result) => result,
                    Err(error) => Err(EngineError::Failed(format!(
                        "starting the server failed: {error}"
                    ))),
                },
                None => Err(EngineError::Failed(
                    "no throwaway server was started".to_owned(),
                )),
            };
            self.server = Some(result);
        }
        match &self.server {
            Some(Ok(server)) => Ok(server.as_ref()),
            Some(Err(error)) => Err(error.clone()),
            None => Err(EngineError::Failed(
                "no throwaway server was started".to_owned(),
            )),
        }
    }

    fn into_task(self) -> Option<Started> {
        self.task
    }
}

/// What the data checks found wrong (pure).
fn data_problems(
    expect_tables: &[String],
    min_rows: &BTreeMap<String, u64>,
    tables: &[TableRows],
    queries: &[QueryResult],
) -> Vec<String> {
    let find = |wanted: &str| {
        let (schema, name) = wanted.split_once('.').unwrap_or(("public", wanted));
        tables.iter().find(|t| t.schema == schema && t.name == name)
    };
    let mut problems = Vec::new();
    for wanted in expect_tables {
        if find(wanted).is_none() {
            problems.push(format!(
                "expected table {wanted} is missing from the restored database"
            ));
        }
    }
    for (wanted, min) in min_rows {
        match find(wanted) {
            None if !expect_tables.contains(wanted) => problems.push(format!(
                "table {wanted} (minRows) is missing from the restored database"
            )),
            None => {}
            Some(table) if table.rows < *min => problems.push(format!(
                "table {wanted} has {} rows, fewer than minRows {min}",
                table.rows
            )),
            Some(_) => {}
        }
    }
    problems.extend(
        queries
            .iter()
            .filter(|q| !q.passed)
            .map(|q| format!("query {}: {}", q.name, q.message)),
    );
    problems
}

/// Judges one query's result against its assertion (pure).
fn assess(
    assertion: &QueryAssertion,
    result: Result<super::engine::QueryRows, EngineError>,
) -> QueryResult {
    let verdict = |value: Option<String>, passed: bool, message: String| QueryResult {
        name: assertion.name.clone(),
        value,
        passed,
        message,
    };
    let rows = match result {
        Ok(rows) => rows,
        Err(error) => return verdict(None, false, format!("failed: {error}")),
    };
    if rows.columns.len() != 1 || rows.rows.len() != 1 {
        return verdict(
            None,
            false,
            format!(
                "returned {} rows of {} columns; expected one row with one column",
                rows.rows.len(),
                rows.columns.len()
            ),
        );
    }
    let value = rows.rows[0].first().cloned().flatten();
    let shown = value.clone().unwrap_or_else(|| "NULL".to_owned());
    if let Some(expected) = &assertion.expect
        && value.as_deref() != Some(expected.as_str())
    {
        return verdict(
            value,
            false,
            format!("returned {shown}, expected {expected}"),
        );
    }
    if assertion.min.is_some() || assertion.max.is_some() {
        let Some(number) = value.as_deref().and_then(|v| v.trim().parse::<f64>().ok()) else {
            return verdict(
                value,
                false,
                format!("returned {shown}, which is not a number"),
            );
        };
        if let Some(min) = assertion.min
            && number < min
        {
            return verdict(
                value,
                false,
                format!("returned {shown}, less than min {min}"),
            );
        }
        if let Some(max) = assertion.max
            && number > max
        {
            return verdict(
                value,
                false,
                format!("returned {shown}, more than max {max}"),
            );
        }
    }
    verdict(value, true, format!("returned {shown}"))
}

/// One line about the dump, for the format check's message.
fn describe(detected: &Detected) -> String {
    let mut text = match detected.format {
        DumpFormat::Plain => "plain SQL dump".to_owned(),
        other => format!(
            "{other} archive {}",
            detected.archive_version.as_deref().unwrap_or("")
        )
        .trim_end()
        .to_owned(),
    };
    if detected.compression != super::Compression::None {
        text.push_str(&format!(", {}-compressed", detected.compression));
    }
    if let Some(version) = &detected.server_version {
        text.push_str(&format!(", from PostgreSQL {version}"));
    }
    if let Some(version) = &detected.pg_dump_version {
        text.push_str(&format!(" (pg_dump {version})"));
    }
    if let Some(database) = &detected.database {
        text.push_str(&format!(", database {database}"));
    }
    text
}

/// Parses a size in the API's grammar ([`crate::api::common::SIZE_PATTERN`]: `512`, `10k`,
/// `1M`, `2g`; binary multiples, as nginx reads the same sizes) into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let value: u64 = text[..digits].parse().ok()?;
    let factor: u64 = match &text[digits..] {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(factor)
}

fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

/// Runs blocking file work on the blocking pool, at most `timeout`.
async fn blocking<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => Err(format!("the check stopped unexpectedly: {error}")),
        Err(_) => Err(format!("the check took longer than {timeout:?}")),
    }
}

#[cfg(test)]
mod tests;
