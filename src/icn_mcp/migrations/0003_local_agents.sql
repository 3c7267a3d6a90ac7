-- Local agents: the agent a process with direct access to the database file acts for
-- (`icn-mcp serve --stdio`). It has no bearer token, is found again by name on every
-- start, and is never removed by cleanup_expired (which removes agents whose tokens
-- can no longer be used). At most one live local agent per name, even when several
-- processes start at once.
ALTER TABLE agents ADD COLUMN local INTEGER NOT NULL DEFAULT 0 CHECK (local IN (0, 1));

CREATE UNIQUE INDEX agents_local_name ON agents (name) WHERE local = 1 AND revoked_at IS NULL;
