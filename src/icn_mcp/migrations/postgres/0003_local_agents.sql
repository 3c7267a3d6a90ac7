-- Local agents (PostgreSQL twin of ../0003_local_agents.sql): at most one live local
-- agent per name, even when several processes start at once.
ALTER TABLE agents ADD COLUMN local INTEGER NOT NULL DEFAULT 0 CHECK (local IN (0, 1));

CREATE UNIQUE INDEX agents_local_name ON agents (name) WHERE local = 1 AND revoked_at IS NULL;
