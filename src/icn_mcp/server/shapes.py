"""Response shapes shared by the HTTP API and the MCP tools (issue 5's table)."""

from __future__ import annotations

from typing import Any

__all__ = ["claim_shape", "status_shape"]


def claim_shape(claim: Any) -> dict[str, Any]:
    """``{"task_id", "title", "lease_expires_at", "attempt"}`` of a store Claim."""
    return {
        "task_id": claim.task_id,
        "title": claim.title,
        "lease_expires_at": claim.lease_expires_at,
        "attempt": claim.attempt,
    }


def status_shape(status: dict[str, Any]) -> dict[str, Any]:
    """``{"id", "status", "attempt", "agent"?, "notes"?, "lease_expires_at"?}``.

    The optional fields appear only when they have a value.
    """
    shaped = {"id": status["id"], "status": status["status"], "attempt": status["attempt"]}
    for key in ("agent", "notes", "lease_expires_at"):
        if status.get(key) is not None:
            shaped[key] = status[key]
    return shaped
