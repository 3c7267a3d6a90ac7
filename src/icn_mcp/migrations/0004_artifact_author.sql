-- Who added an artifact (issue 8): the agent holding the task's claim, with the
-- claim's attempt, or a maintainer (`maintainer:<role>`, attempt NULL). Not a
-- reference to agents: a maintainer is not an agent row. NULL for artifacts
-- recorded before this migration, whose author nobody knows.
ALTER TABLE artifacts ADD COLUMN added_by TEXT;

ALTER TABLE artifacts ADD COLUMN attempt INTEGER CHECK (attempt IS NULL OR attempt >= 1);
