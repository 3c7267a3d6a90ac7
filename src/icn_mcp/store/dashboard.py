"""Read-only views of the store for the operator dashboard (issue 13).

Two questions the worker API does not answer: what each agent is doing (tokens,
last activity, tasks held) and how tasks depend on each other around one task.
Both are single read transactions (a consistent snapshot that never blocks writers),
on either backend (the statements are in :mod:`icn_mcp.store.sql`),
and return plain data with stable keys. Ids are returned as strings, the wire form.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any

from icn_mcp.db import BaseDatabase
from icn_mcp.db.timestamps import format_ts
from icn_mcp.errors import NotFound
from icn_mcp.store import validation as v
from icn_mcp.store.sql import Queries, queries_for

__all__ = [
    "agent_activity",
    "task_graph",
    "GRAPH_DEFAULT_DEPTH",
    "GRAPH_MAX_DEPTH",
    "GRAPH_MAX_NODES",
    "OPEN_WORK_MAX_NODES",
]

#: How many dependency steps around the selected task the graph shows by default.
GRAPH_DEFAULT_DEPTH = 2
#: The most steps a caller may ask for.
GRAPH_MAX_DEPTH = 5
#: A neighbourhood stops growing at this many tasks (``truncated`` tells).
GRAPH_MAX_NODES = 80
#: "All open work" is drawn only while it has at most this many tasks: beyond that
#: a picture stops being readable, and the caller is told the count instead.
OPEN_WORK_MAX_NODES = 60


def agent_activity(db: BaseDatabase, now: datetime) -> list[dict[str, Any]]:
    """Every agent with its live tokens, last claim, last report and tasks held.

    Keys: ``id``, ``name``, ``kind``, ``version``, ``created_at``, ``revoked_at``,
    ``local`` (a token-less agent of ``serve --stdio``), ``tokens_active`` (tokens
    neither revoked nor expired at ``now``), ``last_claim_at`` (newest claim it
    holds now, or that claim's latest heartbeat; a claim that ended was followed by
    a report, or by an expired lease), ``last_report_at`` (its newest run;
    ``expired`` runs are written by the store, not the agent), ``last_active_at``
    (the later of the two) and ``tasks_held`` (ids of the tasks it holds a claim
    on, as strings).

    Costs one index probe per agent plus one row per claimed task, whatever the
    number of tasks and runs (bench/bench_dashboard.py).
    """
    q = queries_for(db)
    with db.read_transaction() as raw:
        conn = q.wrap(raw)
        agents = conn.execute(q.DASHBOARD_AGENTS, {"now": format_ts(now)}).fetchall()
        held: dict[str, list[str]] = {}
        last_claims: dict[str, str] = {}
        for row in conn.execute(q.DASHBOARD_HELD):
            agent_id = row["agent_id"]
            held.setdefault(agent_id, []).append(str(row["id"]))
            last_claims[agent_id] = max(last_claims.get(agent_id, ""), row["updated_at"])
    result = []
    for row in agents:
        last_claim = last_claims.get(row["id"])
        last_report = row["last_report_at"]
        result.append(
            {
                "id": row["id"],
                "name": row["name"],
                "kind": row["kind"],
                "version": row["version"],
                "created_at": row["created_at"],
                "revoked_at": row["revoked_at"],
                "local": bool(row["local"]),
                "tokens_active": row["tokens_active"],
                "last_claim_at": last_claim,
                "last_report_at": last_report,
                "last_active_at": max(filter(None, (last_claim, last_report)), default=None),
                "tasks_held": held.get(row["id"], []),
            }
        )
    return result


def task_graph(
    db: BaseDatabase,
    task_id: int | None = None,
    *,
    depth: int = GRAPH_DEFAULT_DEPTH,
    max_nodes: int = GRAPH_MAX_NODES,
    open_work_max: int = OPEN_WORK_MAX_NODES,
) -> dict[str, Any]:
    """Tasks and dependency edges around ``task_id``, or all open work without one.

    With ``task_id``: the tasks within ``depth`` dependency steps of it, in either
    direction (what it waits for, what waits for it), breadth first, at most
    ``max_nodes``. Without: every open or claimed task and the tasks they depend on
    directly, unless there are more than ``open_work_max`` open or claimed tasks.

    Returns ``{"focus", "nodes", "edges", "truncated", "too_large", "open_count"}``;
    a node is ``{"id", "title", "status", "priority", "claimed_by", "attempt",
    "max_attempts", "lease_expires_at"}``, an edge ``{"from": dependency, "to":
    dependent}``. Ids are strings. NotFound for an unknown task.
    """
    problems = v.Problems()
    problems.integer("depth", depth, minimum=1, maximum=GRAPH_MAX_DEPTH)
    problems.integer("max_nodes", max_nodes, minimum=1, maximum=10_000)
    problems.raise_if_any()
    if task_id is not None:
        task_id = v.task_id(task_id)
    q = queries_for(db)
    with db.read_transaction() as raw:
        conn = q.wrap(raw)
        if task_id is None:
            return _open_work(q, conn, open_work_max)
        if conn.execute(q.TASK_EXISTS, (task_id,)).fetchone() is None:
            raise NotFound("task", task_id)
        ids, truncated = _neighbourhood(q, conn, task_id, depth, max_nodes)
        return {
            "focus": str(task_id),
            **_nodes_and_edges(q, conn, ids),
            "truncated": truncated,
            "too_large": False,
            "open_count": None,
        }


def _neighbourhood(q: Queries, conn: Any, start: int, depth: int, max_nodes: int) -> tuple[list[int], bool]:
    seen = {start: 0}
    queue = deque([start])
    truncated = False
    while queue:
        current = queue.popleft()
        if seen[current] >= depth:
            continue
        neighbours = conn.execute(q.DASHBOARD_NEIGHBOURS, {"id": current}).fetchall()
        for (neighbour,) in neighbours:
            if neighbour in seen:
                continue
            if len(seen) >= max_nodes:
                truncated = True
                break
            seen[neighbour] = seen[current] + 1
            queue.append(neighbour)
    return sorted(seen), truncated


def _open_work(q: Queries, conn: Any, open_work_max: int) -> dict[str, Any]:
    open_ids = [row[0] for row in conn.execute(q.DASHBOARD_OPEN_IDS, (open_work_max + 1,))]
    if len(open_ids) > open_work_max:
        count = conn.execute(q.DASHBOARD_OPEN_COUNT).fetchone()[0]
        return {"focus": None, "nodes": [], "edges": [], "truncated": False, "too_large": True, "open_count": count}
    ids = set(open_ids)
    for task in open_ids:
        ids.update(row[0] for row in conn.execute(q.DASHBOARD_DEPENDENCIES, (task,)))
    return {
        "focus": None,
        **_nodes_and_edges(q, conn, sorted(ids)),
        "truncated": False,
        "too_large": False,
        "open_count": len(open_ids),
    }


def _nodes_and_edges(q: Queries, conn: Any, ids: list[int]) -> dict[str, Any]:
    nodes = []
    for task in ids:
        row = conn.execute(q.DASHBOARD_NODE, (task,)).fetchone()
        if row is not None:
            node = dict(row)
            node["id"] = str(node["id"])
            nodes.append(node)
    wanted = set(ids)
    edges = []
    for task in ids:
        for (dependency,) in conn.execute(q.DASHBOARD_DEPENDENCIES, (task,)):
            if dependency in wanted:
                edges.append({"from": str(dependency), "to": str(task)})
    return {"nodes": nodes, "edges": edges}
