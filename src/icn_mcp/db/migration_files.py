"""Migration files and the migration model, the same on every backend.

A migration is a file ``NNNN_description.sql``; its version is the file name without
``.sql`` and files apply in sorted order. The checksum is the hex SHA-256 of the file's
UTF-8 text with a leading BOM removed and CRLF/CR normalised to LF, so a checkout with
different line endings is not a "change". A file whose first line is
``-- icn-mcp: no-transaction`` runs outside a transaction (it is then not atomic).

This module holds what does not depend on the engine: naming, reading and checksumming
the files (:func:`discover`), the history and failure records, the plan
(:func:`plan_from`: files compared with a history read by either backend) and the
dry-run result. Splitting a file into statements is each backend's own (SQL dialects
differ): :mod:`icn_mcp.db.sqlite.migrations` and :mod:`icn_mcp.db.postgres.migrations`
read the history tables, apply and rehearse. Both import this module; it imports
neither.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

from icn_mcp.errors import ChecksumMismatch, MigrationError

__all__ = [
    "CHECKSUM_ALGORITHM",
    "NO_TRANSACTION_MARKER",
    "HISTORY_TABLE",
    "FAILURES_TABLE",
    "MIGRATION_NAME",
    "Statement",
    "MigrationFile",
    "AppliedMigration",
    "FailedMigration",
    "MigrationState",
    "MigrationPlan",
    "DryRunResult",
    "default_migrations_dir",
    "normalise",
    "checksum",
    "skip_comments",
    "strip_comments",
    "discover",
    "plan_from",
    "applier_id",
]

CHECKSUM_ALGORITHM = "sha256"
NO_TRANSACTION_MARKER = "-- icn-mcp: no-transaction"
HISTORY_TABLE = "schema_migrations"
FAILURES_TABLE = "schema_migration_failures"

#: ``0001_create_tasks.sql``: digits, underscore, a description of safe characters.
MIGRATION_NAME = re.compile(r"^(?P<number>[0-9]+)_(?P<description>[A-Za-z0-9][A-Za-z0-9_.\-]*)\.sql$")


def default_migrations_dir() -> Path:
    """The schema migrations shipped inside the package."""
    return Path(str(resources.files("icn_mcp") / "migrations"))


def normalise(raw: bytes) -> str:
    """UTF-8 text without a leading BOM and with LF line endings."""
    text = raw.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def checksum(raw: bytes) -> str:
    """Hex SHA-256 of :func:`normalise` (``raw``) encoded as UTF-8."""
    return hashlib.sha256(normalise(raw).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a migration file."""

    index: int  # 1-based position in the file
    line: int  # line of its first token
    sql: str

    @property
    def first_line(self) -> str:
        return strip_comments(self.sql).splitlines()[0].strip() if strip_comments(self.sql) else ""


def skip_comments(text: str, pos: int) -> int:
    """Position of the first character at or after ``pos`` that is not space or comment."""
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch.isspace():
            pos += 1
        elif text.startswith("--", pos):
            end = text.find("\n", pos)
            pos = n if end < 0 else end + 1
        elif text.startswith("/*", pos):
            end = text.find("*/", pos + 2)
            pos = n if end < 0 else end + 2
        else:
            break
    return pos


def strip_comments(sql: str) -> str:
    """``sql`` without the spaces and comments before its first token."""
    return sql[skip_comments(sql, 0) :].strip()


@dataclass(frozen=True)
class MigrationFile:
    """One ``NNNN_description.sql`` file and what it contains."""

    version: str
    description: str
    path: Path
    text: str
    checksum: str

    @property
    def transactional(self) -> bool:
        first = self.text.split("\n", 1)[0].strip()
        return first.lower() != NO_TRANSACTION_MARKER


def discover(directory: Path | str) -> list[MigrationFile]:
    """Every migration in ``directory``, in the order they apply.

    Files that do not end in ``.sql`` are ignored. A ``.sql`` file whose name does not
    match ``NNNN_description.sql``, or numbers of different widths (which would sort
    ``0010`` before ``002``), are refused so that the order can never surprise.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MigrationError(
            f"migrations directory {directory} does not exist or is not a directory",
            hint="set MCP_MIGRATIONS_DIR to a directory of NNNN_description.sql files",
        )
    files: list[MigrationFile] = []
    widths: dict[int, str] = {}
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".sql") or not path.is_file():
            continue
        match = MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"migration file name {path.name!r} in {directory} does not match "
                "NNNN_description.sql (digits, '_', then letters, digits, '_', '-', '.')"
            )
        widths.setdefault(len(match["number"]), path.name)
        raw = path.read_bytes()
        try:
            text = normalise(raw)
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migration {path} is not valid UTF-8 (byte {exc.start})") from None
        files.append(
            MigrationFile(
                version=path.name[: -len(".sql")],
                description=match["description"].replace("_", " "),
                path=path,
                text=text,
                checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            )
        )
    if len(widths) > 1:
        examples = ", ".join(sorted(widths.values()))
        raise MigrationError(
            f"migration numbers in {directory} have different widths ({examples}); "
            "they would apply out of numeric order",
            hint="zero-pad every number to the same width, e.g. 0001_, 0002_",
        )
    return files


# -- history ------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedMigration:
    version: str
    checksum: str
    applied_at: str
    description: str | None = None
    checksum_algorithm: str | None = CHECKSUM_ALGORITHM
    execution_ms: float | None = None
    applied_by: str | None = None


@dataclass(frozen=True)
class FailedMigration:
    version: str
    checksum: str
    failed_at: str
    statement_index: int | None
    line: int | None
    statement: str | None
    error: str
    applied_by: str | None


def applier_id() -> str:
    """``host:pid`` of this process: who applied (or failed) a migration, in the history."""
    return f"{socket.gethostname()}:{os.getpid()}"


# -- plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationState:
    """Where one version stands: applied, pending, changed, missing or failed."""

    version: str
    state: str
    file_checksum: str | None = None
    stored_checksum: str | None = None
    applied_at: str | None = None
    execution_ms: float | None = None
    applied_by: str | None = None
    error: str | None = None
    #: When the last recorded failure of this version happened (not applied since).
    failed_at: str | None = None


@dataclass
class MigrationPlan:
    """The migrations directory compared with the database's history."""

    items: list[MigrationState] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)

    def _by(self, state: str) -> list[MigrationState]:
        return [item for item in self.items if item.state == state]

    @property
    def applied(self) -> list[MigrationState]:
        return self._by("applied")

    @property
    def pending(self) -> list[MigrationState]:
        return self._by("pending") + self._by("failed")

    @property
    def changed(self) -> list[MigrationState]:
        return self._by("changed")

    @property
    def missing(self) -> list[MigrationState]:
        return self._by("missing")

    @property
    def failed(self) -> list[MigrationState]:
        return self._by("failed")

    @property
    def failed_since_applied(self) -> list[MigrationState]:
        """Versions recorded as failed and not applied since (whether or not the file
        was edited after the failure: an edited file is pending, still unproven)."""
        return [item for item in self.items if item.failed_at is not None]

    def failure_errors(self) -> list[MigrationError]:
        """One error per version in :attr:`failed_since_applied` (for ``db verify``)."""
        return [
            MigrationError(
                f"migration {item.version} failed at {item.failed_at} and has not been applied since: {item.error}",
                version=item.version,
                hint="fix the migration and run 'icn-mcp db migrate' ('icn-mcp db status' shows the error)"
                if item.state == "failed"
                else "its file changed since; run 'icn-mcp db migrate' to apply it",
            )
            for item in self.failed_since_applied
        ]

    def to_dict(self) -> dict[str, object]:
        """Plain data with stable keys (for ``db status --json``)."""
        return {
            "migrations": [asdict(item) for item in self.items],
            "counts": {state: len(self._by(state)) for state in ("applied", "pending", "changed", "missing", "failed")},
            "out_of_order": list(self.out_of_order),
        }

    def problems(self, *, allow_missing: bool = False, allow_out_of_order: bool = False) -> list[MigrationError]:
        """What stops start-up, most serious first (empty when all is well)."""
        found: list[MigrationError] = [
            ChecksumMismatch(item.version, item.stored_checksum or "", item.file_checksum or "")
            for item in self.changed
        ]
        if not allow_missing:
            found += [
                MigrationError(
                    f"migration {item.version} is recorded as applied but its file is "
                    "missing from the migrations directory",
                    version=item.version,
                    hint="restore the file, or set MCP_MIGRATIONS_ALLOW_MISSING=1",
                )
                for item in self.missing
            ]
        if not allow_out_of_order:
            found += [
                MigrationError(
                    f"migration {version} is new but sorts before the latest applied "
                    "migration; it would run out of order",
                    version=version,
                    hint="renumber it after the latest applied migration, or set MCP_MIGRATIONS_ALLOW_OUT_OF_ORDER=1",
                )
                for version in self.out_of_order
            ]
        return found


def plan_from(
    history: dict[str, AppliedMigration],
    failures: list[FailedMigration],
    files: Iterable[MigrationFile],
) -> MigrationPlan:
    """Compare ``files`` with a history and failures read from any backend."""
    files = list(files)
    latest_failure: dict[str, FailedMigration] = {}
    for failure in failures:
        latest_failure[failure.version] = failure
    result = MigrationPlan()
    known = set()
    latest_applied = max(history) if history else None
    for mf in files:
        known.add(mf.version)
        applied = history.get(mf.version)
        if applied is not None:
            state = "applied" if applied.checksum == mf.checksum else "changed"
            result.items.append(
                MigrationState(
                    mf.version,
                    state,
                    file_checksum=mf.checksum,
                    stored_checksum=applied.checksum,
                    applied_at=applied.applied_at,
                    execution_ms=applied.execution_ms,
                    applied_by=applied.applied_by,
                )
            )
            continue
        failed = latest_failure.get(mf.version)
        # A failure of this very file content is "failed"; once edited it is pending again.
        state = "failed" if failed is not None and failed.checksum == mf.checksum else "pending"
        result.items.append(
            MigrationState(
                mf.version,
                state,
                file_checksum=mf.checksum,
                error=failed.error if failed is not None else None,
                failed_at=failed.failed_at if failed is not None else None,
            )
        )
        if latest_applied is not None and mf.version < latest_applied:
            result.out_of_order.append(mf.version)
    for version, applied in history.items():
        if version not in known:
            result.items.append(
                MigrationState(
                    version,
                    "missing",
                    stored_checksum=applied.checksum,
                    applied_at=applied.applied_at,
                    execution_ms=applied.execution_ms,
                    applied_by=applied.applied_by,
                )
            )
    result.items.sort(key=lambda item: item.version)
    return result


# -- dry run ------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRunResult:
    version: str
    ok: bool
    statements: int
    error: str | None = None
    skipped: bool = False
