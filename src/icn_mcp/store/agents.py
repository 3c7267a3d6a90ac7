"""Agents and their bearer tokens: registration (with the bootstrap rule),
authentication, refresh, revocation, clean-up, and maintainer tokens.

A token is ``secrets.token_urlsafe(32)`` (32 random bytes). Only its SHA-256 hex is
stored, and lookups go by that hash, so the raw token exists only in the response to
the request that created it. Maintainer and admin tokens come from settings and are
never stored: only their digests are kept in memory and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import datetime
from typing import Any, Callable

from icn_mcp.db.timestamps import format_ts
from icn_mcp.errors import NotFound, Unauthorized
from icn_mcp.store.models import Agent, RegisteredAgent
from icn_mcp.store.sql import Queries
from icn_mcp.store.validation import NAME_PATTERN, VERSION_PATTERN, Problems

__all__ = ["AgentsMixin", "hash_token", "TOKEN_BYTES", "TOKEN_MAX_LENGTH"]

#: Random bytes in a token (``secrets.token_urlsafe`` makes 43 characters of them).
TOKEN_BYTES = 32
#: Longer strings are refused before hashing: no token of ours is that long.
TOKEN_MAX_LENGTH = 512

ROLE_ADMIN = "admin"
ROLE_MAINTAINER = "maintainer"


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class AgentsMixin:
    """The agent and token half of :class:`~icn_mcp.store.Store`."""

    _db: Any
    _sql: Queries
    _clock: Callable[[], datetime]
    agent_kinds: tuple[str, ...]
    token_ttl_s: int
    refresh_grace_s: int
    _admin_digest: bytes | None
    _maintainer_digests: tuple[bytes, ...]

    # -- registration ---------------------------------------------------------------

    def register_agent(
        self,
        name: str,
        kind: str,
        version: str | None = None,
        *,
        credential: str | None = None,
        operator: bool = False,
    ) -> RegisteredAgent:
        """Register an agent and issue its first token (returned once, never stored).

        Without ``credential`` this succeeds only while no agent has ever been
        registered in this database (the bootstrap): not when all of them lapsed,
        were revoked or cleaned up. The check and the insert share one ``BEGIN
        IMMEDIATE`` transaction, so of several racing first registrations, in any
        processes, exactly one wins. Otherwise ``credential`` must be a valid agent
        token or a maintainer/admin token. ``operator=True`` is for the operator's
        own command (``icn-mcp agent register``), which has the database file in
        hand: no credential is checked. Raises ValidationError or Unauthorized.
        """
        self._validate_agent(name, kind, version)
        if credential is not None:
            _check_token_shape(credential)
        is_maintainer = credential is not None and self.maintainer_role(credential) is not None

        sql = self._sql

        def register(conn: Any) -> RegisteredAgent:
            now = sql.now(conn, self._clock)
            if operator:
                pass
            elif credential is None:
                if conn.execute(sql.BOOTSTRAPPED).fetchone():
                    raise Unauthorized(
                        "an agent has already registered here; registering another needs "
                        "an agent token, a maintainer token, or the operator command "
                        "'icn-mcp agent register'"
                    )
            elif not is_maintainer:
                self._lookup_token(conn, credential, now)
            created_at = format_ts(now)
            agent_id = str(uuid.uuid4())
            conn.execute(sql.INSERT_AGENT, (agent_id, name, kind, version, created_at))
            conn.execute(sql.RECORD_BOOTSTRAP, (agent_id, created_at))
            token, expires_at = self._issue_token(conn, agent_id, now)
            return RegisteredAgent(
                id=agent_id,
                name=name,
                kind=kind,
                version=version,
                token=token,
                token_expires_at=expires_at,
            )

        return sql.write(self._db, register)

    def _validate_agent(self, name: object, kind: object, version: object) -> None:
        """ValidationError naming every bad field of a registration."""
        problems = Problems()
        problems.pattern(
            "name",
            name,
            NAME_PATTERN,
            "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
        if not isinstance(kind, str) or kind not in self.agent_kinds:
            problems.add("kind", "one of " + ", ".join(self.agent_kinds))
        if version is not None:
            problems.pattern(
                "version",
                version,
                VERSION_PATTERN,
                "null or 1-64 characters: letters, digits, '.', '_', '+' or '-'",
            )
        problems.raise_if_any()

    def ensure_local_agent(self, name: str, kind: str, version: str | None = None) -> Agent:
        """The local agent called ``name``, registered on first use, found again after.

        For a process that opens the database file itself (``serve --stdio``): it is
        trusted as an operator, so no credential and no token are involved. Local agents
        do not count for the bootstrap rule and are never removed by
        :meth:`cleanup_expired`; :meth:`revoke_agent` retires one, and the next call
        registers a new one. Racing first calls, in any processes, create exactly one.
        Raises ValidationError for a bad name or kind.
        """
        self._validate_agent(name, kind, version)

        sql = self._sql

        def ensure(conn: Any) -> Agent:
            row = conn.execute(sql.FIND_LOCAL_AGENT, (name,)).fetchone()
            if row is None:
                agent_id, created_at = str(uuid.uuid4()), format_ts(sql.now(conn, self._clock))
                conn.execute(sql.INSERT_LOCAL_AGENT, (agent_id, name, kind, version, created_at))
            else:
                agent_id, created_at = row["id"], row["created_at"]
                conn.execute(sql.UPDATE_LOCAL_AGENT, (kind, version, agent_id))
            return Agent(
                id=agent_id, name=name, kind=kind, version=version, created_at=created_at, token_expires_at=None
            )

        return sql.write(self._db, ensure)

    def _issue_token(self, conn: Any, agent_id: str, now: datetime) -> tuple[str, str]:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires_at = format_ts(now, plus_s=self.token_ttl_s)
        conn.execute(self._sql.INSERT_TOKEN, (hash_token(token), agent_id, format_ts(now), expires_at))
        return token, expires_at

    # -- authentication -------------------------------------------------------------

    def authenticate(self, token: str | None) -> Agent:
        """The agent a bearer token belongs to.

        Raises Unauthorized when the token is missing, malformed, unknown, expired,
        revoked (refreshed away), or its agent was revoked.
        """
        _check_token_shape(token)
        with self._sql.read(self._db) as conn:
            return self._lookup_token(conn, token, self._sql.now(conn, self._clock))  # type: ignore[arg-type]

    def _lookup_token(self, conn: Any, token: str, now: datetime) -> Agent:
        row = _usable_token(
            self._sql,
            conn,
            hash_token(token),
            expired_at_or_before=format_ts(now),
            expired="token expired; refresh it",
        )
        return _agent(row)

    def refresh_token(self, token: str | None) -> RegisteredAgent:
        """A new token for the agent of ``token``, which is revoked in the same
        transaction.

        ``token`` may be valid or expired less than ``refresh_grace_s`` ago (clients
        refresh after a 401 with the token they hold); a revoked token, or one whose
        agent was revoked, never refreshes. Raises Unauthorized.
        """
        _check_token_shape(token)
        token_hash = hash_token(token)  # type: ignore[arg-type]
        expired = "token expired beyond the refresh grace window; register again"
        # A refusal must be cheap: the original agent SDK repeats a refused refresh
        # without end (issue 8). So a plain read refuses first, without the write
        # lock; the transaction below checks again.
        sql = self._sql
        with sql.read(self._db) as conn:
            _usable_token(
                sql,
                conn,
                token_hash,
                expired_at_or_before=format_ts(sql.now(conn, self._clock), plus_s=-self.refresh_grace_s),
                expired=expired,
            )

        def refresh(conn: Any) -> RegisteredAgent:
            now = sql.now(conn, self._clock)
            row = _usable_token(
                sql,
                conn,
                token_hash,
                expired_at_or_before=format_ts(now, plus_s=-self.refresh_grace_s),
                expired=expired,
            )
            conn.execute(sql.REVOKE_TOKEN, (format_ts(now), token_hash))
            new_token, expires_at = self._issue_token(conn, row["id"], now)
            return RegisteredAgent(
                id=row["id"],
                name=row["name"],
                kind=row["kind"],
                version=row["version"],
                token=new_token,
                token_expires_at=expires_at,
            )

        return sql.write(self._db, refresh)

    # -- revocation and clean-up ----------------------------------------------------

    def revoke_agent(self, agent_id: str) -> None:
        """Revoke an agent and all its tokens, and end its leases now so that other
        agents can claim its tasks. Idempotent; NotFound for an unknown id."""

        sql = self._sql

        def revoke(conn: Any) -> None:
            now = format_ts(sql.now(conn, self._clock))
            row = conn.execute(sql.AGENT_REVOKED_AT, (agent_id,)).fetchone()
            if row is None:
                raise NotFound("agent", agent_id)
            if row["revoked_at"] is not None:
                return
            conn.execute(sql.REVOKE_AGENT, (now, agent_id))
            conn.execute(sql.REVOKE_AGENT_TOKENS, (now, agent_id))
            sql.end_leases_of_revoked_agents(conn, now)

        sql.write(self._db, revoke)

    def revoke_all_tokens(self) -> int:
        """Revoke every agent token not yet revoked, in one transaction; how many.

        For operators after a restore, which brings back the backup's tokens, also
        those refreshed away or revoked since (docs/backup.md). Agents keep their
        rows, runs and unexpired leases; their next request answers 401 and a
        refresh is refused, so each registers again (or a maintainer issues it one).
        """

        sql = self._sql

        def revoke(conn: Any) -> int:
            now = format_ts(sql.now(conn, self._clock))
            return int(conn.execute(sql.REVOKE_ALL_TOKENS, (now,)).rowcount)

        return sql.write(self._db, revoke)

    def cleanup_expired(self) -> int:
        """Remove what can never be used again; the number of agents removed.

        An agent none of whose tokens can authenticate or refresh any more (all
        revoked, or expired beyond the refresh grace window) is removed from the
        active agents: marked revoked, its leases ended. Its row stays, because runs
        name it. Tokens that are revoked or expired beyond the grace window are
        deleted.
        """

        sql = self._sql

        def cleanup(conn: Any) -> int:
            moment = sql.now(conn, self._clock)
            now = format_ts(moment)
            cutoff = format_ts(moment, plus_s=-self.refresh_grace_s)
            removed = int(conn.execute(sql.REMOVE_LAPSED_AGENTS, {"now": now, "cutoff": cutoff}).rowcount)
            conn.execute(sql.DELETE_DEAD_TOKENS, (cutoff,))
            if removed:
                sql.end_leases_of_revoked_agents(conn, now)
            return removed

        return sql.write(self._db, cleanup)

    # -- maintainers ----------------------------------------------------------------

    def maintainer_role(self, token: str | None) -> str | None:
        """``"admin"``, ``"maintainer"`` or None for a presented token.

        Compares SHA-256 digests (equal lengths) with :func:`hmac.compare_digest`,
        against every configured token without stopping at a match, so the time
        taken does not tell which token, or how much of one, matched.
        """
        if not isinstance(token, str) or not token or len(token) > TOKEN_MAX_LENGTH:
            return None
        presented = _digest(token)
        is_admin = False
        if self._admin_digest is not None:
            is_admin = hmac.compare_digest(presented, self._admin_digest)
        is_maintainer = False
        for digest in self._maintainer_digests:
            is_maintainer |= hmac.compare_digest(presented, digest)
        if is_admin:
            return ROLE_ADMIN
        if is_maintainer:
            return ROLE_MAINTAINER
        return None


def _usable_token(sql: Queries, conn: Any, token_hash: str, *, expired_at_or_before: str, expired: str) -> Any:
    """The token's row joined with its agent, or Unauthorized naming why not: unknown,
    agent revoked, token revoked, or expiring at or before ``expired_at_or_before``."""
    row = conn.execute(sql.TOKEN_LOOKUP, (token_hash,)).fetchone()
    if row is None:
        raise Unauthorized("unknown token")
    if row["agent_revoked_at"] is not None:
        raise Unauthorized("agent revoked")
    if row["revoked_at"] is not None:
        raise Unauthorized("token revoked")
    if row["expires_at"] <= expired_at_or_before:
        raise Unauthorized(expired)
    return row


def _check_token_shape(token: object) -> None:
    if token is None or token == "":
        raise Unauthorized("missing token")
    if not isinstance(token, str) or len(token) > TOKEN_MAX_LENGTH:
        raise Unauthorized("malformed token")


def _agent(row: Any) -> Agent:
    return Agent(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        version=row["version"],
        created_at=row["created_at"],
        token_expires_at=row["expires_at"],
    )
