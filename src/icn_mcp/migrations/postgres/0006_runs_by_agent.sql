-- An agent's newest run in one index probe, for the dashboard's "last report"
-- (PostgreSQL twin of ../0006_runs_by_agent.sql).
CREATE INDEX runs_agent ON runs (agent_id, id);
