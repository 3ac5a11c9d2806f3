//! Writing audit records for other tools: JSON, CSV, and CEF for SIEMs.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use anyhow::{Context, bail};

use super::{Outcome, Record};

/// The formats of [`AuditLog::export`](super::AuditLog::export).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// A JSON array of [`Record`]s, one per line, with the object nested as in `Record`'s
    /// serialisation.
    Json,
    /// A header row (`seq,time,controller,kind,namespace,name,uid,generation,action,target,
    /// outcome,detail,hash`), then one row per record. A cluster-scoped object has an empty
    /// namespace.
    Csv,
    /// ArcSight Common Event Format, one line per record. Severity is 3 for a success and 7
    /// for a failure; the object is `cs2=<kind>/<namespace>/<name>`, with an empty namespace
    /// for a cluster-scoped object.
    Cef,
}

impl FromStr for ExportFormat {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<ExportFormat> {
        match text.to_ascii_lowercase().as_str() {
            "json" => Ok(ExportFormat::Json),
            "csv" => Ok(ExportFormat::Csv),
            "cef" => Ok(ExportFormat::Cef),
            _ => bail!("unknown export format {text:?}: expected json, csv or cef"),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Json => "json",
            ExportFormat::Csv => "csv",
            ExportFormat::Cef => "cef",
        })
    }
}

const CSV_HEADER: [&str; 13] = [
    "seq",
    "time",
    "controller",
    "kind",
    "namespace",
    "name",
    "uid",
    "generation",
    "action",
    "target",
    "outcome",
    "detail",
    "hash",
];

/// Writes records one at a time, so that an export never holds the whole log.
pub(super) enum Exporter<'w, W: Write> {
    Json { out: &'w mut W, empty: bool },
    // Boxed: the CSV writer carries its buffer inline.
    Csv(Box<csv::Writer<&'w mut W>>),
    Cef(&'w mut W),
}

impl<'w, W: Write> Exporter<'w, W> {
    pub(super) fn new(format: ExportFormat, out: &'w mut W) -> anyhow::Result<Self> {
        Ok(match format {
            ExportFormat::Json => {
                out.write_all(b"[").context("cannot write the export")?;
                Exporter::Json { out, empty: true }
            }
            ExportFormat::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer
                    .write_record(CSV_HEADER)
                    .context("cannot write the export")?;
                Exporter::Csv(Box::new(writer))
            }
            ExportFormat::Cef => Exporter::Cef(out),
        })
    }

    pub(super) fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        match self {
            Exporter::Json { out, empty } => {
                out.write_all(if *empty { b"\n" } else { b",\n" })?;
                *empty = false;
                serde_json::to_writer(&mut **out, record)?;
            }
            Exporter::Csv(writer) => writer.write_record(csv_row(record))?,
            Exporter::Cef(out) => writeln!(out, "{}", cef_line(record))?,
        }
        Ok(())
    }

    pub(super) fn finish(self) -> anyhow::Result<()> {
        match self {
            Exporter::Json { out, empty } => {
                out.write_all(if empty { b"]\n" } else { b"\n]\n" })?;
                out.flush()?;
            }
            Exporter::Csv(mut writer) => writer.flush()?,
            Exporter::Cef(out) => out.flush()?,
        }
        Ok(())
    }
}

fn csv_row(record: &Record) -> [String; 13] {
    [
        record.seq.to_string(),
        record.time.to_string(),
        record.controller.clone(),
        record.object.kind.clone(),
        record.object.namespace.clone().unwrap_or_default(),
        record.object.name.clone(),
        record.object.uid.clone(),
        record.object.generation.to_string(),
        record.action.clone(),
        record.target.clone(),
        record.outcome.to_string(),
        record.detail.clone(),
        record.hash.clone(),
    ]
}

fn cef_line(record: &Record) -> String {
    let severity = match record.outcome {
        Outcome::Success => 3,
        Outcome::Failure => 7,
    };
    let object = format!(
        "{}/{}/{}",
        record.object.kind,
        record.object.namespace.as_deref().unwrap_or_default(),
        record.object.name
    );
    format!(
        "CEF:0|InfraPilot|infrapilot|{version}|{signature}|{name}|{severity}|rt={rt} \
         cs1Label=controller cs1={controller} cs2Label=object cs2={object} \
         cs3Label=uid cs3={uid} cs4Label=outcome cs4={outcome} msg={msg} externalId={seq}",
        version = cef_header(crate::VERSION),
        signature = cef_header(&record.action),
        name = cef_header(&format!("{} {}", record.action, record.target)),
        rt = record.time.as_millisecond(),
        controller = cef_extension(&record.controller),
        object = cef_extension(&object),
        uid = cef_extension(&record.object.uid),
        outcome = record.outcome,
        msg = cef_extension(&record.detail),
        seq = record.seq,
    )
}

/// Escapes a CEF header field: `\` and `|`. The header has no escape for line breaks, and a
/// record must stay on one line, so a line feed becomes a space and a carriage return goes.
fn cef_header(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' => out.push(' '),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Escapes a CEF extension value: `\`, `=` and line feeds (as `\n`); carriage returns go.
fn cef_extension(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cef_header_fields_escape_backslashes_and_pipes() {
        assert_eq!(cef_header(r"a|b\c"), r"a\|b\\c");
        assert_eq!(cef_header("x=y"), "x=y");
    }

    #[test]
    fn cef_header_fields_stay_on_one_line() {
        assert_eq!(cef_header("one\r\ntwo"), "one two");
    }

    #[test]
    fn cef_extension_values_escape_backslashes_equals_signs_and_newlines() {
        assert_eq!(cef_extension(r"a=b\c"), r"a\=b\\c");
        assert_eq!(cef_extension("one\r\ntwo\nthree"), r"one\ntwo\nthree");
        assert_eq!(cef_extension("a|b"), "a|b");
    }

    #[test]
    fn export_formats_are_read_case_insensitively() {
        assert_eq!("CSV".parse::<ExportFormat>().ok(), Some(ExportFormat::Csv));
        assert!("xml".parse::<ExportFormat>().is_err());
    }
}
