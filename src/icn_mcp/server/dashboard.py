"""The operator dashboard: ``GET /dashboard`` and its maintainer-only JSON (issue 13).

The page is three static files shipped as package data (``dashboard_static/``: no
build step, no CDN). Served without a token, it shows only a token form and the
public health. With a maintainer token it reads the same JSON as everyone else
(``/api/task/list``, ``/api/admin/stats``, ``/healthz``) plus the routes below, each
of which answers 401 without a token (or with an unknown one) and 403 for an agent's
token, exactly like the other admin routes:

- ``GET /api/admin/agents``: agents with tokens active, last claim/report, tasks held.
- ``GET /api/admin/graph[?task_id=ID&depth=N]``: the dependency neighbourhood of a
  task, or all open work when it is small.
- ``GET /api/admin/runs?task_id=ID``: every run of a task.
- ``GET /api/admin/backups``: the backups in the backup directory.
- ``GET /api/admin/database``: size, WAL, migrations, last backup and its age, busy
  retries (the expensive part cached like ``/healthz/db``).

Every answer carries ``now`` (the server's clock), so the page computes lease time
left and ages without trusting the browser's clock. Ids are strings on the wire.
"""

from __future__ import annotations

import json
from datetime import datetime
from importlib import resources
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from icn_mcp.db.backup_files import manifest_path
from icn_mcp.db.timestamps import format_ts, parse_ts, utc_now
from icn_mcp.server.cache import SharedValue
from icn_mcp.server.errors import task_id_required
from icn_mcp.server.http import _endpoint, _ok, _principal
from icn_mcp.server.hub import Hub
from icn_mcp.store.dashboard import GRAPH_DEFAULT_DEPTH, GRAPH_MAX_DEPTH, agent_activity, task_graph
from icn_mcp.store.validation import parse_decimal, parse_id

__all__ = ["dashboard_routes", "DASHBOARD_PATHS", "STATIC_FILES", "CONTENT_SECURITY_POLICY"]

#: The page and its assets: URL path -> (file in dashboard_static/, media type).
STATIC_FILES = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}

#: Only our own files, no inline script, no other origin; the page cannot be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # The token may sit in the fragment for a moment: never pass the URL on.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

Handler = Callable[[Request, Hub], Awaitable[Response]]


def _read_static(name: str) -> bytes:
    return (resources.files("icn_mcp.server") / "dashboard_static" / name).read_bytes()


def _static(name: str, media_type: str) -> Handler:
    body = _read_static(name)  # read once at start-up: a missing file fails loudly then

    async def serve(request: Request, hub: Hub) -> Response:
        return Response(body, media_type=media_type, headers=_PAGE_HEADERS)

    return serve


def _wire_ids(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``item`` with the integer ids under ``keys`` as strings (the wire form)."""
    return {k: (str(v) if k in keys and v is not None else v) for k, v in item.items()}


def _age_s(now: datetime, stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return round((now - parse_ts(stamp)).total_seconds(), 3)
    except ValueError:
        return None


def _backups(hub: Hub) -> list[dict[str, Any]]:
    """Every backup of ours in the backup directory, newest first (blocking)."""
    found = []
    for path in reversed(hub.db.list_backups(hub.backup_dir)):
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # pruned meanwhile
            continue
        manifest: dict[str, Any] = {}
        try:
            loaded = json.loads(manifest_path(path).read_text("utf-8"))
            manifest = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
        found.append(
            {
                "name": path.name,
                "path": str(path),
                "size_bytes": size,
                "created_at": manifest.get("created_at"),
                "has_manifest": bool(manifest),
                "latest_migration": manifest.get("latest_migration"),
            }
        )
    return found


class _Dashboard:
    """The handlers, sharing one cache of the expensive database diagnostics."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.database_info: SharedValue[dict[str, Any]] = SharedValue(
            lambda: hub.call("database_info", hub.database_info), hub.settings.health_cache_s
        )

    async def _require_maintainer(self, request: Request) -> None:
        """401/403 unless a maintainer token came: before any validation detail."""
        await self.hub.call("maintainer_check", _principal(self.hub, request, "dashboard"))

    async def _checked(self, request: Request, operation: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` in a worker thread after the maintainer check."""
        check = _principal(self.hub, request, "dashboard")

        def run() -> Any:
            check()
            return fn()

        return await self.hub.call(operation, run)

    async def agents(self, request: Request, hub: Hub) -> Response:
        now = utc_now()
        agents = await self._checked(request, "dashboard_agents", lambda: agent_activity(hub.db, now))
        return _ok({"ok": True, "now": format_ts(now), "agents": agents})

    async def graph(self, request: Request, hub: Hub) -> Response:
        await self._require_maintainer(request)
        params = request.query_params
        raw_task, raw_depth = params.get("task_id"), params.get("depth")
        task_id = parse_id(raw_task, "task_id") if raw_task else None
        depth = parse_decimal(raw_depth, "depth", minimum=1, maximum=GRAPH_MAX_DEPTH) if raw_depth else None
        graph = await hub.call("dashboard_graph", task_graph, hub.db, task_id, depth=depth or GRAPH_DEFAULT_DEPTH)
        return _ok({"ok": True, "now": format_ts(utc_now()), "graph": graph})

    async def runs(self, request: Request, hub: Hub) -> Response:
        await self._require_maintainer(request)
        raw = request.query_params.get("task_id")
        task_id = parse_id(raw, "task_id") if raw else None
        if task_id is None:
            raise task_id_required()
        runs = await hub.call("list_runs", hub.store.list_runs, task_id)
        return _ok(
            {
                "ok": True,
                "now": format_ts(utc_now()),
                "task_id": str(task_id),
                "runs": [_wire_ids(run.to_dict(), "id", "task_id") for run in runs],
            }
        )

    async def backups(self, request: Request, hub: Hub) -> Response:
        found = await self._checked(request, "dashboard_backups", lambda: _backups(hub))
        return _ok({"ok": True, "now": format_ts(utc_now()), "directory": str(hub.backup_dir), "backups": found})

    async def database(self, request: Request, hub: Hub) -> Response:
        await self._require_maintainer(request)
        info = await self.database_info.get()  # at most MCP_HEALTH_CACHE_S old
        health = await hub.call("check_health", hub.db.check_health)  # live
        stats = hub.db.get_stats()
        now = utc_now()
        migrations = info.get("migrations") or []
        last_backup = info.get("last_backup")
        if last_backup is not None:
            last_backup = {**last_backup, "age_s": _age_s(now, last_backup.get("created_at"))}
        return _ok(
            {
                "ok": True,
                "now": format_ts(now),
                "database": {
                    "backend": hub.db.backend,
                    "path": info["path"],
                    "size_bytes": info["size_bytes"],
                    # SQLite's own (None on PostgreSQL, whose WAL is the cluster's).
                    "wal_size_bytes": info.get("wal_size_bytes"),
                    "journal_mode": info.get("journal_mode"),
                    "sqlite_version": info.get("sqlite_version"),
                    # PostgreSQL's own (None on SQLite).
                    "server_version": info.get("server_version"),
                    "migrations_applied": len(migrations),
                    "last_migration": migrations[-1]["version"] if migrations else None,
                    "failed_migrations": len(info.get("failed_migrations") or []),
                    "last_backup": last_backup,
                    # Litestream's status (issue 12: running, lag_s, restarts, last
                    # error...); None means replication is not configured.
                    "replication": hub.replicator.status() if hub.replicator is not None else None,
                    "health": {"ok": health["ok"], "latency_ms": health["latency_ms"]},
                    # Counters of this server process since it started.
                    "busy_retries": stats["busy_retries"],
                    "busy_exhausted": stats["busy_exhausted"],
                    "transactions": stats["transactions"],
                },
            }
        )


#: Every path this module serves (for the request metrics' route label).
DASHBOARD_PATHS = frozenset(
    set(STATIC_FILES)
    | {"/api/admin/agents", "/api/admin/graph", "/api/admin/runs", "/api/admin/backups", "/api/admin/database"}
)


def dashboard_routes(hub: Hub) -> list[Route]:
    """The page, its assets and the maintainer JSON, as Starlette routes."""
    board = _Dashboard(hub)
    handlers: list[tuple[str, Handler]] = [
        (path, _static(name, media_type)) for path, (name, media_type) in STATIC_FILES.items()
    ]
    handlers += [
        ("/api/admin/agents", board.agents),
        ("/api/admin/graph", board.graph),
        ("/api/admin/runs", board.runs),
        ("/api/admin/backups", board.backups),
        ("/api/admin/database", board.database),
    ]
    return [Route(path, _endpoint(handler), methods=["GET"]) for path, handler in handlers]
