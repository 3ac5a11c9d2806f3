-- Standalone mode's object store as releases before versioned state created it, statement
-- for statement. `IF NOT EXISTS` lets this first migration adopt such a database: its tables
-- are kept with every row, and only the version is recorded. Later migrations run on a known
-- schema and do not need it.
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    uid TEXT NOT NULL, generation BIGINT NOT NULL,
    spec_hash TEXT NOT NULL, object_hash TEXT NOT NULL,
    object TEXT NOT NULL, status TEXT,
    file TEXT NOT NULL, line BIGINT NOT NULL, deleting BIGINT NOT NULL,
    created TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));

CREATE TABLE IF NOT EXISTS problems (
    file TEXT NOT NULL, line BIGINT NOT NULL, col BIGINT NOT NULL, field TEXT NOT NULL, reason TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS events (
    time TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
    type TEXT NOT NULL, reason TEXT NOT NULL, action TEXT NOT NULL, note TEXT NOT NULL);

CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, namespace, name, time);
