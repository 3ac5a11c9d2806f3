-- The audit log as releases before versioned state created it, statement for statement.
-- `IF NOT EXISTS` lets this first migration adopt such a database: its tables are kept with
-- every record, and only the version is recorded. Later migrations run on a known schema and
-- do not need it.
CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT PRIMARY KEY,
    time TEXT NOT NULL,
    controller TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    generation BIGINT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
