-- Who added an artifact (PostgreSQL twin of ../0004_artifact_author.sql): the agent
-- holding the task's claim, with the claim's attempt, or a maintainer
-- (`maintainer:<role>`, attempt NULL). NULL for artifacts recorded before.
ALTER TABLE artifacts ADD COLUMN added_by TEXT;

ALTER TABLE artifacts ADD COLUMN attempt INTEGER CHECK (attempt IS NULL OR attempt >= 1);
