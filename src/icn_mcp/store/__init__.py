"""The agent HQ domain: agents and hashed tokens, tasks with dependencies, claims
with leases, runs and artifacts, on the public :mod:`icn_mcp.db` API. Typical use::

    from icn_mcp.db import Database
    from icn_mcp.store import Store

    store = Store(Database("var/icn-mcp.sqlite"))
    agent = store.register_agent("worker-1", "planner")      # bootstrap: no credential
    task = store.create_task("write the docs")
    claim = store.claim_next_task(agent.id)
    store.report_run(claim.task_id, agent.id, "completed", attempt=claim.attempt)

Errors are the :class:`~icn_mcp.errors.StoreError` family of :mod:`icn_mcp.errors`.
docs/store.md describes the schema, the claim query and the token rules.
"""

from icn_mcp.store.models import (
    REPORT_STATUSES,
    RUN_STATUSES,
    TASK_STATUSES,
    Agent,
    Artifact,
    Claim,
    RegisteredAgent,
    Run,
    Task,
    TaskPage,
    TaskStatus,
)
from icn_mcp.store.store import STATS_KEYS, Store

__all__ = [
    "Store",
    "Agent",
    "RegisteredAgent",
    "Task",
    "TaskPage",
    "TaskStatus",
    "Claim",
    "Run",
    "Artifact",
    "TASK_STATUSES",
    "REPORT_STATUSES",
    "RUN_STATUSES",
    "STATS_KEYS",
]
