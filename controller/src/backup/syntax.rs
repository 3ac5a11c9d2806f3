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

use std::collections::BTreeSet;
use std::io::BufRead;

use pg_query::NodeEnum;

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

/// SQL between data blocks is parsed in chunks of about this size: one parser call per chunk
/// is much faster than one per statement, and the bound keeps memory flat for dumps made with
/// `--inserts`, which have no data blocks at all.
const CHUNK: usize = 1 << 20;

/// Parses every SQL statement of a plain dump; stops at the first error.
pub fn check_plain(mut reader: impl BufRead) -> Result<SyntaxSummary, SyntaxError> {
    let mut checker = Checker::default();
    let mut line = Vec::with_capacity(1 << 12);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| checker.read_error(e))?;
        if read == 0 {
            break;
        }
        checker.line += 1;
        // Dumps in a non-UTF-8 client encoding still parse: a replaced byte can only be inside
        // a literal, an identifier or a comment, where any character is syntax-neutral.
        let text = String::from_utf8_lossy(&line);
        checker.sql_line(&text)?;
        if let Some(copy) = checker.copy.take() {
            checker.skip_copy_data(&mut reader, &mut line, copy)?;
        }
    }
    checker.flush()?;
    let Checker {
        statements,
        copy_blocks,
        mut roles,
        created,
        connect_database,
        ..
    } = checker;
    roles.retain(|role| !created.contains(role));
    Ok(SyntaxSummary {
        statements,
        copy_blocks,
        roles,
        connect_database,
    })
}

/// Where a `COPY ... FROM stdin` was, for the report of its data.
#[derive(Clone, Copy, Debug)]
struct CopyBlock {
    statement: usize,
    line: u64,
}

#[derive(Default)]
struct Checker {
    /// The number of the line being read.
    line: u64,
    lexer: Lexer,
    /// SQL not yet parsed, and the line it starts on.
    chunk: String,
    chunk_line: u64,
    /// Offsets in `chunk` where psql's statements start.
    starts: Vec<usize>,
    statements: usize,
    copy_blocks: usize,
    copy: Option<CopyBlock>,
    roles: BTreeSet<String>,
    created: BTreeSet<String>,
    connect_database: Option<String>,
}

impl Checker {
    fn error(&self, statement: usize, line: u64, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            statement,
            line,
            message: message.into(),
        }
    }

    /// The number the statement being read will get once parsed.
    fn current_statement(&self) -> usize {
        self.statements + self.starts.len().max(1)
    }

    fn read_error(&self, error: std::io::Error) -> SyntaxError {
        self.error(
            self.current_statement(),
            self.line + 1,
            format!("cannot read the dump: {error}"),
        )
    }

    fn push(&mut self, text: &str) {
        if self.chunk.is_empty() {
            self.chunk_line = self.line;
            self.starts.clear();
            self.starts.push(0);
        }
        self.chunk.push_str(text);
    }

    fn sql_line(&mut self, line: &str) -> Result<(), SyntaxError> {
        let bytes = line.as_bytes();
        let mut from = 0;
        loop {
            match self.lexer.scan(bytes, from) {
                Event::EndOfLine => {
                    self.push(&line[from..]);
                    return Ok(());
                }
                Event::Semicolon(at) => {
                    self.push(&line[from..=at]);
                    from = at + 1;
                    if self.end_statement()? {
                        let rest = &line[from..];
                        if !blank_or_comment(rest) {
                            return Err(self.error(
                                self.statements,
                                self.line,
                                "text follows COPY ... FROM stdin; on its line, where its data must begin on the next line",
                            ));
                        }
                        return Ok(());
                    }
                }
                Event::Backslash(at) => {
                    // Keep the line in the chunk, as a blank one, so line numbers stay right.
                    self.push(&line[from..at]);
                    self.push("\n");
                    return self.meta_command(&line[at..]);
                }
            }
        }
    }

    /// A statement ended at the end of the chunk. Returns whether COPY data follows.
    fn end_statement(&mut self) -> Result<bool, SyntaxError> {
        let first = std::mem::take(&mut self.lexer.first);
        let start = self.starts.last().copied().unwrap_or(0);
        if first == First::Set {
            let statement = self.chunk[start..].to_ascii_lowercase();
            if statement.contains("standard_conforming_strings") {
                // psql learns this from the server after the SET; the lexer needs it to know
                // whether a backslash can escape a quote.
                if statement.contains("off") || statement.contains("false") {
                    self.lexer.standard_strings = false;
                } else if statement.contains("on") || statement.contains("true") {
                    self.lexer.standard_strings = true;
                }
            }
        }
        if first == First::Copy {
            let line = self.chunk_line
                + newlines(&self.chunk[..start + first_token(&self.chunk[start..])]);
            if self.flush()? {
                self.copy_blocks += 1;
                self.copy = Some(CopyBlock {
                    statement: self.statements,
                    line,
                });
                return Ok(true);
            }
            return Ok(false);
        }
        if self.chunk.len() >= CHUNK {
            self.flush()?;
        } else {
            self.starts.push(self.chunk.len());
        }
        Ok(false)
    }

    /// Parses the chunk. Returns whether its last statement is a `COPY ... FROM stdin`.
    ///
    /// The whole chunk goes through `split_with_parser`, which runs the full grammar without
    /// building a parse tree: about eight times faster than `parse`, whose protobuf tree is
    /// then built only for the few statements that can name a role, and for a COPY.
    fn flush(&mut self) -> Result<bool, SyntaxError> {
        let chunk = std::mem::take(&mut self.chunk);
        let starts = std::mem::take(&mut self.starts);
        if chunk.trim().is_empty() {
            return Ok(false);
        }
        let count = match pg_query::split_with_parser(&chunk) {
            Ok(statements) => statements.len(),
            Err(error) => return Err(self.locate(&chunk, &starts, &error)),
        };
        let mut copy_from_stdin = false;
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(chunk.len());
            let piece = &chunk[start..end];
            let body = &piece[first_token(piece)..];
            let last = i + 1 == starts.len();
            let copy = last
                && body
                    .get(..4)
                    .is_some_and(|word| word.eq_ignore_ascii_case("copy"));
            if body.is_empty() || !(copy || may_name_roles(body)) {
                continue;
            }
            let parsed = match pg_query::parse(piece) {
                Ok(parsed) => parsed,
                Err(error) => return Err(self.locate(&chunk, &starts, &error)),
            };
            for raw in &parsed.protobuf.stmts {
                let node = raw.stmt.as_ref().and_then(|stmt| stmt.node.as_ref());
                copy_from_stdin = last
                    && matches!(node, Some(NodeEnum::CopyStmt(copy)) if copy.is_from && copy.filename.is_empty());
                if let Some(node) = node {
                    self.inspect(node);
                }
            }
        }
        self.statements += count;
        Ok(copy_from_stdin)
    }

    /// Finds the statement of a chunk that failed to parse, by parsing psql's statements one
    /// by one. (libpg_query's `split_with_scanner` would split at every semicolon, also inside
    /// `BEGIN ATOMIC ... END` function bodies, and report a valid function as broken.)
    fn locate(&self, chunk: &str, starts: &[usize], chunk_error: &pg_query::Error) -> SyntaxError {
        let mut before = self.statements;
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(chunk.len());
            let piece = &chunk[start..end];
            match pg_query::parse(piece) {
                Ok(parsed) => before += parsed.protobuf.stmts.len(),
                Err(error) => {
                    let line = self.chunk_line + newlines(&chunk[..start + first_token(piece)]);
                    return self.error(before + 1, line, parser_message(&error));
                }
            }
        }
        self.error(
            self.statements + 1,
            self.chunk_line,
            parser_message(chunk_error),
        )
    }

    /// Skips the data of a `COPY ... FROM stdin` up to its `\.` line, without parsing or
    /// allocating.
    fn skip_copy_data(
        &mut self,
        reader: &mut impl BufRead,
        line: &mut Vec<u8>,
        copy: CopyBlock,
    ) -> Result<(), SyntaxError> {
        loop {
            line.clear();
            let read = reader.read_until(b'\n', line).map_err(|e| {
                self.error(
                    copy.statement,
                    copy.line,
                    format!("cannot read the COPY data: {e}"),
                )
            })?;
            if read == 0 {
                return Err(self.error(
                    copy.statement,
                    copy.line,
                    "the COPY data ends without its \\. line: the dump is truncated",
                ));
            }
            self.line += 1;
            if matches!(line.as_slice(), b"\\.\n" | b"\\.\r\n" | b"\\.") {
                return Ok(());
            }
        }
    }

    /// A backslash outside quotes and comments: psql runs what follows as a meta-command.
    fn meta_command(&mut self, text: &str) -> Result<(), SyntaxError> {
        let statement = self.current_statement();
        let line = self.line;
        let (name, arguments) = split_meta_command(text);
        if !matches!(name, "connect" | "c" | "restrict" | "unrestrict") {
            return Err(self.error(
                statement,
                line,
                format!("psql meta-command \\{name} is not allowed in a dump"),
            ));
        }
        if self.lexer.has_content {
            return Err(self.error(
                statement,
                line,
                format!("psql meta-command \\{name} inside a statement is not allowed in a dump"),
            ));
        }
        let arguments = meta_arguments(arguments).map_err(|next| {
            self.error(
                statement,
                line,
                format!("psql meta-command \\{next} is not allowed in a dump"),
            )
        })?;
        if matches!(name, "connect" | "c") {
            // Options such as pg_dump's `-reuse-previous=on` come first.
            let target = arguments.iter().find(|a| !a.starts_with('-'));
            if let Some(database) = target.and_then(|target| connect_target(target)) {
                self.connect_database = Some(database);
            }
        }
        Ok(())
    }

    /// Notes the roles a statement refers to or creates.
    fn inspect(&mut self, node: &NodeEnum) {
        match node {
            NodeEnum::CreateRoleStmt(create) => {
                self.created.insert(create.role.clone());
                self.role_specs(&create.options);
            }
            // `DROP ROLE IF EXISTS` (pg_dumpall --clean) needs no role.
            NodeEnum::DropRoleStmt(_) => {}
            NodeEnum::VariableSetStmt(set)
                if set.name == "role" || set.name == "session_authorization" =>
            {
                let value = set.args.first().and_then(|arg| match &arg.node {
                    Some(NodeEnum::AConst(constant)) => match &constant.val {
                        Some(pg_query::protobuf::a_const::Val::Sval(text)) => {
                            Some(text.sval.as_str())
                        }
                        _ => None,
                    },
                    _ => None,
                });
                if let Some(role) = value
                    && role != "none"
                {
                    self.role(role);
                }
            }
            // The most common statement of a dump: only its OWNER TO names a role.
            NodeEnum::AlterTableStmt(alter) => {
                for command in &alter.cmds {
                    if let Some(NodeEnum::AlterTableCmd(command)) = &command.node
                        && let Some(owner) = &command.newowner
                    {
                        self.role_spec(owner.roletype, &owner.rolename);
                    }
                }
            }
            NodeEnum::AlterOwnerStmt(alter) => {
                if let Some(owner) = &alter.newowner {
                    self.role_spec(owner.roletype, &owner.rolename);
                }
            }
            NodeEnum::CreatedbStmt(create) => {
                for option in &create.options {
                    if let Some(NodeEnum::DefElem(option)) = &option.node
                        && option.defname == "owner"
                        && let Some(NodeEnum::String(owner)) =
                            option.arg.as_ref().and_then(|arg| arg.node.as_ref())
                    {
                        self.role(&owner.sval);
                    }
                }
            }
            NodeEnum::GrantRoleStmt(grant) => {
                for granted in &grant.granted_roles {
                    if let Some(NodeEnum::AccessPriv(role)) = &granted.node {
                        self.role(&role.priv_name);
                    }
                }
                self.role_specs(node);
            }
            // Statements whose role names are RoleSpec nodes at various depths (grantees,
            // FOR ROLE, AUTHORIZATION, policies' TO, user mappings, tablespace owners).
            NodeEnum::GrantStmt(_)
            | NodeEnum::AlterDefaultPrivilegesStmt(_)
            | NodeEnum::CreateSchemaStmt(_)
            | NodeEnum::CreatePolicyStmt(_)
            | NodeEnum::AlterPolicyStmt(_)
            | NodeEnum::AlterRoleStmt(_)
            | NodeEnum::AlterRoleSetStmt(_)
            | NodeEnum::CreateUserMappingStmt(_)
            | NodeEnum::AlterUserMappingStmt(_)
            | NodeEnum::CreateTableSpaceStmt(_)
            | NodeEnum::ReassignOwnedStmt(_)
            | NodeEnum::DropOwnedStmt(_) => self.role_specs(node),
            _ => {}
        }
    }

    /// Every RoleSpec inside a node, found generically through its serde form: RoleSpec is the
    /// only node with `roletype` and `rolename` fields.
    fn role_specs(&mut self, node: &impl serde::Serialize) {
        fn walk(value: &serde_json::Value, found: &mut Vec<(i64, String)>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let (Some(kind), Some(serde_json::Value::String(name))) = (
                        map.get("roletype").and_then(|k| k.as_i64()),
                        map.get("rolename"),
                    ) {
                        found.push((kind, name.clone()));
                    }
                    map.values().for_each(|v| walk(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        // Serialising these derived types cannot fail: they have no maps and no custom code.
        let Ok(value) = serde_json::to_value(node) else {
            return;
        };
        let mut found = Vec::new();
        walk(&value, &mut found);
        for (kind, name) in found {
            self.role_spec(kind as i32, &name);
        }
    }

    fn role_spec(&mut self, kind: i32, name: &str) {
        // PUBLIC, CURRENT_USER and the like are not role names.
        if kind == pg_query::protobuf::RoleSpecType::RolespecCstring as i32 {
            self.role(name);
        }
    }

    fn role(&mut self, name: &str) {
        // `postgres` and the `pg_` roles exist on every server.
        if name.is_empty() || name == "postgres" || name == "public" || name.starts_with("pg_") {
            return;
        }
        if !self.roles.contains(name) {
            self.roles.insert(name.to_string());
        }
    }
}

/// Whether a statement has a word without which it cannot name a role (OWNER TO, GRANT,
/// REVOKE, AUTHORIZATION, ROLE, USER, GROUP, POLICY ... TO, REASSIGN / DROP OWNED). A false
/// positive costs one parse; a missing word here would lose a role.
fn may_name_roles(statement: &str) -> bool {
    const WORDS: [&[u8]; 9] = [
        b"owner",
        b"owned",
        b"grant",
        b"revoke",
        b"authorization",
        b"role",
        b"user",
        b"group",
        b"policy",
    ];
    statement
        .as_bytes()
        .split(|b| !b.is_ascii_alphabetic())
        .any(|word| WORDS.iter().any(|known| word.eq_ignore_ascii_case(known)))
}

fn parser_message(error: &pg_query::Error) -> String {
    match error {
        pg_query::Error::Parse(message) | pg_query::Error::Split(message) => message.clone(),
        pg_query::Error::Conversion(_) => "the statement contains a NUL byte".to_string(),
        other => other.to_string(),
    }
}

fn newlines(text: &str) -> u64 {
    text.bytes().filter(|&b| b == b'\n').count() as u64
}

/// The offset of the first token of a statement, past whitespace and comments.
fn first_token(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => return i,
        }
    }
    i
}

fn blank_or_comment(text: &str) -> bool {
    let text = text.trim();
    text.is_empty() || text.starts_with("--")
}

/// `\connect -reuse-previous=on "dbname='x'"` → ("connect", the rest).
fn split_meta_command(text: &str) -> (&str, &str) {
    let text = text.strip_prefix('\\').unwrap_or(text);
    let end = text
        .find(|c: char| c.is_whitespace() || c == '\\')
        .unwrap_or(text.len());
    (&text[..end], &text[end..])
}

/// A meta-command's arguments, unquoted as psql does. A backslash outside quotes starts the
/// next meta-command on the same line: that command's name is the error.
fn meta_arguments(text: &str) -> Result<Vec<String>, String> {
    let mut arguments = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&c) = chars.peek() else {
            return Ok(arguments);
        };
        if c == '\\' {
            let rest: String = chars.collect();
            return Err(split_meta_command(&rest).0.to_string());
        }
        let mut argument = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '\\' {
                break;
            }
            chars.next();
            match c {
                '"' => {
                    // SQL-identifier quoting: "" is a quote.
                    while let Some(c) = chars.next() {
                        if c == '"' && chars.next_if_eq(&'"').is_none() {
                            break;
                        }
                        argument.push(c);
                    }
                }
                '\'' => {
                    while let Some(c) = chars.next() {
                        match c {
                            '\'' if chars.next_if_eq(&'\'').is_none() => break,
                            '\\' => argument.extend(chars.next()),
                            c => argument.push(c),
                        }
                    }
                }
                c => argument.push(c),
            }
        }
        arguments.push(argument);
    }
}

/// The database of a `\connect` argument: a name, or a connection string as pg_dump writes
/// for names with unusual characters (`dbname='my db'`).
fn connect_target(argument: &str) -> Option<String> {
    if !argument.contains('=') {
        return Some(argument.to_string());
    }
    let value = argument.split_once("dbname=")?.1;
    let mut name = String::new();
    let mut chars = value.chars();
    if value.starts_with('\'') {
        chars.next();
        while let Some(c) = chars.next() {
            match c {
                '\'' => break,
                '\\' => name.extend(chars.next()),
                c => name.push(c),
            }
        }
    } else {
        name.extend(chars.take_while(|c| !c.is_whitespace()));
    }
    Some(name)
}

/// What the lexer met.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    EndOfLine,
    /// A semicolon that ends a statement, at this offset.
    Semicolon(usize),
    /// A backslash outside quotes and comments, at this offset.
    Backslash(usize),
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Normal,
    /// In '...'; `escapes` for E'...' (or any string without standard_conforming_strings).
    Quote {
        escapes: bool,
    },
    DoubleQuote,
    /// In a dollar-quoted string; the delimiter, such as `$$` or `$body$`.
    Dollar(String),
    /// In a /* comment */, at this nesting depth.
    Comment(u32),
}

/// A statement's first word, for the two statements the reader must act on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum First {
    #[default]
    None,
    Copy,
    Set,
    Other,
}

/// psql's lexer, reduced to what finds statement ends and meta-commands (`psqlscan.l`).
#[derive(Debug)]
struct Lexer {
    state: State,
    paren_depth: u32,
    /// psql's heuristic for `BEGIN ATOMIC ... END` bodies of CREATE FUNCTION / PROCEDURE,
    /// whose semicolons do not end the statement.
    begin_depth: u32,
    identifiers: [u8; 4],
    identifier_count: usize,
    /// Whether the statement has begun (anything but blanks and comments).
    has_content: bool,
    first: First,
    standard_strings: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            state: State::Normal,
            paren_depth: 0,
            begin_depth: 0,
            identifiers: [0; 4],
            identifier_count: 0,
            has_content: false,
            first: First::None,
            standard_strings: true,
        }
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The length of a dollar-quote delimiter (`$$`, `$tag$`) at the start of `text`, if any.
fn dollar_delimiter(text: &[u8]) -> Option<usize> {
    let mut i = 1;
    if text.get(i).is_some_and(|&b| is_ident_start(b)) {
        i += 1;
        while text
            .get(i)
            .is_some_and(|&b| is_ident_start(b) || b.is_ascii_digit())
        {
            i += 1;
        }
    }
    (text.get(i) == Some(&b'$')).then_some(i + 1)
}

impl Lexer {
    fn scan(&mut self, line: &[u8], mut i: usize) -> Event {
        while i < line.len() {
            match &mut self.state {
                State::Quote { escapes } => {
                    let escapes = *escapes;
                    while i < line.len() {
                        match line[i] {
                            b'\\' if escapes => i += 2,
                            b'\'' if line.get(i + 1) == Some(&b'\'') => i += 2,
                            b'\'' => {
                                self.state = State::Normal;
                                i += 1;
                                break;
                            }
                            _ => i += 1,
                        }
                    }
                }
                State::DoubleQuote => {
                    while i < line.len() {
                        match line[i] {
                            b'"' if line.get(i + 1) == Some(&b'"') => i += 2,
                            b'"' => {
                                self.state = State::Normal;
                                i += 1;
                                break;
                            }
                            _ => i += 1,
                        }
                    }
                }
                State::Dollar(delimiter) => {
                    let delimiter = delimiter.as_bytes();
                    match line[i..]
                        .windows(delimiter.len())
                        .position(|window| window == delimiter)
                    {
                        Some(at) => {
                            i += at + delimiter.len();
                            self.state = State::Normal;
                        }
                        None => return Event::EndOfLine,
                    }
                }
                State::Comment(depth) => {
                    while i < line.len() {
                        if line[i..].starts_with(b"/*") {
                            *depth += 1;
                            i += 2;
                        } else if line[i..].starts_with(b"*/") {
                            *depth -= 1;
                            i += 2;
                            if *depth == 0 {
                                self.state = State::Normal;
                                break;
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
                State::Normal => {
                    let b = line[i];
                    let next = line.get(i + 1).copied();
                    match b {
                        b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
                        b'-' if next == Some(b'-') => return Event::EndOfLine,
                        b'/' if next == Some(b'*') => {
                            self.state = State::Comment(1);
                            i += 2;
                        }
                        b'\\' => return Event::Backslash(i),
                        b';' => {
                            if self.paren_depth == 0 && self.begin_depth == 0 {
                                self.identifier_count = 0;
                                self.has_content = false;
                                return Event::Semicolon(i);
                            }
                            i += 1;
                        }
                        _ => {
                            self.has_content = true;
                            i = self.token(line, i);
                        }
                    }
                }
            }
        }
        Event::EndOfLine
    }

    /// Reads one token starting at `i` in the Normal state; returns where it ends.
    fn token(&mut self, line: &[u8], i: usize) -> usize {
        let b = line[i];
        match b {
            b'\'' => {
                self.state = State::Quote {
                    escapes: !self.standard_strings,
                };
                i + 1
            }
            b'"' => {
                self.state = State::DoubleQuote;
                i + 1
            }
            b'(' => {
                self.paren_depth += 1;
                i + 1
            }
            b')' => {
                self.paren_depth = self.paren_depth.saturating_sub(1);
                i + 1
            }
            b'$' => match dollar_delimiter(&line[i..]) {
                Some(length) => {
                    let delimiter = String::from_utf8_lossy(&line[i..i + length]).into_owned();
                    self.state = State::Dollar(delimiter);
                    i + length
                }
                // A parameter ($1) or a stray dollar sign.
                None => {
                    let mut end = i + 1;
                    while line.get(end).is_some_and(u8::is_ascii_digit) {
                        end += 1;
                    }
                    end
                }
            },
            b if b.is_ascii_digit() => {
                let mut end = i + 1;
                while line
                    .get(end)
                    .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
                {
                    end += 1;
                }
                end
            }
            b if is_ident_start(b) => {
                let mut end = i + 1;
                while line.get(end).is_some_and(|&b| is_ident_cont(b)) {
                    end += 1;
                }
                let word = &line[i..end];
                let next = line.get(end).copied();
                // E'...', U&'...', U&"...": prefixes glued to a quote, not identifiers.
                if word.eq_ignore_ascii_case(b"e") && next == Some(b'\'') {
                    self.state = State::Quote { escapes: true };
                    return end + 1;
                }
                if word.eq_ignore_ascii_case(b"u") && line[end..].starts_with(b"&'") {
                    self.state = State::Quote { escapes: false };
                    return end + 2;
                }
                if word.eq_ignore_ascii_case(b"u") && line[end..].starts_with(b"&\"") {
                    self.state = State::DoubleQuote;
                    return end + 2;
                }
                self.identifier(word);
                end
            }
            _ => i + 1,
        }
    }

    /// psql's identifier bookkeeping: the statement's first word, and BEGIN / CASE / END
    /// inside CREATE [OR REPLACE] FUNCTION / PROCEDURE.
    fn identifier(&mut self, word: &[u8]) {
        if self.identifier_count == 0 {
            self.identifiers = [0; 4];
            self.first = if word.eq_ignore_ascii_case(b"copy") {
                First::Copy
            } else if word.eq_ignore_ascii_case(b"set") {
                First::Set
            } else {
                First::Other
            };
        }
        let tracked = [&b"create"[..], b"function", b"procedure", b"or", b"replace"]
            .iter()
            .any(|keyword| word.eq_ignore_ascii_case(keyword));
        if tracked && self.identifier_count < self.identifiers.len() {
            self.identifiers[self.identifier_count] = word[0].to_ascii_lowercase();
        }
        self.identifier_count += 1;
        let ids = self.identifiers;
        let in_routine = ids[0] == b'c'
            && (ids[1] == b'f'
                || ids[1] == b'p'
                || (ids[1] == b'o' && ids[2] == b'r' && (ids[3] == b'f' || ids[3] == b'p')));
        if in_routine && self.paren_depth == 0 {
            if word.eq_ignore_ascii_case(b"begin") {
                self.begin_depth += 1;
            } else if word.eq_ignore_ascii_case(b"case") {
                if self.begin_depth >= 1 {
                    self.begin_depth += 1;
                }
            } else if word.eq_ignore_ascii_case(b"end") {
                self.begin_depth = self.begin_depth.saturating_sub(1);
            }
        }
    }
}

/// Checks a data check's query: one plain, read-only SELECT (WITH ... SELECT and VALUES
/// included). Returns a one-line reason, or the parser's message.
///
/// This is a first gate, not the guarantee: a SELECT can still call a function that writes,
/// so the query must also run in a read-only transaction.
pub fn check_query(sql: &str) -> Result<(), String> {
    let parsed = pg_query::parse(sql).map_err(|e| parser_message(&e))?;
    let statements = &parsed.protobuf.stmts;
    let node = match statements.as_slice() {
        [] => return Err("the query is empty".to_string()),
        [one] => one.stmt.as_ref().and_then(|stmt| stmt.node.as_ref()),
        many => {
            return Err(format!(
                "the query has {} statements; exactly one SELECT is allowed",
                many.len()
            ));
        }
    };
    let Some(NodeEnum::SelectStmt(_)) = node else {
        let types = parsed.statement_types();
        let kind = types
            .first()
            .map(|kind| statement_name(kind))
            .unwrap_or("an empty statement");
        return Err(format!("only a SELECT is allowed, not {kind}"));
    };
    let value = serde_json::to_value(node).map_err(|e| format!("cannot inspect the query: {e}"))?;
    match forbidden(&value) {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

fn statement_name(kind: &str) -> &str {
    match kind {
        "InsertStmt" => "INSERT",
        "UpdateStmt" => "UPDATE",
        "DeleteStmt" => "DELETE",
        "MergeStmt" => "MERGE",
        "CreateStmt" => "CREATE TABLE",
        "CreateTableAsStmt" => "CREATE TABLE AS",
        "DropStmt" => "DROP",
        "TruncateStmt" => "TRUNCATE",
        "VariableSetStmt" => "SET",
        "TransactionStmt" => "a transaction command",
        "CallStmt" => "CALL",
        "DoStmt" => "DO",
        "CopyStmt" => "COPY",
        "ExplainStmt" => "EXPLAIN",
        other => other,
    }
}

/// The first thing in a SELECT's tree that makes it more than a read.
fn forbidden(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match key.as_str() {
                    "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                        return Some(format!(
                            "a data-modifying {} inside the query is not allowed",
                            statement_name(key)
                        ));
                    }
                    "into_clause" if !child.is_null() => {
                        return Some(
                            "SELECT INTO creates a table; only a plain SELECT is allowed"
                                .to_string(),
                        );
                    }
                    "locking_clause" if child.as_array().is_some_and(|a| !a.is_empty()) => {
                        return Some(
                            "FOR UPDATE / FOR SHARE locks rows; only a plain SELECT is allowed"
                                .to_string(),
                        );
                    }
                    _ => {}
                }
                if let Some(reason) = forbidden(child) {
                    return Some(reason);
                }
            }
            None
        }
        serde_json::Value::Array(items) => items.iter().find_map(forbidden),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn check(sql: &str) -> Result<SyntaxSummary, SyntaxError> {
        check_plain(sql.as_bytes())
    }

    fn fixture() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backup/testdata/app.sql");
        std::fs::read_to_string(path).unwrap()
    }

    fn roles(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn a_real_plain_dump_parses_with_its_roles_copy_block_and_database() {
        let summary = check(&fixture()).unwrap();
        assert_eq!(summary.copy_blocks, 1);
        assert_eq!(summary.roles, roles(&["fixture_owner", "fixture_reader"]));
        assert_eq!(summary.connect_database.as_deref(), Some("fixture_app"));
        // 10 settings before and after \connect, CREATE/ALTER DATABASE, schema, function,
        // table, their owners, two more SETs, COPY, the constraint, GRANT, default privileges.
        assert_eq!(summary.statements, 34);
    }

    #[test]
    fn a_syntax_error_names_the_statement_number_and_its_line() {
        let dump = fixture().replace("CREATE TABLE shop.items", "CREATE TABLEE shop.items");
        let error = check(&dump).unwrap_err();
        let line = dump
            .lines()
            .position(|line| line.starts_with("CREATE TABLEE"))
            .unwrap() as u64
            + 1;
        assert_eq!(
            error,
            SyntaxError {
                statement: 29,
                line,
                message: "syntax error at or near \"TABLEE\"".to_string(),
            }
        );
        assert_eq!(
            error.to_string(),
            format!("statement 29 (line {line}): syntax error at or near \"TABLEE\"")
        );
    }

    #[test]
    fn an_error_after_copy_data_is_counted_across_the_whole_file() {
        let dump = fixture().replace("GRANT SELECT ON TABLE", "GRANT SELECT ONN TABLE");
        let error = check(&dump).unwrap_err();
        let line = dump
            .lines()
            .position(|l| l.starts_with("GRANT SELECT ONN"))
            .unwrap() as u64
            + 1;
        assert_eq!((error.statement, error.line), (33, line));
    }

    #[test]
    fn copy_data_is_never_parsed() {
        let sql =
            "COPY t (a) FROM stdin;\nthis is ; not SQL 'at all\n\\\\. neither\n\\.\nSELECT 1;\n";
        let summary = check(sql).unwrap();
        assert_eq!((summary.statements, summary.copy_blocks), (2, 1));
    }

    #[test]
    fn copy_data_without_its_end_line_is_truncated() {
        let error = check("SELECT 1;\n\nCOPY t (a) FROM stdin;\n1\n2\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "statement 2 (line 3): the COPY data ends without its \\. line: the dump is truncated"
        );
    }

    #[test]
    fn copy_from_a_file_or_to_stdout_has_no_data_block() {
        let summary = check("COPY t FROM '/tmp/x';\nCOPY t TO stdout;\nSELECT 1;\n").unwrap();
        assert_eq!((summary.statements, summary.copy_blocks), (3, 0));
    }

    #[test]
    fn semicolons_in_quotes_dollar_bodies_comments_and_atomic_bodies_do_not_split() {
        let sql = r#"
SELECT 'a;b', E'it\'s;', "we;ird", $$ ; $$, $body$ x; $$ y; $body$ /* c; /* nested; */ */;
-- a comment; with \! a backslash
CREATE FUNCTION f() RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT 1;
  SELECT CASE WHEN true THEN 2 END;
END;
CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b);
SELECT a$b$ FROM t;
"#;
        let summary = check(sql).unwrap();
        assert_eq!(summary.statements, 4);
    }

    #[test]
    fn forbidden_meta_commands_are_errors_with_their_position() {
        for (sql, command) in [
            ("SELECT 1;\n\\! rm -rf /\n", "!"),
            ("SELECT 1;\n\\i /etc/passwd\n", "i"),
            ("SELECT 1;\n\\o /tmp/x\n", "o"),
            ("SELECT 1;\n\\copy t from '/etc/passwd'\n", "copy"),
            ("SELECT 1; \\!id\n", "!id"),
            ("SELECT 1;\n\\connect db \\! id\n", "!"),
        ] {
            let error = check(sql).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "statement 2 (line {}): psql meta-command \\{command} is not allowed in a dump",
                    if sql.starts_with("SELECT 1; ") { 1 } else { 2 }
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn an_allowed_meta_command_inside_a_statement_is_refused() {
        let error = check("SELECT\n\\connect other\n1;\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "statement 1 (line 2): psql meta-command \\connect inside a statement is not allowed in a dump"
        );
    }

    #[test]
    fn connect_records_the_database_in_each_of_pg_dumps_spellings() {
        for (line, database) in [
            ("\\connect app", "app"),
            ("\\c app", "app"),
            ("\\connect \"MyApp\"", "MyApp"),
            ("\\connect -reuse-previous=on \"dbname='my db'\"", "my db"),
            ("\\connect -reuse-previous=on \"dbname='it\\'s'\"", "it's"),
        ] {
            let summary = check(&format!("SELECT 1;\n{line}\nSELECT 2;\n")).unwrap();
            assert_eq!(
                summary.connect_database.as_deref(),
                Some(database),
                "{line}"
            );
            assert_eq!(summary.statements, 2);
        }
    }

    #[test]
    fn text_after_copy_from_stdin_on_its_line_is_refused() {
        let error = check("COPY t FROM stdin; SELECT 1;\n\\.\n").unwrap_err();
        assert_eq!(error.statement, 1);
        assert!(error.message.starts_with("text follows COPY"), "{error}");
    }

    #[test]
    fn roles_are_collected_from_every_kind_of_reference() {
        let sql = r#"
CREATE ROLE made_here;
ALTER ROLE made_here SET search_path = public;
ALTER TABLE t OWNER TO table_owner;
ALTER FUNCTION f() OWNER TO "Function Owner";
ALTER SCHEMA s OWNER TO CURRENT_USER;
GRANT SELECT ON t TO reader, PUBLIC, made_here, pg_read_all_data;
REVOKE ALL ON t FROM revoked;
ALTER DEFAULT PRIVILEGES FOR ROLE definer IN SCHEMA s GRANT SELECT ON TABLES TO grantee;
CREATE SCHEMA auth AUTHORIZATION schema_owner;
CREATE POLICY p ON t TO policy_role USING (true);
SET ROLE set_role;
SET SESSION AUTHORIZATION 'session_role';
GRANT parent TO child;
CREATE DATABASE d OWNER db_owner;
ALTER DATABASE d OWNER TO postgres;
SET ROLE NONE;
DROP ROLE IF EXISTS dropped;
"#;
        let summary = check(sql).unwrap();
        assert_eq!(
            summary.roles,
            roles(&[
                "Function Owner",
                "child",
                "db_owner",
                "definer",
                "grantee",
                "parent",
                "policy_role",
                "reader",
                "revoked",
                "schema_owner",
                "session_role",
                "set_role",
                "table_owner",
            ])
        );
    }

    #[test]
    fn a_parse_error_at_the_end_of_the_file_is_found() {
        let error = check("SELECT 1;\nSELECT 'unterminated;\n").unwrap_err();
        assert_eq!(error.statement, 2);
        assert_eq!(error.line, 2);
        assert!(
            error.message.contains("unterminated quoted string"),
            "{error}"
        );
    }

    #[test]
    fn large_dumps_are_parsed_in_chunks_with_exact_numbers() {
        let mut sql = String::new();
        for i in 0..40_000 {
            sql.push_str(&format!(
                "INSERT INTO t VALUES ({i}, 'some text to make it longer');\n"
            ));
        }
        sql.push_str("SELEC 1;\n");
        assert!(sql.len() > 2 * CHUNK);
        let error = check(&sql).unwrap_err();
        assert_eq!((error.statement, error.line), (40_001, 40_001));
    }

    #[test]
    fn without_standard_conforming_strings_a_backslash_escapes_a_quote() {
        // pg_dump doubles backslashes then (never writes \'), which parses either way.
        let sql = "SET standard_conforming_strings = off;\nSELECT 'a\\\\';\nSET standard_conforming_strings = on;\nSELECT 'c\\';\n";
        assert_eq!(check(sql).unwrap().statements, 4);
        // psql's view, which decides what is a meta-command: the string goes on past \'.
        let mut lexer = Lexer {
            standard_strings: false,
            ..Lexer::default()
        };
        assert_eq!(lexer.scan(br"SELECT 'a\'; \! b';", 0), Event::Semicolon(18));
        let mut lexer = Lexer::default();
        assert_eq!(lexer.scan(br"SELECT 'a\'; \! b';", 0), Event::Semicolon(11));
    }

    #[test]
    fn data_queries_must_be_one_plain_select() {
        check_query("SELECT count(*) FROM shop.items WHERE id > 1").unwrap();
        check_query("WITH x AS (SELECT 1 AS a) SELECT a FROM x").unwrap();
        check_query("VALUES (1), (2)").unwrap();
        check_query("SELECT 1 UNION SELECT 2").unwrap();
        for (sql, reason) in [
            ("", "the query is empty"),
            (
                "SELECT 1; SELECT 2",
                "the query has 2 statements; exactly one SELECT is allowed",
            ),
            ("DELETE FROM t", "only a SELECT is allowed, not DELETE"),
            (
                "CREATE TABLE t (a int)",
                "only a SELECT is allowed, not CREATE TABLE",
            ),
            (
                "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
                "a data-modifying DELETE inside the query is not allowed",
            ),
            (
                "SELECT * INTO copy FROM t",
                "SELECT INTO creates a table; only a plain SELECT is allowed",
            ),
            (
                "SELECT * FROM t FOR UPDATE",
                "FOR UPDATE / FOR SHARE locks rows; only a plain SELECT is allowed",
            ),
            (
                "SELECT 1 UNION (SELECT a FROM t FOR SHARE)",
                "FOR UPDATE / FOR SHARE locks rows; only a plain SELECT is allowed",
            ),
            ("SELEC 1", "syntax error at or near \"SELEC\""),
        ] {
            assert_eq!(check_query(sql).unwrap_err(), reason, "{sql}");
        }
    }
}
