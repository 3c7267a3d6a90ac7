-- The bootstrap rule (PostgreSQL twin of ../0005_agent_bootstrap.sql): the first
-- registration of an agent with a token is recorded in one row nothing deletes, so
-- unauthenticated registration never reopens once every token has lapsed.
CREATE TABLE agent_bootstrap (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    first_agent_id TEXT NOT NULL REFERENCES agents (id),
    registered_at  TEXT NOT NULL
);

-- A database that already has agents was bootstrapped.
INSERT INTO agent_bootstrap (id, first_agent_id, registered_at)
SELECT 1, id, created_at FROM agents WHERE local = 0 ORDER BY created_at, id LIMIT 1;
