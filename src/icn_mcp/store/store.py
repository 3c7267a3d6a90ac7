"""The :class:`Store`: the agent HQ domain on one database (SQLite or PostgreSQL)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Sequence

from icn_mcp.config import (
    AGENT_KIND_PATTERN,
    DEFAULT_AGENT_KINDS,
    DEFAULT_LEASE_S,
    DEFAULT_REFRESH_GRACE_S,
    DEFAULT_TOKEN_TTL_S,
    MAX_REFRESH_GRACE_S,
    MAX_TOKEN_TTL_S,
    MIN_MAINTAINER_TOKEN_LENGTH,
)
from icn_mcp.db import Database
from icn_mcp.db.base import BaseDatabase
from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.errors import ConfigError
from icn_mcp.store import validation as v
from icn_mcp.store.agents import AgentsMixin
from icn_mcp.store.models import TASK_STATUSES
from icn_mcp.store.sql import queries_for
from icn_mcp.store.tasks import TasksMixin

if TYPE_CHECKING:
    from icn_mcp.config import Settings

__all__ = ["Store", "STATS_KEYS"]

#: The keys of :meth:`Store.stats`, always all present.
STATS_KEYS = (
    "agents_active",
    "tasks_open",
    "tasks_claimed",
    "tasks_completed",
    "tasks_failed",
    "tasks_total",
    "runs_total",
    "artifacts_total",
)


class Store(AgentsMixin, TasksMixin):
    """Agents, tokens, tasks, claims, runs and artifacts on one database.

    Stateless apart from its settings: every call is one transaction (or one read),
    so one Store may serve many threads, and any number of processes may share the
    database. ``clock`` returns the current aware UTC datetime; tests inject one to
    move time without sleeping.
    """

    def __init__(
        self,
        db: BaseDatabase,
        *,
        agent_kinds: Sequence[str] = DEFAULT_AGENT_KINDS,
        token_ttl_s: int = DEFAULT_TOKEN_TTL_S,
        refresh_grace_s: int = DEFAULT_REFRESH_GRACE_S,
        default_lease_s: float = DEFAULT_LEASE_S,
        admin_token: str | None = None,
        maintainer_tokens: Sequence[str] = (),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        kinds = tuple(agent_kinds) if not isinstance(agent_kinds, str) else ()
        if not kinds or not all(isinstance(k, str) and AGENT_KIND_PATTERN.fullmatch(k) for k in kinds):
            raise ConfigError("agent_kinds", agent_kinds, "a non-empty list of kinds matching [a-z][a-z0-9_-]{0,31}")
        # Bounded so that now + TTL + grace stays a representable timestamp.
        if not v.is_int(token_ttl_s) or not 1 <= token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ConfigError("token_ttl_s", token_ttl_s, f"an integer from 1 to {MAX_TOKEN_TTL_S} (seconds)")
        if not v.is_int(refresh_grace_s) or not 0 <= refresh_grace_s <= MAX_REFRESH_GRACE_S:
            raise ConfigError(
                "refresh_grace_s", refresh_grace_s, f"an integer from 0 to {MAX_REFRESH_GRACE_S} (seconds)"
            )
        try:
            lease = v.lease_seconds(default_lease_s)
        except v.ValidationError:
            raise ConfigError(
                "default_lease_s", default_lease_s, f"a number of seconds in (0, {v.LEASE_MAX_S:g}]"
            ) from None
        secrets_ok = all(
            isinstance(t, str) and len(t) >= MIN_MAINTAINER_TOKEN_LENGTH
            for t in ([admin_token] if admin_token is not None else []) + list(maintainer_tokens)
        )
        if not secrets_ok or isinstance(maintainer_tokens, str):
            raise ConfigError(
                "admin_token/maintainer_tokens",
                "<redacted>",
                f"strings of at least {MIN_MAINTAINER_TOKEN_LENGTH} characters",
            )
        self._db = db
        self._sql = queries_for(db)
        self._clock = clock
        self.agent_kinds = tuple(dict.fromkeys(kinds))
        self.token_ttl_s = token_ttl_s
        self.refresh_grace_s = refresh_grace_s
        self.default_lease_s = lease
        # Only digests are kept, so a heap dump or a repr shows no maintainer token.
        self._admin_digest = hashlib.sha256(admin_token.encode()).digest() if admin_token else None
        self._maintainer_digests = tuple(hashlib.sha256(t.encode()).digest() for t in maintainer_tokens)

    @classmethod
    def from_settings(cls, db: BaseDatabase, settings: Settings, **overrides: Any) -> Store:
        """A Store configured from :class:`~icn_mcp.config.Settings` (``MCP_*``).

        ``overrides`` (e.g. ``clock``) are passed to the constructor as they are.
        """
        options: dict[str, Any] = dict(
            agent_kinds=settings.agent_kinds,
            token_ttl_s=settings.token_ttl_s,
            refresh_grace_s=settings.refresh_grace_s,
            default_lease_s=settings.lease_s,
            admin_token=settings.admin_token,
            maintainer_tokens=settings.maintainer_tokens,
        )
        options.update(overrides)
        return cls(db, **options)

    @property
    def db(self) -> Database:
        """The database this store works on (typed as SQLite's: the server, which reads
        SQLite's attributes, runs on SQLite only in this version)."""
        return self._db

    def stats(self) -> dict[str, int]:
        """Counts for operators and metrics, with constant keys (:data:`STATS_KEYS`).

        ``tasks_claimed`` counts claimed rows, including claims whose lease has passed
        but that nobody has reclaimed yet.
        """
        sql = self._sql
        with self._db.read_transaction() as raw:
            conn = sql.wrap(raw)
            by_status = dict.fromkeys(TASK_STATUSES, 0)
            for row in conn.execute(sql.TASK_STATUS_COUNTS).fetchall():
                by_status[row["status"]] = row["n"]
            cutoff = format_ts(sql.now(conn, self._clock), plus_s=-self.refresh_grace_s)
            agents = conn.execute(sql.ACTIVE_AGENT_COUNT, {"cutoff": cutoff}).fetchone()[0]
            runs = conn.execute(sql.COUNT_RUNS).fetchone()[0]
            artifacts = conn.execute(sql.COUNT_ARTIFACTS).fetchone()[0]
        return {
            "agents_active": agents,
            "tasks_open": by_status["open"],
            "tasks_claimed": by_status["claimed"],
            "tasks_completed": by_status["completed"],
            "tasks_failed": by_status["failed"],
            "tasks_total": sum(by_status.values()),
            "runs_total": runs,
            "artifacts_total": artifacts,
        }

    def __repr__(self) -> str:
        return f"<Store {self._db.target!r}>"
