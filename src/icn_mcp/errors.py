"""The one exception tree of icn-mcp.

Every error the package raises on purpose derives from :class:`IcnMcpError`, so a
caller (the CLI, the HTTP layer) can catch one class and show ``str(err)`` to a user.
Errors carry their data as attributes, not only inside the message::

    IcnMcpError
    ├── ConfigError                 a malformed setting (names variable, value, allowed)
    ├── DatabaseError               anything about the database itself
    │   ├── DatabaseClosed          the Database was closed
    │   ├── DatabaseFileError       the file vanished or was replaced underneath us
    │   ├── BusyError               busy/locked after the whole retry budget
    │   ├── DatabaseUnavailable     the database server cannot be reached (PostgreSQL)
    │   ├── CommitUnknown           the connection was lost during COMMIT: the
    │   │                           transaction may or may not have committed
    │   ├── MigrationError          a migration failed or the history is inconsistent
    │   │   └── ChecksumMismatch    an applied migration's file changed
    │   ├── LockTimeout             a keyed or advisory lock was not acquired in time
    │   ├── LockLost                an advisory lease was lost (expired, taken over)
    │   ├── BackupError             a backup could not be made, or a file is not a
    │   │                           valid backup (names the path and the cause)
    │   ├── RestoreError            a restore was refused or failed (the live
    │   │                           database is left as it was when refused)
    │   └── StorageFull             a write was refused: the disk (or quota) is full
    │   └── ReplicaError            continuous replication (Litestream) is missing,
    │                               misconfigured or failed (names the replica)
    └── StoreError                  the agent HQ domain refused a request (icn_mcp.store)
        ├── ValidationError         bad input; ``fields`` maps each field to what is allowed
        ├── NotFound                no such agent, task...; ``kind`` and ``id``
        ├── Unauthorized            missing, unknown, expired or revoked credential
        ├── Forbidden               a valid credential without the right to do this
        └── Conflict                the request contradicts the current state (stale claim)
"""

from __future__ import annotations

__all__ = [
    "IcnMcpError",
    "ConfigError",
    "DatabaseError",
    "DatabaseClosed",
    "DatabaseFileError",
    "BusyError",
    "DatabaseUnavailable",
    "CommitUnknown",
    "MigrationError",
    "ChecksumMismatch",
    "LockTimeout",
    "LockLost",
    "BackupError",
    "RestoreError",
    "StorageFull",
    "ReplicaError",
    "StoreError",
    "ValidationError",
    "NotFound",
    "Unauthorized",
    "Forbidden",
    "Conflict",
]


class IcnMcpError(Exception):
    """Root of every error icn-mcp raises on purpose.

    ``hint`` is an optional second line telling the user what to do.
    """

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(IcnMcpError):
    """A setting from the environment (or an argument) is malformed."""

    def __init__(self, variable: str, value: object, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"{variable}={value!r} is not valid: expected {allowed}")


class DatabaseError(IcnMcpError):
    """A problem with the database itself."""


class DatabaseClosed(DatabaseError):
    """The :class:`~icn_mcp.db.Database` was closed and cannot be used any more."""


class DatabaseFileError(DatabaseError):
    """The database file was deleted or replaced while connections had it open.

    Writing on would put data into an unlinked file that nobody will ever read, so
    the operation is refused instead.
    """

    def __init__(self, path: str, what: str, *, hint: str | None = None) -> None:
        self.path = path
        self.what = what
        super().__init__(f"database file {path} {what} while it was open", hint=hint)


class BusyError(DatabaseError):
    """SQLite stayed busy or locked through every retry."""

    def __init__(self, attempts: int, cause: BaseException) -> None:
        self.attempts = attempts
        self.cause = cause
        super().__init__(
            f"database stayed busy after {attempts} attempts: {cause}",
            hint="another process holds the write lock for a long time; "
            "raise MCP_DB_BUSY_TIMEOUT_MS or find the long transaction",
        )


class DatabaseUnavailable(DatabaseError):
    """The database server could not be reached (PostgreSQL: no connection in time)."""

    def __init__(self, target: str, cause: object, *, hint: str | None = None) -> None:
        self.target = target
        self.cause = cause
        super().__init__(
            f"database {target} is unavailable: {cause}",
            hint=hint or "check that PostgreSQL is running and reachable (MCP_DB_URL)",
        )


class CommitUnknown(DatabaseError):
    """The connection broke while COMMIT was in flight: the outcome is unknown.

    The server may have committed the transaction before the connection died, or
    not. It is never retried automatically, since running it again could apply it
    twice; the caller must look at the data (or use an idempotency key) to decide.
    """

    def __init__(self, target: str, cause: object) -> None:
        self.target = target
        self.cause = cause
        super().__init__(
            f"the connection to {target} was lost during COMMIT ({cause}); "
            "the transaction may or may not have been committed",
            hint="check whether the change is there before repeating it "
            "(requests with an idempotency key are safe to repeat)",
        )


class MigrationError(DatabaseError):
    """A migration could not be applied, or the migration history is inconsistent.

    For a failed statement, ``version``, ``statement_index`` (1-based), ``line`` and
    ``sqlite_error`` say exactly where and why.
    """

    def __init__(
        self,
        message: str,
        *,
        version: str | None = None,
        statement_index: int | None = None,
        line: int | None = None,
        statement: str | None = None,
        sqlite_error: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.version = version
        self.statement_index = statement_index
        self.line = line
        self.statement = statement
        self.sqlite_error = sqlite_error
        super().__init__(message, hint=hint)


class ChecksumMismatch(MigrationError):
    """An applied migration's file no longer has the checksum recorded when it ran."""

    def __init__(self, version: str, stored: str, current: str) -> None:
        self.stored = stored
        self.current = current
        super().__init__(
            f"migration {version} was changed after it was applied: stored checksum {stored}, current file {current}",
            version=version,
            hint="restore the original file; schema changes belong in a new migration",
        )


class LockTimeout(DatabaseError):
    """A lock could not be acquired within the wait allowed.

    For an advisory lock, ``owner`` and ``expires_at`` describe the current holder.
    """

    def __init__(
        self,
        name: str,
        waited_s: float,
        *,
        owner: str | None = None,
        expires_at: str | None = None,
    ) -> None:
        self.name = name
        self.waited_s = waited_s
        self.owner = owner
        self.expires_at = expires_at
        held = f"; held by {owner} until {expires_at}" if owner else ""
        super().__init__(f"lock {name!r} not acquired within {waited_s:.3f}s{held}")


class LockLost(DatabaseError):
    """An advisory lease is no longer ours: it expired and was taken, or was released."""

    def __init__(self, name: str, owner: str) -> None:
        self.name = name
        self.owner = owner
        super().__init__(f"advisory lock {name!r} is no longer held by {owner}")


class BackupError(DatabaseError):
    """A backup could not be made or verified.

    ``path`` is the file concerned (the backup, or the directory it was going to) and
    ``cause`` says why, e.g. ``"No space left on device"`` or ``"integrity_check: ..."``.
    """

    def __init__(self, path: str, cause: str, *, hint: str | None = None) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"backup {path} failed: {cause}", hint=hint)


class RestoreError(DatabaseError):
    """A restore was refused (the live database is untouched) or failed after the copy.

    ``path`` is the backup file, ``cause`` the reason.
    """

    def __init__(self, path: str, cause: str, *, hint: str | None = None) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"restore from {path} failed: {cause}", hint=hint)


class StorageFull(DatabaseError):
    """A write failed because the filesystem holding the database is full.

    ``path`` is the database, ``cause`` SQLite's or the OS's message, ``since`` when
    the current full-disk incident began. Nothing was written; the same write
    succeeds once space is freed (the server answers 507 ``storage_full`` meanwhile).
    """

    def __init__(self, path: str, cause: str, *, since: str | None = None) -> None:
        self.path = path
        self.cause = cause
        self.since = since
        super().__init__(
            f"database {path}: the disk is full ({cause}); nothing was written",
            hint="free space on the filesystem holding the database; writes resume by themselves",
        )


class ReplicaError(DatabaseError):
    """Replication with Litestream is not available, or one of its operations failed.

    ``replica`` is the replica URL with any password removed (or the binary, when it
    is missing) and ``cause`` says why.
    """

    def __init__(self, replica: str, cause: str, *, hint: str | None = None) -> None:
        self.replica = replica
        self.cause = cause
        super().__init__(f"replica {replica}: {cause}", hint=hint)


class StoreError(IcnMcpError):
    """The agent HQ store refused a request; the HTTP layer maps each kind to a status."""


class ValidationError(StoreError):
    """Input that is not allowed; ``fields`` maps each bad field to what is allowed (400)."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = dict(fields)
        detail = "; ".join(f"{name}: {why}" for name, why in self.fields.items())
        super().__init__(f"invalid input: {detail}")


class NotFound(StoreError):
    """No ``kind`` with this ``id`` exists (404)."""

    def __init__(self, kind: str, id: object) -> None:
        self.kind = kind
        self.id = id
        super().__init__(f"{kind} {id!r} not found")


class Unauthorized(StoreError):
    """The credential is missing, unknown, expired or revoked (401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"unauthorized: {reason}")


class Forbidden(StoreError):
    """The credential is valid but does not allow this request (403)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"forbidden: {reason}")


class Conflict(StoreError):
    """The request contradicts the current state, e.g. a report from a stale claim (409).

    ``data`` carries the facts a client needs to recover (task id, current attempt...).
    """

    def __init__(self, reason: str, **data: object) -> None:
        self.reason = reason
        self.data = data
        super().__init__(f"conflict: {reason}")
