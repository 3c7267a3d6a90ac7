"""Response shapes shared by the HTTP API and the MCP tools.

Every id leaves the server here, as a string (issue 8): the store keeps integers,
:func:`~icn_mcp.store.validation.format_id` writes them (``42`` -> ``"42"``), and no
other module builds a response record. Agent ids are strings already.
"""

from __future__ import annotations

from typing import Any

from icn_mcp.store.validation import format_id

__all__ = ["task_shape", "claim_shape", "status_shape", "run_shape", "artifact_shape", "wire_ids"]


def task_shape(task: Any) -> dict[str, Any]:
    """A store Task with its ``id`` and ``depends_on`` items as strings."""
    shaped = task.to_dict()
    shaped["id"] = format_id(task.id)
    shaped["depends_on"] = [format_id(dep) for dep in task.depends_on]
    return shaped


def claim_shape(claim: Any) -> dict[str, Any]:
    """``{"task_id", "title", "lease_expires_at", "attempt"}`` of a store Claim."""
    return {
        "task_id": format_id(claim.task_id),
        "title": claim.title,
        "lease_expires_at": claim.lease_expires_at,
        "attempt": claim.attempt,
    }


def status_shape(status: Any) -> dict[str, Any]:
    """``{"id", "status", "attempt", "agent"?, "notes"?, "lease_expires_at"?}`` of a
    store TaskStatus; the optional fields appear only when they have a value."""
    shaped: dict[str, Any] = {"id": format_id(status.id), "status": status.status, "attempt": status.attempt}
    for key in ("agent", "notes", "lease_expires_at"):
        value = getattr(status, key)
        if value is not None:
            shaped[key] = value
    return shaped


def run_shape(run: Any) -> dict[str, Any]:
    """A store Run with ``id`` and ``task_id`` as strings."""
    shaped = run.to_dict()
    shaped["id"] = format_id(run.id)
    shaped["task_id"] = format_id(run.task_id)
    return shaped


def artifact_shape(artifact: Any) -> dict[str, Any]:
    """A store Artifact with ``id`` and ``task_id`` as strings."""
    shaped = artifact.to_dict()
    shaped["id"] = format_id(artifact.id)
    shaped["task_id"] = format_id(artifact.task_id)
    return shaped


def wire_ids(data: dict[str, Any]) -> dict[str, Any]:
    """Error data with integer ids (``id``, ``task_id``...) as strings."""
    return {
        key: format_id(value) if (key == "id" or key.endswith("_id")) and type(value) is int else value
        for key, value in data.items()
    }
