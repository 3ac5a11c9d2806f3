//! Reading what the tools print: versions, archive listings, `psql --csv` results, and the
//! lines of an error worth quoting. Pure functions.

use std::collections::VecDeque;

use crate::backup::engine::{EngineError, QueryRows, ServerVersion, TableOfContents};

/// How much of the end of standard error is kept for error messages.
const STDERR_TAIL: usize = 64 << 10;
/// Error messages quote at most this many of the tool's last lines, and this many characters.
pub(super) const ERROR_LINES: usize = 20;
const ERROR_CHARS: usize = 2000;

/// Keeps the last [`STDERR_TAIL`] bytes written to it.
#[derive(Debug, Default)]
pub(super) struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    pub(super) fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(STDERR_TAIL)..];
        self.bytes.extend(data);
        let excess = self.bytes.len().saturating_sub(STDERR_TAIL);
        self.bytes.drain(..excess);
    }

    pub(super) fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut all = a.to_vec();
        all.extend_from_slice(b);
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)` → 15, `15.18`.
pub(super) fn parse_version(text: &str) -> Option<ServerVersion> {
    let (_, rest) = text.split_once("(PostgreSQL)")?;
    let version = rest.split_whitespace().next()?;
    let major = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(ServerVersion {
        major,
        text: version.to_owned(),
    })
}

/// Counts the entries of a `pg_restore --list` listing (`3345; 0 16390 TABLE DATA public t
/// owner`); lines starting with `;` are comments.
pub(super) fn parse_toc(listing: &str) -> TableOfContents {
    let mut toc = TableOfContents::default();
    for line in listing.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        toc.entries += 1;
        // `id; tableoid oid DESCRIPTION ...`: skip the three numbers.
        let description = line
            .split_once(';')
            .map(|(_, rest)| rest.trim_start())
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(_, rest)| rest.split_once(' '))
            .map(|(_, rest)| rest);
        if description.is_some_and(|d| d.starts_with("TABLE DATA ")) {
            toc.table_data += 1;
        }
    }
    toc
}

/// Parses `psql --csv` output: a header line, then rows; a field equal to `null` is NULL.
pub(super) fn parse_csv(output: &[u8], null: &str) -> Result<QueryRows, EngineError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(output);
    let mut records = reader.records();
    let unreadable =
        |e: csv::Error| EngineError::Failed(format!("psql printed unreadable CSV: {e}"));
    let Some(header) = records.next() else {
        // A statement without a result (`SET`, `DO`).
        return Ok(QueryRows::default());
    };
    let columns = header
        .map_err(unreadable)?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = Vec::new();
    for record in records {
        rows.push(
            record
                .map_err(unreadable)?
                .iter()
                .map(|v| (v != null).then(|| v.to_owned()))
                .collect(),
        );
    }
    Ok(QueryRows { columns, rows })
}

/// The last [`ERROR_LINES`] non-empty lines of `text`, at most [`ERROR_CHARS`] characters
/// (the end kept), trimmed.
pub(super) fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n");
    let chars = joined.chars().count();
    if chars <= ERROR_CHARS {
        return joined;
    }
    joined
        .chars()
        .skip(chars - ERROR_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The server's `ERROR:` line from psql's standard error (with its DETAIL or HINT), or the
/// last lines when there is none (psql could not connect, say).
pub(super) fn server_error(stderr: &str) -> String {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("ERROR:"));
    let Some(error) = lines.next() else {
        return last_lines(stderr);
    };
    let mut message = error.trim().to_owned();
    for line in lines {
        let line = line.trim();
        if line.starts_with("DETAIL:") || line.starts_with("HINT:") {
            message.push(' ');
            message.push_str(line);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_postgres_version_output() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)\n"),
            Some(ServerVersion {
                major: 15,
                text: "15.18".to_owned()
            })
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17.2\n").map(|v| v.major),
            Some(17)
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 18beta1").map(|v| v.major),
            Some(18)
        );
        assert_eq!(parse_version("bash: postgres: not found"), None);
    }

    #[test]
    fn a_listing_counts_entries_and_table_data() {
        let listing = "\
;
; Archive created at 2026-11-02 10:00:00 UTC
;     dbname: shop
;
; Selected TOC Entries:
;
5; 2615 16386 SCHEMA - sales app_owner
215; 1259 16387 TABLE public customers postgres
3340; 0 16387 TABLE DATA public customers postgres
3341; 0 16392 TABLE DATA sales orders postgres
3342; 0 0 SEQUENCE SET public customers_id_seq postgres
3343; 0 16399 TABLE public TABLE DATA postgres
";
        assert_eq!(
            parse_toc(listing),
            TableOfContents {
                entries: 6,
                table_data: 2
            }
        );
    }

    #[test]
    fn csv_tells_null_from_the_empty_string_by_the_marker() {
        let rows =
            parse_csv(b"a,b,c\nNULL-x,,\"x,y\"\n1,\" s\",\"l1\nl2\"\n", "NULL-x").expect("CSV");
        assert_eq!(rows.columns, ["a", "b", "c"]);
        assert_eq!(
            rows.rows,
            vec![
                vec![None, Some(String::new()), Some("x,y".to_owned())],
                vec![
                    Some("1".to_owned()),
                    Some(" s".to_owned()),
                    Some("l1\nl2".to_owned())
                ],
            ]
        );
        assert_eq!(
            parse_csv(b"", "NULL-x").expect("empty"),
            QueryRows::default()
        );
    }

    #[test]
    fn error_text_keeps_the_last_lines_and_characters() {
        let text: String = (0..30).map(|i| format!("line {i}\n\n")).collect();
        let kept = last_lines(&text);
        assert!(kept.starts_with("line 10\n"), "{kept}");
        assert!(kept.ends_with("line 29"), "{kept}");
        let long = "x".repeat(5000);
        assert_eq!(last_lines(&long).len(), ERROR_CHARS);
    }

    #[test]
    fn the_server_error_line_is_picked_from_psql_output() {
        let stderr = "ERROR:  relation \"nope\" does not exist\nLINE 1: select * from nope\n  \
                      ^\nHINT:  Perhaps you meant to reference the table \"public.nop\".\n";
        assert_eq!(
            server_error(stderr),
            "ERROR:  relation \"nope\" does not exist HINT:  Perhaps you meant to reference \
             the table \"public.nop\"."
        );
        assert_eq!(
            server_error("psql: error: connection refused\n"),
            "psql: error: connection refused"
        );
    }

    #[test]
    fn the_tail_keeps_the_end_of_what_was_written() {
        let mut tail = Tail::default();
        tail.push(b"start ");
        tail.push(&vec![b'x'; STDERR_TAIL]);
        tail.push(b" end");
        let text = tail.text();
        assert_eq!(text.len(), STDERR_TAIL);
        assert!(
            text.ends_with("x end") && !text.contains("start"),
            "{}",
            &text[..10]
        );
    }
}
