//! The check of a plain dump: reads it line by line with the psql lexer, parses the SQL
//! between data blocks in chunks, skips `COPY ... FROM stdin` data, allows only the
//! meta-commands pg_dump writes, and collects the roles the dump needs but does not create.
//! Separate from the lexer (which only finds where things end) and from the query policy
//! (which has nothing to do with dumps).

use std::collections::BTreeSet;
use std::io::BufRead;

use pg_query::NodeEnum;

use super::lexer::{Event, First, Lexer, blank_or_comment, first_token};
use super::{SyntaxError, SyntaxSummary, parser_message};

/// SQL between data blocks is parsed in chunks of about this size: one parser call per chunk
/// is much faster than one per statement, and the bound keeps memory flat for dumps made with
/// `--inserts`, which have no data blocks at all.
pub(super) const CHUNK: usize = 1 << 20;

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

fn newlines(text: &str) -> u64 {
    text.bytes().filter(|&b| b == b'\n').count() as u64
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
