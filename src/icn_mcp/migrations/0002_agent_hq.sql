-- The agent HQ domain (icn_mcp.store): agents and their hashed tokens, tasks with
-- dependencies and leased claims, runs (every report) and artifacts.
-- Timestamps are UTC text of one fixed width (2026-01-01T00:00:00.000000Z), so text
-- comparison orders them. docs/store.md explains every column that is not obvious.

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    version     TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT                 -- set by revoke_agent or cleanup_expired
);

-- Only the SHA-256 hex of a token is stored; the raw token is shown once.
CREATE TABLE agent_tokens (
    token_hash  TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    revoked_at  TEXT                 -- refreshed away, or the agent was revoked
) WITHOUT ROWID;

CREATE INDEX agent_tokens_agent ON agent_tokens (agent_id);

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY,
    title            TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    description      TEXT,
    status           TEXT NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'claimed', 'completed', 'failed')),
    priority         INTEGER NOT NULL DEFAULT 0,
    created_by       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    -- The dependency ids as a JSON array (NULL for none): immutable, so reading a
    -- task never joins task_dependencies.
    depends_on       TEXT,
    -- How many dependencies are not completed yet; claimable only at 0. Decremented
    -- when a dependency completes, so claiming never looks at other tasks.
    blocking_deps    INTEGER NOT NULL DEFAULT 0 CHECK (blocking_deps >= 0),
    -- The fencing token: incremented by every claim, never decreases.
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    claimed_by       TEXT REFERENCES agents (id),
    lease_expires_at TEXT,
    lease_s          REAL,               -- the lease length of the current claim
    idempotency_key  TEXT UNIQUE,
    CHECK ((status = 'claimed') = (lease_expires_at IS NOT NULL)),
    CHECK (status <> 'claimed' OR claimed_by IS NOT NULL)
);

-- Serves the claim query: the claimable rows only, in claim order, so the first
-- entry is the task to claim whatever the size of the table.
CREATE INDEX tasks_claim_order ON tasks (priority DESC, created_at, id)
    WHERE status = 'open' AND blocking_deps = 0;

-- Finds expired leases with one probe (claims are few next to tasks).
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'claimed';

-- list_tasks(status=...) with keyset pagination, and counts by status.
CREATE INDEX tasks_status ON tasks (status, id);

CREATE TABLE task_dependencies (
    task_id       INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    depends_on_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on_id),
    CHECK (depends_on_id <> task_id)
) WITHOUT ROWID;

-- The dependents of a task that just completed.
CREATE INDEX task_dependencies_dependent ON task_dependencies (depends_on_id, task_id);

-- Every report on a task (and every lease that expired), so its history is complete.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    agent_id    TEXT NOT NULL REFERENCES agents (id),
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL
                CHECK (status IN ('claimed', 'in_progress', 'completed', 'failed', 'expired')),
    notes       TEXT,
    created_at  TEXT NOT NULL
);

CREATE INDEX runs_task ON runs (task_id, id);

CREATE TABLE artifacts (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    path        TEXT NOT NULL,
    meta        TEXT,                -- JSON object, or NULL
    created_at  TEXT NOT NULL
);

CREATE INDEX artifacts_task ON artifacts (task_id, id);
