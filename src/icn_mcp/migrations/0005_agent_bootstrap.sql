-- The bootstrap rule: registering an agent without any credential is allowed only
-- while no agent has ever been registered. Counting active agents is not enough:
-- once every token had lapsed (TTL plus grace), been revoked or cleaned up, anyone
-- could register again (issue 9 item 14). So the first registration is recorded
-- here, in one row that nothing deletes. Local agents (serve --stdio) hold no token
-- and do not count.
CREATE TABLE agent_bootstrap (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    first_agent_id TEXT NOT NULL REFERENCES agents (id),
    registered_at  TEXT NOT NULL
);

-- A database that already has agents was bootstrapped.
INSERT INTO agent_bootstrap (id, first_agent_id, registered_at)
SELECT 1, id, created_at FROM agents WHERE local = 0 ORDER BY created_at, id LIMIT 1;
