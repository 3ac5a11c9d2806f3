//! The query policy of data checks: a query must be one plain, read-only SELECT. Separate from
//! the dump check: it shares only the parser, and it guards what the operator runs against a
//! restored database, not what a dump may contain.

use pg_query::NodeEnum;

use super::parser_message;

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
