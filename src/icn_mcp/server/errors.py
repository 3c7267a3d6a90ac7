"""One mapping from icn-mcp errors to wire errors, shared by HTTP and MCP.

Every error a client sees is ``{"ok": false, "error": CODE, ...}`` with a stable code
and the error's data as fields; the HTTP layer adds the status, the MCP layer returns
the same object as a tool error. Anything unexpected becomes ``internal_error`` with
no detail at all: the traceback goes to the server log, never to the client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect

from icn_mcp.db.storage import is_storage_full_error
from icn_mcp.errors import (
    BackupError,
    BusyError,
    CommitUnknown,
    Conflict,
    DatabaseClosed,
    DatabaseUnavailable,
    Forbidden,
    IcnMcpError,
    NotFound,
    StorageFull,
    Unauthorized,
    ValidationError,
)
from icn_mcp.server.shapes import wire_ids

__all__ = ["ApiError", "to_api_error", "task_id_required", "validation_error", "storage_full_error"]

log = logging.getLogger("icn_mcp.server")

#: Seconds a client should wait before retrying when the database is unavailable.
RETRY_AFTER_UNAVAILABLE_S = 1
#: ... and when the disk is full: freeing space takes a while (an operator, a cleanup).
RETRY_AFTER_STORAGE_FULL_S = 10


@dataclass
class ApiError(Exception):
    """An error as the client sees it: HTTP status, code and extra fields."""

    status: int
    code: str
    data: dict[str, Any] = field(default_factory=dict)
    #: Extra HTTP headers (Retry-After, WWW-Authenticate).
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"ok": False, "error": self.code, **self.data}


def validation_error(fields: dict[str, str]) -> ApiError:
    return ApiError(400, "validation_error", {"fields": fields})


def task_id_required() -> ApiError:
    return ApiError(400, "task_id_required", {"message": "task_id is required"})


def storage_full_error() -> ApiError:
    """507 ``storage_full``: the write was refused for want of disk space; retry later."""
    return ApiError(
        507,
        "storage_full",
        {"retry_after_s": RETRY_AFTER_STORAGE_FULL_S},
        {"Retry-After": str(RETRY_AFTER_STORAGE_FULL_S)},
    )


def to_api_error(exc: BaseException) -> ApiError:
    """The client-facing form of ``exc``; logs what the client must not see."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return validation_error(dict(getattr(exc, "fields", {}) or {}))
    if isinstance(exc, Unauthorized):
        return ApiError(
            401,
            "unauthorized",
            {"reason": str(getattr(exc, "reason", "") or exc)},
            {"WWW-Authenticate": 'Bearer realm="icn-mcp"'},
        )
    if isinstance(exc, Forbidden):
        return ApiError(403, "forbidden", {"reason": str(getattr(exc, "reason", "") or exc)})
    if isinstance(exc, NotFound):
        data: dict[str, Any] = {"kind": getattr(exc, "kind", None), "id": getattr(exc, "id", None)}
        return ApiError(404, "not_found", _jsonable(wire_ids({k: v for k, v in data.items() if v is not None})))
    if isinstance(exc, Conflict):
        extra = dict(getattr(exc, "data", {}) or {})
        return ApiError(
            409, "conflict", {"reason": str(getattr(exc, "reason", "") or exc), **_jsonable(wire_ids(extra))}
        )
    if isinstance(exc, ClientDisconnect):
        # The client went away mid-request: nobody reads the answer, nothing to log
        # but the access line (499, not a 500).
        return ApiError(499, "client_closed_request")
    if isinstance(exc, StorageFull):
        # Logged once per incident by the database (icn_mcp.db.storage), not here.
        return storage_full_error()
    if isinstance(exc, BackupError):
        # An operator's backup (MCP create_backup) that failed says why, in one log
        # line: a full disk is storage_full like any write; anything else backup_failed.
        data = {"reason": str(exc), **({"hint": exc.hint} if exc.hint else {})}
        log.warning("backup failed: %s", exc)
        if _backup_lacked_space(exc):
            error = storage_full_error()
            return ApiError(error.status, error.code, {**error.data, **data}, error.headers)
        return ApiError(500, "backup_failed", data)
    if isinstance(exc, CommitUnknown):
        # The connection died during COMMIT: done or not, nobody knows. Never a
        # plain "try again": repeating could apply it twice (docs/postgresql.md).
        log.error("commit outcome unknown: %s", exc)
        return ApiError(
            503,
            "commit_unknown",
            {
                "reason": "the database connection was lost during COMMIT: the request may or may not have "
                "taken effect; check the state (or repeat it with its idempotency key) before repeating it",
                "retry_after_s": RETRY_AFTER_UNAVAILABLE_S,
            },
            {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        )
    if isinstance(exc, (BusyError, DatabaseClosed, DatabaseUnavailable)):
        # The database is busy beyond the retry budget, shutting down, or cannot be
        # reached (PostgreSQL: no connection within MCP_DB_POOL_TIMEOUT_S): try again.
        log.warning("database unavailable: %s", exc)
        return ApiError(
            503,
            "unavailable",
            {"retry_after_s": RETRY_AFTER_UNAVAILABLE_S},
            {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        )
    if isinstance(exc, IcnMcpError):
        log.error("request failed: %s", exc, exc_info=exc)
    else:
        log.error("unexpected %s while serving a request", type(exc).__name__, exc_info=exc)
    return ApiError(500, "internal_error")


def _backup_lacked_space(exc: BackupError) -> bool:
    """Did the backup fail for want of space (ENOSPC while writing, or the free-space
    check before it)?"""
    cause = exc.__cause__
    if cause is not None and is_storage_full_error(cause):
        return True
    text = str(exc.cause).lower()
    return "enospc" in text or "free space" in text or "disk is full" in text


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """Keep only values JSON can carry as they are (conflict data is informative)."""
    allowed = (str, int, float, bool, type(None), list, dict)
    return {str(k): (v if isinstance(v, allowed) else str(v)) for k, v in data.items()}
