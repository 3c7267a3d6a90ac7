"""Settings from the environment, validated once, at the edges.

Only the CLI, the server and the process-wide :func:`icn_mcp.db.get_db` read the
environment; everything below them takes explicit arguments. A malformed value raises
:class:`~icn_mcp.errors.ConfigError` naming the variable, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from icn_mcp.errors import ConfigError

__all__ = [
    "Settings",
    "DEFAULT_DB_DIR",
    "DEFAULT_DB_FILENAME",
    "DEFAULT_BACKUP_KEEP",
    "DEFAULT_AGENT_KINDS",
    "DEFAULT_TOKEN_TTL_S",
    "DEFAULT_REFRESH_GRACE_S",
    "DEFAULT_LEASE_S",
    "AGENT_KIND_PATTERN",
    "MIN_MAINTAINER_TOKEN_LENGTH",
    "DEFAULT_BACKUP_KEEP",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_REPLICA_SYNC_INTERVAL_S",
    "DEFAULT_REPLICA_RETENTION_S",
]

DEFAULT_DB_DIR = "./var"
DEFAULT_DB_FILENAME = "icn-mcp.sqlite"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
#: 0 keeps every backup; N > 0 prunes all but the newest N after each backup.
DEFAULT_BACKUP_KEEP = 0
BACKUP_CHECKS = ("FULL", "QUICK")

#: Continuous replication (MCP_REPLICA_*, issue 12): Litestream's own default sync
#: interval, and a day of point-in-time history.
DEFAULT_REPLICA_SYNC_INTERVAL_S = 1.0
DEFAULT_REPLICA_RETENTION_S = 24 * 60 * 60
REPLICA_SYNC_INTERVAL_RANGE_S = (0.1, 3600.0)
REPLICA_RETENTION_RANGE_S = (60, 365 * 24 * 60 * 60)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

#: The agent HQ store's defaults (icn_mcp.store); the environment may override them.
DEFAULT_AGENT_KINDS = ("planner", "architect", "reviewer", "ops")
DEFAULT_TOKEN_TTL_S = 24 * 60 * 60
#: Clients refresh after a 401 with the token they hold, so an expired token stays
#: refreshable for this long.
DEFAULT_REFRESH_GRACE_S = 7 * 24 * 60 * 60
DEFAULT_LEASE_S = 300
#: An agent kind: lower-case letter, then up to 31 lower-case letters, digits, _ or -.
AGENT_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: Maintainer and admin tokens are guessable when short.
MIN_MAINTAINER_TOKEN_LENGTH = 16

#: Accepted spellings of booleans in the environment.
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
TEMP_STORES = ("DEFAULT", "FILE", "MEMORY")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

T = TypeVar("T")


def redact_url(url: str) -> str:
    """``url`` with any password (and user) in it replaced, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<redacted>" if "@" in url else url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}"


def _int(name: str, raw: str, *, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, f"an integer >= {minimum}") from None
    if value < minimum:
        raise ConfigError(name, raw, f"an integer >= {minimum}")
    return value


def _float(name: str, raw: str, *, minimum: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, f"a number >= {minimum:g}") from None
    if not value >= minimum or value == float("inf"):  # also rejects NaN
        raise ConfigError(name, raw, f"a finite number >= {minimum:g}")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name, raw, "one of 1/0, true/false, yes/no, on/off")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().upper()
    if value not in choices:
        raise ConfigError(name, raw, "one of " + ", ".join(choices))
    return value


def _agent_kinds(name: str, raw: str) -> tuple[str, ...]:
    allowed = "a comma-separated list of kinds like planner,ops (each [a-z][a-z0-9_-]{0,31})"
    kinds = tuple(dict.fromkeys(part.strip() for part in raw.split(",")))
    if not kinds or any(not AGENT_KIND_PATTERN.fullmatch(kind) for kind in kinds):
        raise ConfigError(name, raw, allowed)
    return kinds


def _secret_ok(token: str) -> bool:
    return len(token) >= MIN_MAINTAINER_TOKEN_LENGTH and not any(
        ch.isspace() or ch == "," for ch in token
    )


def _admin_token(name: str, raw: str) -> str | None:
    # The value is a secret: ConfigError shows "<redacted>", never the token.
    if raw == "":
        return None
    if not _secret_ok(raw):
        raise ConfigError(
            name,
            "<redacted>",
            f"unset, empty, or a token of at least {MIN_MAINTAINER_TOKEN_LENGTH} "
            "characters without spaces or commas",
        )
    return raw


def _maintainer_tokens(name: str, raw: str) -> tuple[str, ...]:
    tokens = tuple(part.strip() for part in raw.split(",") if part.strip())
    if any(not _secret_ok(token) for token in tokens):
        raise ConfigError(
            name,
            "<redacted>",
            f"a comma-separated list of tokens, each at least "
            f"{MIN_MAINTAINER_TOKEN_LENGTH} characters without spaces",
        )
    return tokens


def _host(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() or c in "/@" for c in value):
        raise ConfigError(name, raw, "a host name or IP address, such as 127.0.0.1")
    return value


def _port(name: str, raw: str) -> int:
    value = _int(name, raw, minimum=0)
    if value > 65535:
        raise ConfigError(name, raw, "a TCP port from 0 to 65535 (0: any free port)")
    return value


def _nonempty(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(name, raw, "a non-empty string")
    return value


def _replica_url(name: str, raw: str) -> str | None:
    from icn_mcp.db.replica import check_replica_url  # the one rule, beside its user

    if not raw.strip():
        return None
    try:
        return check_replica_url(raw)
    except ValueError as exc:  # the value may carry a password: never echo it whole
        raise ConfigError(name, redact_url(raw.strip()), str(exc)) from None


def _replica_sync_interval(name: str, raw: str) -> float:
    low, high = REPLICA_SYNC_INTERVAL_RANGE_S
    allowed = f"a number of seconds from {low:g} to {high:g}"
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, allowed) from None
    if not low <= value <= high:  # also rejects NaN
        raise ConfigError(name, raw, allowed)
    return value


def _replica_retention(name: str, raw: str) -> int:
    low, high = REPLICA_RETENTION_RANGE_S
    allowed = "a duration from 1m to 365d: seconds, or a number with s, m, h or d (e.g. 24h)"
    match = _DURATION.fullmatch(raw.strip().lower())
    if match is None:
        raise ConfigError(name, raw, allowed)
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not low <= seconds <= high:
        raise ConfigError(name, raw, allowed)
    return int(seconds)


@dataclass(frozen=True)
class Settings:
    """Every ``MCP_*`` setting icn-mcp understands, with its validated value."""

    db_dir: Path = Path(DEFAULT_DB_DIR)
    db_path: Path = Path(DEFAULT_DB_DIR) / DEFAULT_DB_FILENAME
    #: None means the migrations shipped inside the package.
    migrations_dir: Path | None = None
    #: Always None in this version (a set MCP_DB_URL is refused); may hold a password.
    db_url: str | None = field(default=None, repr=False)
    busy_timeout_ms: int = 30_000
    synchronous: str = "NORMAL"
    temp_store: str = "MEMORY"
    cache_size_kib: int = 8 * 1024
    journal_size_limit: int = 64 * 1024 * 1024
    health_check_interval_s: float = 30.0
    retries: int = 8
    allow_missing_migrations: bool = False
    allow_out_of_order_migrations: bool = False
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)
    agent_kinds: tuple[str, ...] = DEFAULT_AGENT_KINDS
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    refresh_grace_s: int = DEFAULT_REFRESH_GRACE_S
    lease_s: int = DEFAULT_LEASE_S
    #: Secrets: never shown in repr (and so never in logs).
    admin_token: str | None = field(default=None, repr=False)
    maintainer_tokens: tuple[str, ...] = field(default=(), repr=False)
    #: Where backups go; None means ``backups/`` beside the database file.
    backup_dir: Path | None = None
    backup_keep: int = DEFAULT_BACKUP_KEEP
    #: ``FULL`` runs integrity_check on each new backup before publishing it,
    #: ``QUICK`` the cheaper quick_check (no index-against-table comparison).
    backup_check: str = "FULL"
    # -- the server (issue 5) ---------------------------------------------------------
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Largest request body accepted (HTTP API and /mcp); larger ones get 413.
    max_body_bytes: int = 1024 * 1024
    #: Requests per minute per client address and per bearer token; 0 disables.
    rate_limit_ip_per_min: int = 3000
    rate_limit_token_per_min: int = 1200
    #: The one local agent `serve --stdio` acts for (registered on first use).
    stdio_agent_name: str = "local-stdio"
    stdio_agent_kind: str = "ops"
    log_level: str = "INFO"
    #: How long shutdown waits for in-flight requests before closing connections.
    shutdown_timeout_s: float = 10.0
    #: The database part of /healthz/db and the store gauges of /metrics are computed
    #: at most once per this many seconds (0: on every request), shared by requests.
    health_cache_s: float = 2.0
    # -- replication (issue 12, db/replica.py) ------------------------------------------
    #: Where Litestream replicates the database (file://, s3://, ...); None: no
    #: replication. May hold a password (sftp://user:pass@...): never in repr.
    replica_url: str | None = field(default=None, repr=False)
    replica_sync_interval_s: float = DEFAULT_REPLICA_SYNC_INTERVAL_S
    #: How far back a point-in-time restore can go.
    replica_retention_s: int = DEFAULT_REPLICA_RETENTION_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read and validate the settings from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ

        def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None:
                return default
            return parse(name, raw)

        def path(name: str, raw: str) -> Path:
            if not raw.strip():
                raise ConfigError(name, raw, "a non-empty filesystem path")
            if "\x00" in raw:
                raise ConfigError(name, raw, "a path without NUL characters")
            return Path(raw).expanduser()

        db_dir = get("MCP_DB_DIR", path, Path(DEFAULT_DB_DIR))
        db_path = get("MCP_DB_PATH", path, db_dir / DEFAULT_DB_FILENAME)
        migrations_dir = get("MCP_MIGRATIONS_DIR", path, None)

        db_url = env.get("MCP_DB_URL") or None
        if db_url is not None:
            # Refused here, so that no entry point (CLI, serve, get_db) can quietly
            # acknowledge writes into a local SQLite file while the operator believes
            # they go to PostgreSQL. The value may carry a password: never echo it.
            shown = redact_url(db_url)
            if not db_url.startswith(("postgresql://", "postgres://")):
                raise ConfigError("MCP_DB_URL", shown, "unset (SQLite) or a postgresql:// URL")
            raise ConfigError(
                "MCP_DB_URL",
                shown,
                "unset: this version serves SQLite only (MCP_DB_PATH); "
                "the PostgreSQL backend is not available yet",
            )

        values: dict[str, Any] = dict(
            db_dir=db_dir,
            db_path=db_path,
            migrations_dir=migrations_dir,
            db_url=db_url,
            busy_timeout_ms=get(
                "MCP_DB_BUSY_TIMEOUT_MS", lambda n, r: _int(n, r, minimum=0), 30_000
            ),
            synchronous=get(
                "MCP_DB_SYNCHRONOUS",
                lambda n, r: _choice(n, r, SYNCHRONOUS_MODES),
                "NORMAL",
            ),
            temp_store=get(
                "MCP_DB_TEMP_STORE", lambda n, r: _choice(n, r, TEMP_STORES), "MEMORY"
            ),
            cache_size_kib=get(
                "MCP_DB_CACHE_SIZE_KIB", lambda n, r: _int(n, r, minimum=1), 8 * 1024
            ),
            journal_size_limit=get(
                "MCP_DB_JOURNAL_SIZE_LIMIT",
                lambda n, r: _int(n, r, minimum=-1),
                64 * 1024 * 1024,
            ),
            health_check_interval_s=get(
                "MCP_DB_HEALTH_CHECK_INTERVAL_S",
                lambda n, r: _float(n, r, minimum=0),
                30.0,
            ),
            retries=get("MCP_DB_RETRIES", lambda n, r: _int(n, r, minimum=0), 8),
            allow_missing_migrations=get("MCP_MIGRATIONS_ALLOW_MISSING", _bool, False),
            allow_out_of_order_migrations=get(
                "MCP_MIGRATIONS_ALLOW_OUT_OF_ORDER", _bool, False
            ),
            extra={k: v for k, v in env.items() if k.startswith("MCP_")},
            agent_kinds=get("MCP_AGENT_KINDS", _agent_kinds, DEFAULT_AGENT_KINDS),
            token_ttl_s=get(
                "MCP_TOKEN_TTL_S", lambda n, r: _int(n, r, minimum=1), DEFAULT_TOKEN_TTL_S
            ),
            refresh_grace_s=get(
                "MCP_REFRESH_GRACE_S",
                lambda n, r: _int(n, r, minimum=0),
                DEFAULT_REFRESH_GRACE_S,
            ),
            lease_s=get("MCP_LEASE_S", lambda n, r: _int(n, r, minimum=1), DEFAULT_LEASE_S),
            admin_token=get("MCP_ADMIN_TOKEN", _admin_token, None),
            maintainer_tokens=get("MCP_MAINTAINER_TOKENS", _maintainer_tokens, ()),
            backup_dir=get("MCP_BACKUP_DIR", path, None),
            backup_keep=get(
                "MCP_BACKUP_KEEP",
                lambda n, r: _int(n, r, minimum=0),
                DEFAULT_BACKUP_KEEP,
            ),
            backup_check=get(
                "MCP_BACKUP_CHECK", lambda n, r: _choice(n, r, BACKUP_CHECKS), "FULL"
            ),
            host=get("MCP_HOST", _host, DEFAULT_HOST),
            port=get("MCP_PORT", _port, DEFAULT_PORT),
            max_body_bytes=get(
                "MCP_MAX_BODY_BYTES", lambda n, r: _int(n, r, minimum=1024), 1024 * 1024
            ),
            rate_limit_ip_per_min=get(
                "MCP_RATE_LIMIT_IP_PER_MIN", lambda n, r: _int(n, r, minimum=0), 3000
            ),
            rate_limit_token_per_min=get(
                "MCP_RATE_LIMIT_TOKEN_PER_MIN", lambda n, r: _int(n, r, minimum=0), 1200
            ),
            stdio_agent_name=get("MCP_STDIO_AGENT_NAME", _nonempty, "local-stdio"),
            stdio_agent_kind=get("MCP_STDIO_AGENT_KIND", _nonempty, "ops"),
            log_level=get("MCP_LOG_LEVEL", lambda n, r: _choice(n, r, LOG_LEVELS), "INFO"),
            shutdown_timeout_s=get(
                "MCP_SHUTDOWN_TIMEOUT_S", lambda n, r: _float(n, r, minimum=0), 10.0
            ),
            health_cache_s=get(
                "MCP_HEALTH_CACHE_S", lambda n, r: _float(n, r, minimum=0), 2.0
            ),
            replica_url=get("MCP_REPLICA_URL", _replica_url, None),
            replica_sync_interval_s=get(
                "MCP_REPLICA_SYNC_INTERVAL_S", _replica_sync_interval, DEFAULT_REPLICA_SYNC_INTERVAL_S
            ),
            replica_retention_s=get(
                "MCP_REPLICA_RETENTION", _replica_retention, DEFAULT_REPLICA_RETENTION_S
            ),
        )
        return cls(**values)

    def database_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`icn_mcp.db.Database` from these settings."""
        return dict(
            migrations_dir=self.migrations_dir,
            busy_timeout_ms=self.busy_timeout_ms,
            synchronous=self.synchronous,
            temp_store=self.temp_store,
            cache_size_kib=self.cache_size_kib,
            journal_size_limit=self.journal_size_limit,
            health_check_interval_s=self.health_check_interval_s,
            retries=self.retries,
            allow_missing_migrations=self.allow_missing_migrations,
            allow_out_of_order_migrations=self.allow_out_of_order_migrations,
            # With a replica, Litestream owns checkpointing (db/replica.py).
            wal_autocheckpoint=0 if self.replica_url else 1000,
        )
