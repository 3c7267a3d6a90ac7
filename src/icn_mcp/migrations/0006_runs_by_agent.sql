-- An agent's newest run in one index probe, for the dashboard's "last report"
-- (issue 13). Without it, finding each agent's last report reads every run: 290 ms
-- at 90,000 runs in bench/bench_dashboard.py, on every refresh of every open page.
-- Numbered 0006 because 0004 and 0005 are taken by work merged alongside this one.
CREATE INDEX runs_agent ON runs (agent_id, id);
