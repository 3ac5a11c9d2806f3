//! The SQL syntax check of a plain dump, and of the data checks' queries, with PostgreSQL's
//! own parser (libpg_query).
//!
//! A plain dump is a psql script, so it is read the way psql reads it: a small lexer, modelled
//! on psql's (`psqlscan.l`), finds where statements end, where `COPY ... FROM stdin` data
//! begins, and where a backslash starts a meta-command. Everything between data blocks goes to
//! the parser; the data itself (usually nearly all of the file) is skipped line by line.
//!
//! The meta-command rule is a security boundary: the dump is later fed to psql, where `\!`
//! runs a shell command and `\o`, `\i` or `\copy` touch files. Only what pg_dump itself writes
//! is allowed.
//!
//! The code is split by job: `lexer` is the psql lexer (statement ends, quotes, comments,
//! meta-command starts), `dump` reads a plain dump with it and enforces the meta-command rule
//! and the role inventory, and `policy` checks a data check's query. Only [`check_plain`]
//! and [`check_query`] are used outside.

use std::collections::BTreeSet;

mod dump;
mod lexer;
mod policy;

pub use dump::check_plain;
pub use policy::check_query;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyntaxSummary {
    /// SQL statements parsed (meta-commands and COPY data are not statements).
    pub statements: usize,
    /// `COPY ... FROM stdin` blocks whose data was skipped.
    pub copy_blocks: usize,
    /// Roles the dump refers to (owners, grantees, `SET ROLE` ...) that it does not create
    /// itself and that a fresh server lacks: the restore must create them first.
    pub roles: BTreeSet<String>,
    /// The database of the last `\connect` (a dump made with `pg_dump -C`): where the
    /// restored data ends up.
    pub connect_database: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("statement {statement} (line {line}): {message}")]
pub struct SyntaxError {
    /// 1-based, counting the SQL statements of the whole file.
    pub statement: usize,
    /// 1-based line where the statement starts.
    pub line: u64,
    pub message: String,
}

fn parser_message(error: &pg_query::Error) -> String {
    match error {
        pg_query::Error::Parse(message) | pg_query::Error::Split(message) => message.clone(),
        pg_query::Error::Conversion(_) => "the statement contains a NUL byte".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
