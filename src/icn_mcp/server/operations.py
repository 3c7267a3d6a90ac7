"""The task operations both transports perform, once (issue 8).

Each takes the hub, the caller (already authorised by :mod:`icn_mcp.server.auth`)
and the parsed request (:mod:`icn_mcp.server.schemas`), makes one store call and
counts it; the HTTP routes and the MCP tools only shape the result. Blocking: run
them in a worker thread (``Hub.call``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icn_mcp.server.auth import Principal, artifact_author
from icn_mcp.server.schemas import AddArtifactRequest, ClaimRequest, CreateTaskRequest, RunRequest
from icn_mcp.store.models import Artifact, Claim, Run, Task

if TYPE_CHECKING:
    from icn_mcp.server.hub import Hub

__all__ = ["create_task", "claim_task", "count_claim", "report_run", "add_artifact"]


def create_task(hub: Hub, principal: Principal, request: CreateTaskRequest) -> Task:
    """A new task; ``created_by`` defaults to the caller (agent id or ``maintainer:<role>``)."""
    return hub.store.create_task(
        request.title,
        request.description,
        created_by=request.created_by if request.created_by is not None else principal.name,
        depends_on=request.depends_on,
        priority=request.priority,
        max_attempts=request.max_attempts,
        idempotency_key=request.idempotency_key,
    )


def claim_task(hub: Hub, principal: Principal, request: ClaimRequest) -> Claim | None:
    """The caller's claim of the next claimable task, or None (at once: waiting, and
    counting the answer, are :meth:`Hub.claim`'s)."""
    return hub.store.claim_next_task(principal.agent_id, request.lease_s)  # type: ignore[arg-type]


def count_claim(hub: Hub, claimed: Claim | None) -> None:
    """A claim's answer in the metrics: claimed (and reclaimed) or empty."""
    if claimed is None:
        hub.metrics.claims.labels("empty").inc()
        return None
    hub.metrics.claims.labels("claimed").inc()
    if claimed.attempt > 1:
        hub.metrics.reclaims.inc()


def report_run(hub: Hub, principal: Principal, request: RunRequest) -> Run:
    """The caller's report on the task it holds; counted in the metrics."""
    # The transports answer task_id_required before this; authorize() made it an agent.
    assert request.task_id is not None and principal.agent_id is not None
    run = hub.store.report_run(
        request.task_id,
        principal.agent_id,
        request.status,
        request.notes,
        attempt=request.attempt,
    )
    hub.metrics.reports.labels(request.status).inc()
    return run


def add_artifact(hub: Hub, principal: Principal, request: AddArtifactRequest) -> Artifact:
    """An artifact added as the caller: under its current claim, or as a maintainer."""
    assert request.task_id is not None  # task_id_required was answered before this
    return hub.store.add_artifact(
        request.task_id,
        request.kind,
        request.path,
        request.meta,
        attempt=request.attempt,
        **artifact_author(principal),
    )
