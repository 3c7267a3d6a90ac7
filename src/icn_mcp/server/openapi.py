"""The published OpenAPI 3.1 description of the HTTP worker API (``GET /openapi.json``).

Request bodies come from the pydantic models that parse them, so the document and
the parser cannot drift apart; responses are described here, once.
"""

from __future__ import annotations

from typing import Any

from icn_mcp import __version__
from icn_mcp.server.schemas import openapi_schemas
from icn_mcp.store.validation import LIST_LIMIT_MAX

__all__ = ["document"]

_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: str) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


def _obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


_OK = {"type": "boolean", "const": True}
_STRING = {"type": "string"}
_INT = {"type": "integer"}
#: Every id in a response: decimal text (issue 8; docs/server.md says why).
_ID = {"type": "string", "pattern": "^[1-9][0-9]{0,18}$", "description": 'decimal id, e.g. "42"'}
_NULLABLE_STRING = {"type": ["string", "null"]}

_COMMON_ERRORS = {
    "413": _error("Body larger than MCP_MAX_BODY_BYTES (payload_too_large)"),
    "429": _error("Rate limit exceeded (rate_limited); see the Retry-After header"),
    "503": _error("Database unavailable (busy or shutting down); retry after Retry-After"),
}
_AUTH_ERRORS = {"401": _error("Missing, malformed, unknown, expired or revoked token (unauthorized)")}
_ADMIN_ERRORS = {**_AUTH_ERRORS, "403": _error("The token is not a maintainer token (forbidden)")}
_BAD_REQUEST = {"400": _error("Invalid request (validation_error with fields)")}
_AGENT_ONLY = {"403": _error("A maintainer token where an agent's is needed (forbidden)")}


def _paths() -> dict[str, Any]:
    task_id_query = {
        "name": "task_id",
        "in": "query",
        "required": True,
        "schema": _ID,
    }
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "operationId": "healthz",
                "responses": {"200": _json("Alive", _obj({"ok": _OK}, ["ok"]))},
            }
        },
        "/healthz/db": {
            "get": {
                "summary": "Readiness: the database answers, with its size, tables and migrations",
                "operationId": "healthzDb",
                "responses": {
                    "200": _json("Database healthy", {"$ref": "#/components/schemas/DatabaseHealth"}),
                    "503": _error("Database unavailable"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": _STRING}}}
                },
            }
        },
        "/api/agent/register": {
            "post": {
                "summary": "Register an agent; without credentials only while no active agent exists",
                "operationId": "registerAgent",
                "security": [{}, {"bearer": []}],
                "requestBody": {**_body("RegisterRequest"), "required": True},
                "responses": {
                    "200": _json(
                        "Registered", _obj({"ok": _OK, "id": _STRING, "token": _STRING}, ["ok", "id", "token"])
                    ),
                    **_BAD_REQUEST,
                    **_AUTH_ERRORS,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/agent/refresh": {
            "post": {
                "summary": "Exchange a valid (or recently expired) token for a new one; the old one is revoked",
                "operationId": "refreshToken",
                "security": _BEARER,
                "requestBody": _body("EmptyRequest"),
                "responses": {
                    "200": _json("Refreshed", _obj({"ok": _OK, "token": _STRING}, ["ok", "token"])),
                    **_BAD_REQUEST,
                    **_AUTH_ERRORS,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/task/create": {
            "post": {
                "summary": "Create a task (a repeated idempotency_key returns the first task)",
                "operationId": "createTask",
                "security": _BEARER,
                "requestBody": {**_body("CreateTaskRequest"), "required": True},
                "responses": {
                    "200": _json("Created", _obj({"ok": _OK, "id": _ID}, ["ok", "id"])),
                    "400": _error("Invalid request, or unknown dependencies (validation_error with fields)"),
                    **_AUTH_ERRORS,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/task/list": {
            "get": {
                "summary": "Tasks in a stable order; the X-Next-Cursor header holds the next page's cursor",
                "operationId": "listTasks",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["open", "claimed", "completed", "failed"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX},
                    },
                    {"name": "cursor", "in": "query", "required": False, "schema": _STRING},
                ],
                "responses": {
                    "200": {
                        **_json("Tasks", {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}),
                        "headers": {"X-Next-Cursor": {"schema": _STRING, "description": "Cursor of the next page"}},
                    },
                    **_BAD_REQUEST,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/task/claim": {
            "post": {
                "summary": "Claim the next claimable task (highest priority, oldest, dependencies completed)",
                "operationId": "claimTask",
                "security": _BEARER,
                "requestBody": _body("ClaimRequest"),
                "responses": {
                    "200": _json(
                        'A claim, or {"error": "no_available_tasks"}',
                        {
                            "oneOf": [
                                _obj(
                                    {"task_id": _ID, "title": _STRING, "lease_expires_at": _STRING, "attempt": _INT},
                                    ["task_id", "title", "lease_expires_at", "attempt"],
                                ),
                                _obj({"error": {"const": "no_available_tasks"}}, ["error"]),
                            ]
                        },
                    ),
                    **_BAD_REQUEST,
                    **_AUTH_ERRORS,
                    **_AGENT_ONLY,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/task/run": {
            "post": {
                "summary": "Report a run of a claimed task (in_progress renews the lease)",
                "operationId": "reportRun",
                "security": _BEARER,
                "requestBody": {**_body("RunRequest"), "required": True},
                "responses": {
                    "200": _json("Recorded", _obj({"ok": _OK}, ["ok"])),
                    "400": _error("validation_error, or task_id_required"),
                    **_AUTH_ERRORS,
                    **_AGENT_ONLY,
                    "404": _error("No such task"),
                    "409": _error("The agent does not hold the task's current claim (conflict)"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/task/artifact": {
            "post": {
                "summary": "Record an artifact of a task: by the agent holding its current claim, or a maintainer",
                "operationId": "addArtifact",
                "security": _BEARER,
                "requestBody": {**_body("AddArtifactRequest"), "required": True},
                "responses": {
                    "200": _json(
                        "Recorded",
                        _obj(
                            {"ok": _OK, "id": _ID, "artifact": {"$ref": "#/components/schemas/Artifact"}},
                            ["ok", "id", "artifact"],
                        ),
                    ),
                    "400": _error("validation_error, or task_id_required"),
                    **_AUTH_ERRORS,
                    "403": _error("The token may not add artifacts (forbidden)"),
                    "404": _error("No such task"),
                    "409": _error("The agent does not hold the task's current claim (conflict)"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/task/status": {
            "get": {
                "summary": "A task's status, attempt, lease and latest run",
                "operationId": "taskStatus",
                "parameters": [task_id_query],
                "responses": {
                    "200": _json("Status", {"$ref": "#/components/schemas/TaskStatus"}),
                    "400": _error("task_id_required, or validation_error"),
                    "404": _error("No such task"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/admin/agents/cleanup": {
            "post": {
                "summary": "Delete expired and revoked agent tokens (maintainers)",
                "operationId": "cleanupAgents",
                "security": _BEARER,
                "requestBody": _body("EmptyRequest"),
                "responses": {
                    "200": _json("Cleaned up", _obj({"ok": _OK, "deletedCount": _INT}, ["ok", "deletedCount"])),
                    **_BAD_REQUEST,
                    **_ADMIN_ERRORS,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/admin/agents": _dashboard_get(
            "dashboardAgents",
            "Every agent with its live tokens, last claim, last report and tasks held (maintainers; the dashboard)",
            [],
        ),
        "/api/admin/graph": _dashboard_get(
            "dashboardGraph",
            "Tasks and dependency edges around task_id, or all open work without it (maintainers; the dashboard)",
            [
                {"name": "task_id", "in": "query", "required": False, "schema": _ID},
                {
                    "name": "depth",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[1-5]$", "description": "dependency steps, 1 to 5"},
                },
            ],
        ),
        "/api/admin/runs": _dashboard_get(
            "dashboardRuns",
            "The run reports of one task, oldest first (maintainers; the dashboard)",
            [{"name": "task_id", "in": "query", "required": True, "schema": _ID}],
        ),
        "/api/admin/backups": _dashboard_get(
            "dashboardBackups", "The backups in the backup directory, newest first (maintainers; the dashboard)", []
        ),
        "/api/admin/database": _dashboard_get(
            "dashboardDatabase",
            "Size, migrations, last backup, replication and health of the database (maintainers; the dashboard)",
            [],
        ),
        "/api/admin/stats": {
            "get": {
                "summary": "Counts of agents, tasks by status, runs and artifacts (maintainers)",
                "operationId": "adminStats",
                "security": _BEARER,
                "responses": {
                    "200": _json(
                        "Stats",
                        _obj({"ok": _OK, "stats": {"type": "object", "additionalProperties": _INT}}, ["ok", "stats"]),
                    ),
                    **_ADMIN_ERRORS,
                    **_COMMON_ERRORS,
                },
            }
        },
    }


def _dashboard_get(operation_id: str, summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    """A maintainer's GET of the dashboard's JSON: ``{"ok": true, "now", ...}``."""
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "security": _BEARER,
        "responses": {
            "200": _json("The view", {"type": "object", "properties": {"ok": _OK, "now": _STRING}, "required": ["ok"]}),
            **({"400": _error("Invalid query parameter (validation_error with fields)")} if parameters else {}),
            **_ADMIN_ERRORS,
            **_COMMON_ERRORS,
        },
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def _response_schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "properties": {
                "ok": {"type": "boolean", "const": False},
                "error": {
                    "type": "string",
                    "description": "validation_error, task_id_required, unauthorized, "
                    "forbidden, not_found, conflict, payload_too_large, rate_limited, unavailable, "
                    "internal_error",
                },
                "fields": {"type": "object", "additionalProperties": _STRING},
            },
            "required": ["ok", "error"],
        },
        "Task": {
            "type": "object",
            "properties": {
                "id": _ID,
                "title": _STRING,
                "description": _NULLABLE_STRING,
                "status": _STRING,
                "priority": _INT,
                "created_by": _NULLABLE_STRING,
                "created_at": _STRING,
                "updated_at": _STRING,
                "depends_on": {"type": "array", "items": _ID},
                "attempt": _INT,
                "max_attempts": _INT,
                "claimed_by": _NULLABLE_STRING,
                "lease_expires_at": _NULLABLE_STRING,
            },
            "required": ["id", "title", "status", "created_at"],
        },
        "Artifact": _obj(
            {
                "id": _ID,
                "task_id": _ID,
                "kind": _STRING,
                "path": _STRING,
                "meta": {"type": ["object", "null"]},
                "created_at": _STRING,
                "added_by": _NULLABLE_STRING,
                "attempt": {"type": ["integer", "null"]},
            },
            ["id", "task_id", "kind", "path", "meta", "created_at", "added_by", "attempt"],
        ),
        "TaskStatus": _obj(
            {
                "id": _ID,
                "status": _STRING,
                "attempt": _INT,
                "agent": _STRING,
                "notes": _STRING,
                "lease_expires_at": _STRING,
            },
            ["id", "status", "attempt"],
        ),
        "DatabaseHealth": _obj(
            {
                "ok": _OK,
                "latency_ms": {"type": "number"},
                "database": _obj(
                    {
                        "path": _STRING,
                        "size_bytes": _INT,
                        "tables": {
                            "type": "array",
                            "items": _obj({"name": _STRING, "count": {"type": ["integer", "null"]}}, ["name", "count"]),
                        },
                        "last_migration": _NULLABLE_STRING,
                        "total_migrations": _INT,
                    },
                    ["path", "size_bytes", "tables", "last_migration", "total_migrations"],
                ),
                # Litestream (MCP_REPLICA_URL); only "enabled" (false) without a replica.
                "replication": _obj(
                    {
                        "enabled": {"type": "boolean"},
                        "running": {"type": "boolean"},
                        "standby": {"type": "boolean"},
                        "pid": {"type": ["integer", "null"]},
                        "url": _STRING,
                        "lag_s": {"type": "number"},
                        "restarts": _INT,
                        "errors": _INT,
                        "last_error": _NULLABLE_STRING,
                        "last_error_at": _NULLABLE_STRING,
                        "local_txid": _INT,
                        "replica_txid": _INT,
                        "last_replicated_at": _NULLABLE_STRING,
                    },
                    ["enabled"],
                ),
            },
            ["ok", "latency_ms", "database", "replication"],
        ),
    }


def document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document; ``server_url`` becomes its one server entry."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "icn-mcp agent HQ worker API",
            "version": __version__,
            "description": "Agents register, claim tasks and report runs. Every error is "
            '{"ok": false, "error": CODE, ...}. MCP (streamable HTTP) is served at /mcp.',
        },
        "paths": _paths(),
        "components": {
            "schemas": {**openapi_schemas(), **_response_schemas()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
