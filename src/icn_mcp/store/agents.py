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
import sqlite3
import uuid
from datetime import datetime
from typing import Callable

from icn_mcp.db import Database
from icn_mcp.db.timestamps import format_ts
from icn_mcp.errors import NotFound, Unauthorized
from icn_mcp.store.models import Agent, RegisteredAgent
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


# A token usable now or refreshable later: not revoked, not expired beyond the grace
# window (``expires_at > now - grace``). An agent is active while it has one.
_LIVE_TOKEN = """
    SELECT 1 FROM agent_tokens t
    WHERE t.agent_id = agents.id AND t.revoked_at IS NULL AND t.expires_at > :cutoff
"""

#: Has an agent ever been registered (with a token)? Migration 0005's one row.
_BOOTSTRAPPED = "SELECT 1 FROM agent_bootstrap"
_RECORD_BOOTSTRAP = (
    "INSERT INTO agent_bootstrap (id, first_agent_id, registered_at) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING"
)

#: Active agents for stats: live tokens, or local (token-less, see ensure_local_agent).
ACTIVE_AGENT_COUNT = f"""
    SELECT count(*) FROM agents
    WHERE revoked_at IS NULL AND (local = 1 OR EXISTS ({_LIVE_TOKEN}))
"""

_TOKEN_LOOKUP = """
    SELECT a.id, a.name, a.kind, a.version, a.created_at, a.revoked_at AS agent_revoked_at,
           t.expires_at, t.revoked_at
    FROM agent_tokens t JOIN agents a ON a.id = t.agent_id
    WHERE t.token_hash = ?
"""


class AgentsMixin:
    """The agent and token half of :class:`~icn_mcp.store.Store`."""

    _db: Database
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

        def register(conn: sqlite3.Connection) -> RegisteredAgent:
            now = self._clock()
            if operator:
                pass
            elif credential is None:
                if conn.execute(_BOOTSTRAPPED).fetchone():
                    raise Unauthorized(
                        "an agent has already registered here; registering another needs "
                        "an agent token, a maintainer token, or the operator command "
                        "'icn-mcp agent register'"
                    )
            elif not is_maintainer:
                self._lookup_token(conn, credential, now)
            created_at = format_ts(now)
            agent_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO agents (id, name, kind, version, created_at) VALUES (?, ?, ?, ?, ?)",
                (agent_id, name, kind, version, created_at),
            )
            conn.execute(_RECORD_BOOTSTRAP, (agent_id, created_at))
            token, expires_at = self._issue_token(conn, agent_id, now)
            return RegisteredAgent(
                id=agent_id,
                name=name,
                kind=kind,
                version=version,
                token=token,
                token_expires_at=expires_at,
            )

        return self._db.run_in_transaction(register)

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

        def ensure(conn: sqlite3.Connection) -> Agent:
            row = conn.execute(
                "SELECT id, created_at FROM agents WHERE local = 1 AND name = ? AND revoked_at IS NULL",
                (name,),
            ).fetchone()
            if row is None:
                agent_id, created_at = str(uuid.uuid4()), format_ts(self._clock())
                conn.execute(
                    "INSERT INTO agents (id, name, kind, version, created_at, local) VALUES (?, ?, ?, ?, ?, 1)",
                    (agent_id, name, kind, version, created_at),
                )
            else:
                agent_id, created_at = row["id"], row["created_at"]
                conn.execute(
                    "UPDATE agents SET kind = ?, version = ? WHERE id = ?",
                    (kind, version, agent_id),
                )
            return Agent(
                id=agent_id, name=name, kind=kind, version=version, created_at=created_at, token_expires_at=None
            )

        return self._db.run_in_transaction(ensure)

    def _issue_token(self, conn: sqlite3.Connection, agent_id: str, now: datetime) -> tuple[str, str]:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires_at = format_ts(now, plus_s=self.token_ttl_s)
        conn.execute(
            "INSERT INTO agent_tokens (token_hash, agent_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (hash_token(token), agent_id, format_ts(now), expires_at),
        )
        return token, expires_at

    # -- authentication -------------------------------------------------------------

    def authenticate(self, token: str | None) -> Agent:
        """The agent a bearer token belongs to.

        Raises Unauthorized when the token is missing, malformed, unknown, expired,
        revoked (refreshed away), or its agent was revoked.
        """
        _check_token_shape(token)
        return self._lookup_token(self._db.connection(), token, self._clock())  # type: ignore[arg-type]

    def _lookup_token(self, conn: sqlite3.Connection, token: str, now: datetime) -> Agent:
        row = _usable_token(
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
        _usable_token(
            self._db.connection(),
            token_hash,
            expired_at_or_before=format_ts(self._clock(), plus_s=-self.refresh_grace_s),
            expired=expired,
        )

        def refresh(conn: sqlite3.Connection) -> RegisteredAgent:
            now = self._clock()
            row = _usable_token(
                conn,
                token_hash,
                expired_at_or_before=format_ts(now, plus_s=-self.refresh_grace_s),
                expired=expired,
            )
            conn.execute(
                "UPDATE agent_tokens SET revoked_at = ? WHERE token_hash = ?",
                (format_ts(now), token_hash),
            )
            new_token, expires_at = self._issue_token(conn, row["id"], now)
            return RegisteredAgent(
                id=row["id"],
                name=row["name"],
                kind=row["kind"],
                version=row["version"],
                token=new_token,
                token_expires_at=expires_at,
            )

        return self._db.run_in_transaction(refresh)

    # -- revocation and clean-up ----------------------------------------------------

    def revoke_agent(self, agent_id: str) -> None:
        """Revoke an agent and all its tokens, and end its leases now so that other
        agents can claim its tasks. Idempotent; NotFound for an unknown id."""

        def revoke(conn: sqlite3.Connection) -> None:
            now = format_ts(self._clock())
            row = conn.execute("SELECT revoked_at FROM agents WHERE id = ?", (agent_id,)).fetchone()
            if row is None:
                raise NotFound("agent", agent_id)
            if row["revoked_at"] is not None:
                return
            conn.execute("UPDATE agents SET revoked_at = ? WHERE id = ?", (now, agent_id))
            conn.execute(
                "UPDATE agent_tokens SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL",
                (now, agent_id),
            )
            _end_leases_of_revoked_agents(conn, now)

        self._db.run_in_transaction(revoke)

    def revoke_all_tokens(self) -> int:
        """Revoke every agent token not yet revoked, in one transaction; how many.

        For operators after a restore, which brings back the backup's tokens, also
        those refreshed away or revoked since (docs/backup.md). Agents keep their
        rows, runs and unexpired leases; their next request answers 401 and a
        refresh is refused, so each registers again (or a maintainer issues it one).
        """

        def revoke(conn: sqlite3.Connection) -> int:
            now = format_ts(self._clock())
            return conn.execute("UPDATE agent_tokens SET revoked_at = ? WHERE revoked_at IS NULL", (now,)).rowcount

        return self._db.run_in_transaction(revoke)

    def cleanup_expired(self) -> int:
        """Remove what can never be used again; the number of agents removed.

        An agent none of whose tokens can authenticate or refresh any more (all
        revoked, or expired beyond the refresh grace window) is removed from the
        active agents: marked revoked, its leases ended. Its row stays, because runs
        name it. Tokens that are revoked or expired beyond the grace window are
        deleted.
        """

        def cleanup(conn: sqlite3.Connection) -> int:
            moment = self._clock()
            now = format_ts(moment)
            cutoff = format_ts(moment, plus_s=-self.refresh_grace_s)
            removed = conn.execute(
                f"UPDATE agents SET revoked_at = :now "
                f"WHERE revoked_at IS NULL AND local = 0 AND NOT EXISTS ({_LIVE_TOKEN})",
                {"now": now, "cutoff": cutoff},
            ).rowcount
            conn.execute(
                "DELETE FROM agent_tokens WHERE revoked_at IS NOT NULL OR expires_at <= ?",
                (cutoff,),
            )
            if removed:
                _end_leases_of_revoked_agents(conn, now)
            return removed

        return self._db.run_in_transaction(cleanup)

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


def _usable_token(conn: sqlite3.Connection, token_hash: str, *, expired_at_or_before: str, expired: str) -> sqlite3.Row:
    """The token's row joined with its agent, or Unauthorized naming why not: unknown,
    agent revoked, token revoked, or expiring at or before ``expired_at_or_before``."""
    row = conn.execute(_TOKEN_LOOKUP, (token_hash,)).fetchone()
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


def _end_leases_of_revoked_agents(conn: sqlite3.Connection, now: str) -> None:
    """Expire now the unexpired leases held by revoked agents (reclaimed on the next
    claim, like any expired lease)."""
    conn.execute(
        "UPDATE tasks SET lease_expires_at = :now, updated_at = :now WHERE id IN ("
        " SELECT id FROM tasks INDEXED BY tasks_lease"
        " WHERE status = 'claimed' AND lease_expires_at > :now"
        " AND claimed_by IN (SELECT id FROM agents WHERE revoked_at IS NOT NULL))",
        {"now": now},
    )


def _agent(row: sqlite3.Row) -> Agent:
    return Agent(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        version=row["version"],
        created_at=row["created_at"],
        token_expires_at=row["expires_at"],
    )
