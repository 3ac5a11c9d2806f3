use std::collections::BTreeSet;
use std::path::Path;

use super::dump::CHUNK;
use super::lexer::{Event, Lexer};
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
    let sql = "COPY t (a) FROM stdin;\nthis is ; not SQL 'at all\n\\\\. neither\n\\.\nSELECT 1;\n";
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
