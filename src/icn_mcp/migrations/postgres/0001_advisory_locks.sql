-- Cross-process advisory locks (PostgreSQL twin of ../0001_advisory_locks.sql): one
-- row per held lock, with its owner and lease. Times are the database server's own
-- clock (now()), so hosts whose clocks disagree can never steal a live lease.
CREATE TABLE advisory_locks (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX advisory_locks_expires_at ON advisory_locks (expires_at);
