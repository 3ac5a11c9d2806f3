//! A run's report: everything the ladder found, as JSON for machines and as an HTML page for
//! people, written to `<reports dir>/<namespace>/<policy>/<run>.json` and `.html`.
//!
//! Files are written to a temporary name and renamed, so a reader never sees half a report.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Serialize;

use super::engine::TableRows;
use super::ladder::{Outcome, QueryResult};
use crate::api::backup::{CheckOutcome, CheckResult, ReportFiles};

/// The report as the JSON file holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub run: RunIdentity,
    /// `Succeeded` or `Failed`.
    pub result: String,
    pub message: String,
    pub start_time: Timestamp,
    pub completion_time: Timestamp,
    pub duration_ms: u64,
    pub backup: Option<BackupFacts>,
    pub engine: EngineFacts,
    pub checks: Vec<CheckResult>,
    pub restore: Option<RestoreFacts>,
    pub tables: Vec<TableRows>,
    pub queries: Vec<QueryResult>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub policy: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupFacts {
    pub file: String,
    pub size: u64,
    pub modified: Timestamp,
    pub sha256: Option<String>,
    pub format: Option<String>,
    pub compression: Option<String>,
    pub archive_version: Option<String>,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
    pub database: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineFacts {
    pub image: String,
    pub container: String,
    pub server_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreFacts {
    pub bytes_read: u64,
    pub database_bytes: u64,
    pub duration_ms: u64,
    pub megabytes_per_second: f64,
}

impl Report {
    pub fn new(
        run: RunIdentity,
        engine: EngineFacts,
        outcome: &Outcome,
        start_time: Timestamp,
        completion_time: Timestamp,
    ) -> Report {
        let failure = outcome.failure();
        let result = if failure.is_some() {
            "Failed"
        } else {
            "Succeeded"
        };
        let message = match failure {
            Some(check) => format!("{} check failed: {}", check.name, check.message),
            None => "every check passed".to_owned(),
        };
        let backup = outcome.file.as_ref().map(|file| {
            let detected = outcome.detected.as_ref();
            BackupFacts {
                file: file.path.display().to_string(),
                size: file.size,
                modified: file.modified,
                sha256: outcome.sha256.clone(),
                format: detected.map(|d| d.format.to_string()),
                compression: detected.map(|d| d.compression.to_string()),
                archive_version: detected.and_then(|d| d.archive_version.clone()),
                server_version: detected.and_then(|d| d.server_version.clone()),
                pg_dump_version: detected.and_then(|d| d.pg_dump_version.clone()),
                database: detected.and_then(|d| d.database.clone()),
            }
        });
        let restore = match (&outcome.restore, outcome.restore_ms) {
            (Some(stats), Some(ms)) => Some(RestoreFacts {
                bytes_read: stats.bytes_read,
                database_bytes: stats.database_bytes,
                duration_ms: ms,
                megabytes_per_second: stats.database_bytes as f64
                    / (ms.max(1) as f64 / 1000.0)
                    / 1e6,
            }),
            _ => None,
        };
        let duration = completion_time.duration_since(start_time).unsigned_abs();
        Report {
            api_version: "infrapilot.io/v1alpha1",
            kind: "BackupValidationReport",
            run,
            result: result.to_owned(),
            message,
            start_time,
            completion_time,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            backup,
            engine: EngineFacts {
                server_version: outcome.server_version.as_ref().map(|v| v.text.clone()),
                ..engine
            },
            checks: outcome.checks.clone(),
            restore,
            tables: outcome.tables.clone(),
            queries: outcome.queries.clone(),
        }
    }

    /// Where this run's report goes under `dir`.
    pub fn files(dir: &Path, namespace: &str, policy: &str, run: &str) -> (PathBuf, PathBuf) {
        let base = dir.join(namespace).join(policy);
        (
            base.join(format!("{run}.json")),
            base.join(format!("{run}.html")),
        )
    }

    /// Writes the JSON and HTML files under `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<ReportFiles> {
        let (json, html) = Self::files(dir, &self.run.namespace, &self.run.policy, &self.run.name);
        if let Some(parent) = json.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(&json, &text)?;
        write_atomically(&html, self.html().as_bytes())?;
        Ok(ReportFiles {
            json: json.display().to_string(),
            html: html.display().to_string(),
        })
    }

    /// The report as a self-contained HTML page. Every value is escaped: file names, messages
    /// and query results come from the backup and the user.
    pub fn html(&self) -> String {
        let mut page = String::with_capacity(8192);
        let title = format!(
            "Backup validation {}/{}: {}",
            self.run.namespace, self.run.name, self.result
        );
        page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        page.push_str(&format!("<title>{}</title>", escape(&title)));
        page.push_str(
            "<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}\
             table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}\
             .Passed{color:#1a7f37}.Failed{color:#cf222e;font-weight:bold}.Skipped{color:#777}.Succeeded{color:#1a7f37}\
             code{font-size:.9em}</style></head><body>",
        );
        page.push_str(&format!(
            "<h1>{} <span class=\"{}\">{}</span></h1>",
            escape(&format!(
                "Backup validation {}/{}",
                self.run.namespace, self.run.name
            )),
            escape(&self.result),
            escape(&self.result)
        ));
        page.push_str(&format!("<p>{}</p>", escape(&self.message)));
        let mut facts = vec![
            ("Policy", self.run.policy.clone()),
            ("Started", self.start_time.to_string()),
            ("Completed", self.completion_time.to_string()),
            (
                "Duration",
                format!("{:.1} s", self.duration_ms as f64 / 1000.0),
            ),
            ("Engine image", self.engine.image.clone()),
        ];
        if let Some(version) = &self.engine.server_version {
            facts.push(("Engine version", format!("PostgreSQL {version}")));
        }
        if let Some(backup) = &self.backup {
            facts.push(("File", backup.file.clone()));
            facts.push(("Size", format!("{} bytes", backup.size)));
            facts.push(("Modified", backup.modified.to_string()));
            if let Some(sha) = &backup.sha256 {
                facts.push(("SHA-256", sha.clone()));
            }
            if let Some(format) = &backup.format {
                let compression = backup.compression.as_deref().unwrap_or("none");
                facts.push((
                    "Format",
                    format!("{format} (outer compression: {compression})"),
                ));
            }
            if let Some(version) = &backup.server_version {
                facts.push(("Dumped from", format!("PostgreSQL {version}")));
            }
        }
        if let Some(restore) = &self.restore {
            facts.push((
                "Restore",
                format!(
                    "{} bytes restored in {:.1} s ({:.0} MB/s)",
                    restore.database_bytes,
                    restore.duration_ms as f64 / 1000.0,
                    restore.megabytes_per_second
                ),
            ));
        }
        page.push_str("<table>");
        for (name, value) in facts {
            page.push_str(&format!(
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(name),
                escape(&value)
            ));
        }
        page.push_str("</table><h2>Checks</h2><table><tr><th>Check</th><th>Result</th><th>Duration</th><th>Message</th></tr>");
        for check in &self.checks {
            let result = match check.result {
                CheckOutcome::Passed => "Passed",
                CheckOutcome::Failed => "Failed",
                CheckOutcome::Skipped => "Skipped",
            };
            page.push_str(&format!(
                "<tr><td>{}</td><td class=\"{result}\">{result}</td><td>{} ms</td><td>{}</td></tr>",
                escape(&check.name),
                check.duration_ms,
                escape(&check.message)
            ));
        }
        page.push_str("</table>");
        if !self.tables.is_empty() {
            page.push_str(
                "<h2>Tables</h2><table><tr><th>Schema</th><th>Table</th><th>Rows</th></tr>",
            );
            for table in &self.tables {
                page.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&table.schema),
                    escape(&table.name),
                    table.rows
                ));
            }
            page.push_str("</table>");
        }
        if !self.queries.is_empty() {
            page.push_str(
                "<h2>Queries</h2><table><tr><th>Query</th><th>Value</th><th>Result</th></tr>",
            );
            for query in &self.queries {
                let result = if query.passed { "Passed" } else { "Failed" };
                page.push_str(&format!(
                    "<tr><td>{}</td><td><code>{}</code></td><td class=\"{result}\">{}</td></tr>",
                    escape(&query.name),
                    escape(query.value.as_deref().unwrap_or("NULL")),
                    escape(&query.message)
                ));
            }
            page.push_str("</table>");
        }
        page.push_str("</body></html>\n");
        page
    }
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, content)?;
    std::fs::rename(&temporary, path)
}

/// Removes a run's report files (a run pruned by its policy's history limit).
pub fn remove(dir: &Path, namespace: &str, policy: &str, run: &str) -> std::io::Result<()> {
    let (json, html) = Report::files(dir, namespace, policy, run);
    for file in [json, html] {
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_every_value() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn reports_go_under_namespace_and_policy() {
        let (json, html) = Report::files(Path::new("/r"), "shop", "nightly", "nightly-1");
        assert_eq!(json, Path::new("/r/shop/nightly/nightly-1.json"));
        assert_eq!(html, Path::new("/r/shop/nightly/nightly-1.html"));
    }
}
