-- An agent's report in one round trip (PostgreSQL only; SQLite needs none: its
-- transactions cost no round trip). icn_mcp_report_if_current records a report when,
-- and only when, the agent holds the current, unexpired claim of that attempt, and
-- returns the run; otherwise it writes nothing and returns no row, and the store's
-- report transaction decides and names the reason (icn_mcp.store.tasks.report_run).
--
-- The task row is locked first, in a statement of its own: this function is VOLATILE,
-- so under READ COMMITTED the writes that follow take a snapshot after the lock was
-- granted, and see every dependency edge committed before it (create_task holds its
-- dependencies FOR SHARE until it commits). The writes are those of a report in
-- icn_mcp.store.sql.common.Queries.record_report, timed by the server's now().
CREATE FUNCTION icn_mcp_report_if_current(
    p_task_id BIGINT, p_agent_id TEXT, p_attempt INTEGER, p_status TEXT, p_notes TEXT
) RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    current_task tasks%ROWTYPE;
BEGIN
    PERFORM 1 FROM tasks WHERE id = p_task_id FOR UPDATE;
    SELECT * INTO current_task FROM tasks
    WHERE id = p_task_id AND status = 'claimed' AND claimed_by = p_agent_id
      AND attempt = p_attempt AND lease_expires_at > now();
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_status = 'claimed' THEN
        UPDATE tasks SET updated_at = now() WHERE id = p_task_id;
    ELSIF p_status = 'in_progress' THEN
        UPDATE tasks SET lease_expires_at = now() + make_interval(secs => current_task.lease_s),
            updated_at = now()
        WHERE id = p_task_id;
    ELSIF p_status = 'completed' THEN
        UPDATE tasks SET status = 'completed', lease_expires_at = NULL, lease_s = NULL, updated_at = now()
        WHERE id = p_task_id;
        UPDATE tasks SET blocking_deps = blocking_deps - 1, updated_at = now()
        WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on_id = p_task_id);
    ELSIF p_status = 'failed' THEN
        UPDATE tasks SET
            status = CASE WHEN current_task.attempt >= current_task.max_attempts THEN 'failed' ELSE 'open' END,
            claimed_by = CASE WHEN current_task.attempt >= current_task.max_attempts THEN claimed_by END,
            lease_expires_at = NULL, lease_s = NULL, updated_at = now()
        WHERE id = p_task_id;
    ELSE
        RAISE EXCEPTION 'unknown report status %', p_status USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        INSERT INTO runs (task_id, agent_id, attempt, status, notes, created_at)
        VALUES (p_task_id, p_agent_id, current_task.attempt, p_status, p_notes, now())
        RETURNING *;
END
$$;
