-- Waiting claims (issue 11): announce on channel icn_mcp_work every row that becomes
-- claimable (a task created open with no blocking dependency, a last dependency
-- completed, an expired or failed claim put back). Every server LISTENs on one
-- dedicated connection (db/postgres/listen.py) and offers the work to its waiting
-- claims. NOTIFY is delivered at COMMIT, once per transaction for equal payloads, and
-- never for a transaction that rolls back. Claims themselves (status -> claimed) do
-- not notify.
CREATE FUNCTION icn_mcp_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('icn_mcp_work', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify_work
    AFTER INSERT OR UPDATE OF status, blocking_deps ON tasks
    FOR EACH ROW
    WHEN (NEW.status = 'open' AND NEW.blocking_deps = 0)
    EXECUTE FUNCTION icn_mcp_notify_work();
