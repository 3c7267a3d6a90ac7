-- Cross-process advisory locks: one row per held lock, with its owner and lease.
-- A lease whose expires_at has passed may be taken over by another owner, so a
-- holder killed with -9 loses the lock when its lease ends.
CREATE TABLE advisory_locks (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    acquired_at TEXT NOT NULL,   -- UTC, 2026-01-01T00:00:00.000000Z
    expires_at  TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX advisory_locks_expires_at ON advisory_locks (expires_at);
