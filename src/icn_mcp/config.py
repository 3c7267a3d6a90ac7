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
    "SETTINGS",
    "SettingSpec",
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
#: Waiting claims (issue 11): the longest wait a claim may ask for, its hard upper
#: bound, and how often a waiting server looks for commits by other processes.
DEFAULT_CLAIM_WAIT_MAX_S = 60.0
CLAIM_WAIT_MAX_LIMIT_S = 3600.0
DEFAULT_CLAIM_POLL_INTERVAL_S = 0.01
#: An agent kind: lower-case letter, then up to 31 lower-case letters, digits, _ or -.
AGENT_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: Maintainer and admin tokens are guessable when short.
MIN_MAINTAINER_TOKEN_LENGTH = 16

#: Largest values a setting (or the matching library argument) accepts. Each keeps the
#: value inside what SQLite stores in its 32-bit pragmas, and every duration far inside
#: what a timestamp can hold (``datetime`` ends at year 9999): now + TTL + grace must
#: stay representable, or every registration would fail.
MAX_BUSY_TIMEOUT_MS = 24 * 60 * 60 * 1000  # one day
MAX_CACHE_SIZE_KIB = 1 << 30  # 1 TiB; SQLite reads back at most 2**31 - 1
MAX_JOURNAL_SIZE_LIMIT = 1 << 40  # 1 TiB
MAX_INTERVAL_S = 24 * 60 * 60.0  # health checks, health cache, shutdown wait
MAX_RETRIES = 1000  # the backoff doubles per retry: 2**1000 is still a float
MAX_TOKEN_TTL_S = 10 * 365 * 24 * 60 * 60  # ten years
MAX_REFRESH_GRACE_S = 10 * 365 * 24 * 60 * 60
#: The longest lease a claim may ask for (the same limit as ``lease_s`` per request).
MAX_LEASE_S = 7 * 24 * 60 * 60
MAX_BACKUP_KEEP = 100_000
MIN_MAX_BODY_BYTES = 1024
MAX_MAX_BODY_BYTES = 1 << 30  # 1 GiB
MAX_RATE_LIMIT_PER_MIN = 1_000_000

#: Accepted spellings of booleans in the environment.
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
TEMP_STORES = ("DEFAULT", "FILE", "MEMORY")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: PostgreSQL pool (MCP_DB_POOL_*): defaults and the ranges accepted.
DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 10
DEFAULT_POOL_MAX_LIFETIME_S = 3600.0
DEFAULT_POOL_MAX_IDLE_S = 600.0
DEFAULT_POOL_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
POOL_MIN_RANGE = (0, 100)
POOL_MAX_RANGE = (1, 1000)
POOL_MAX_LIFETIME_RANGE = (60.0, 7 * 24 * 3600.0)
POOL_MAX_IDLE_RANGE = (10.0, 24 * 3600.0)
POOL_TIMEOUT_RANGE = (0.1, 3600.0)
CONNECT_TIMEOUT_RANGE = (1.0, 600.0)

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


def _int(name: str, raw: str, *, minimum: int, maximum: int, unit: str = "") -> int:
    allowed = f"an integer from {minimum} to {maximum}{unit}"
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, allowed) from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, raw, allowed)
    return value


def _float(name: str, raw: str, *, minimum: float, maximum: float, unit: str = "") -> float:
    allowed = f"a number from {minimum:g} to {maximum:g}{unit}"
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, allowed) from None
    if not minimum <= value <= maximum:  # also rejects NaN and infinities
        raise ConfigError(name, raw, allowed)
    return value


def _db_url(name: str, raw: str) -> str:
    # The value may carry a password: errors show it redacted, never as given.
    url = raw.strip()
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(name, redact_url(raw), "unset (SQLite) or a postgresql:// URL")
    return url


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
    return len(token) >= MIN_MAINTAINER_TOKEN_LENGTH and not any(ch.isspace() or ch == "," for ch in token)


def _admin_token(name: str, raw: str) -> str | None:
    # The value is a secret: ConfigError shows "<redacted>", never the token.
    if raw == "":
        return None
    if not _secret_ok(raw):
        raise ConfigError(
            name,
            "<redacted>",
            f"unset, empty, or a token of at least {MIN_MAINTAINER_TOKEN_LENGTH} characters without spaces or commas",
        )
    return raw


def _maintainer_tokens(name: str, raw: str) -> tuple[str, ...]:
    tokens = tuple(part.strip() for part in raw.split(",") if part.strip())
    if any(not _secret_ok(token) for token in tokens):
        raise ConfigError(
            name,
            "<redacted>",
            f"a comma-separated list of tokens, each at least {MIN_MAINTAINER_TOKEN_LENGTH} characters without spaces",
        )
    return tokens


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_host(name: str, raw: str) -> str:
    """An IP address, or a host name of letters, digits and hyphens (RFC 1123).

    A dotted all-digit name must be a valid IPv4 address: ``999.1.1.1`` used to reach
    the server's URL code and fail there with an internal validation error.
    """
    import ipaddress

    value = raw.strip()
    allowed = "a host name or IP address, such as 127.0.0.1, 0.0.0.0 or localhost"
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if (
        not value
        or len(value) > 253
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # not an IP address, so not a name either
    ):
        raise ConfigError(name, raw, allowed)
    return value


def _port(name: str, raw: str) -> int:
    return _int(name, raw, minimum=0, maximum=65535, unit=" (0: any free port)")


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
    #: ``postgresql://...`` selects PostgreSQL instead of SQLite; may hold a password,
    #: so it is never shown (repr, logs, errors show :func:`redact_url` of it).
    db_url: str | None = field(default=None, repr=False)
    #: PostgreSQL connection pool: size, how long a connection lives and may idle,
    #: how long a request waits for a free connection, how long connecting may take.
    pool_min: int = DEFAULT_POOL_MIN
    pool_max: int = DEFAULT_POOL_MAX
    pool_max_lifetime_s: float = DEFAULT_POOL_MAX_LIFETIME_S
    pool_max_idle_s: float = DEFAULT_POOL_MAX_IDLE_S
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
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
    # -- waiting claims (issue 11) ----------------------------------------------------
    #: The longest ``wait_s`` a claim may ask for.
    claim_wait_max_s: float = DEFAULT_CLAIM_WAIT_MAX_S
    #: How often the one watcher per server reads ``PRAGMA data_version`` while claims
    #: wait: a commit by another process is noticed within this time.
    claim_poll_interval_s: float = DEFAULT_CLAIM_POLL_INTERVAL_S
    # -- replication (issue 12, db/replica.py) ------------------------------------------
    #: Where Litestream replicates the database (file://, s3://, ...); None: no
    #: replication. May hold a password (sftp://user:pass@...): never in repr.
    replica_url: str | None = field(default=None, repr=False)
    replica_sync_interval_s: float = DEFAULT_REPLICA_SYNC_INTERVAL_S
    #: How far back a point-in-time restore can go.
    replica_retention_s: int = DEFAULT_REPLICA_RETENTION_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings from ``environ`` (default: ``os.environ``).

        Every variable is parsed by its entry in :data:`SETTINGS` and range-checked
        here, so a value that would fail later (a timestamp overflow, a pragma SQLite
        cannot hold) stops start-up instead, naming the variable.
        """
        env = os.environ if environ is None else environ

        values: dict[str, Any] = {}
        if env.get("MCP_DB_URL"):
            # Selects PostgreSQL; a secret (it may hold a password): never echoed.
            values["db_url"] = _db_url("MCP_DB_URL", env["MCP_DB_URL"])
        for spec in SETTINGS:
            raw = env.get(spec.variable)
            if raw is not None:
                values[spec.field] = spec.parse(spec.variable, raw)
        if "pool_max" not in values and values.get("pool_min", DEFAULT_POOL_MIN) > DEFAULT_POOL_MAX:
            # Only the minimum was raised: the pool may grow to it.
            values["pool_max"] = values["pool_min"]
        if "db_path" not in values:
            values["db_path"] = values.get("db_dir", Path(DEFAULT_DB_DIR)) / DEFAULT_DB_FILENAME
        values["extra"] = {k: v for k, v in env.items() if k.startswith("MCP_")}
        settings = cls(**values)
        settings._check_together(env)
        return settings

    def _check_together(self, env: Mapping[str, str]) -> None:
        """Checks that need more than one setting, or the filesystem."""
        if self.pool_max < self.pool_min:
            raise ConfigError(
                "MCP_DB_POOL_MAX",
                env.get("MCP_DB_POOL_MAX", str(self.pool_max)),
                f"an integer >= MCP_DB_POOL_MIN ({self.pool_min})",
            )
        if "MCP_STDIO_AGENT_KIND" in env and self.stdio_agent_kind not in self.agent_kinds:
            raise ConfigError(
                "MCP_STDIO_AGENT_KIND",
                self.stdio_agent_kind,
                "one of the kinds in MCP_AGENT_KINDS (" + ",".join(self.agent_kinds) + ")",
            )
        # A directory where a file belongs (or the reverse) can never work: a bad
        # setting (exit 2), the same as --db DIR, rather than a failure later.
        db_path_var = "MCP_DB_PATH" if "MCP_DB_PATH" in env else "MCP_DB_DIR"
        checks = [
            ("MCP_DB_DIR", self.db_dir, True),
            (db_path_var, self.db_path, False),
            ("MCP_BACKUP_DIR", self.backup_dir, True),
            ("MCP_MIGRATIONS_DIR", self.migrations_dir, True),
        ]
        for variable, value, want_dir in checks:
            if value is None or variable not in env:
                continue
            problem = path_kind_problem(value, want_dir=want_dir)
            if problem is not None:
                raise ConfigError(variable, env[variable], problem)

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

    def postgres_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`icn_mcp.db.postgres.PostgresDatabase`.

        A migrations tree (``MCP_MIGRATIONS_DIR``) holds the PostgreSQL files in its
        ``postgres/`` folder, as the package does.
        """
        return dict(
            migrations_dir=None if self.migrations_dir is None else self.migrations_dir / "postgres",
            pool_min=self.pool_min,
            pool_max=self.pool_max,
            pool_max_lifetime_s=self.pool_max_lifetime_s,
            pool_max_idle_s=self.pool_max_idle_s,
            pool_timeout_s=self.pool_timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            retries=self.retries,
            allow_missing_migrations=self.allow_missing_migrations,
            allow_out_of_order_migrations=self.allow_out_of_order_migrations,
        )


def path_kind_problem(path: Path, *, want_dir: bool) -> str | None:
    """What is allowed, when ``path`` exists as the wrong kind of thing; else None."""
    try:
        is_dir = path.is_dir()
        exists = path.exists()
    except OSError:  # e.g. a name too long: the operation that uses it will say so
        return None
    if want_dir and exists and not is_dir:
        return "a directory (this path is a file)"
    if not want_dir and is_dir:
        return "a database file path (this path is a directory)"
    return None


@dataclass(frozen=True)
class SettingSpec:
    """One ``MCP_*`` variable: the :class:`Settings` field it sets and what it allows.

    ``minimum``/``maximum`` are set for numeric settings (``integer`` says which kind),
    so tests can probe both sides of every range.
    """

    variable: str
    field: str
    parse: Callable[[str, str], Any]
    allowed: str
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False


def _int_spec(variable: str, field_name: str, minimum: int, maximum: int, unit: str = "") -> SettingSpec:
    def parse(name: str, raw: str) -> int:
        return _int(name, raw, minimum=minimum, maximum=maximum, unit=unit)

    return SettingSpec(
        variable, field_name, parse, f"an integer from {minimum} to {maximum}{unit}", minimum, maximum, True
    )


def _float_spec(variable: str, field_name: str, minimum: float, maximum: float, unit: str = "") -> SettingSpec:
    def parse(name: str, raw: str) -> float:
        return _float(name, raw, minimum=minimum, maximum=maximum, unit=unit)

    return SettingSpec(
        variable, field_name, parse, f"a number from {minimum:g} to {maximum:g}{unit}", minimum, maximum, False
    )


def _choice_spec(variable: str, field_name: str, choices: tuple[str, ...]) -> SettingSpec:
    return SettingSpec(variable, field_name, lambda n, r: _choice(n, r, choices), "one of " + ", ".join(choices))


def _path(name: str, raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(name, raw, "a non-empty filesystem path")
    if "\x00" in raw:
        raise ConfigError(name, raw, "a path without NUL characters")
    try:
        return Path(raw).expanduser()
    except RuntimeError:  # "~someone" naming no user, or no home directory
        raise ConfigError(name, raw, "a filesystem path (a leading ~ must name a home directory)") from None


def _agent_name(name: str, raw: str) -> str:
    # The rule registrations follow (icn_mcp.store.validation); imported here because
    # the store imports this module.
    from icn_mcp.store.validation import NAME_PATTERN

    if not NAME_PATTERN.fullmatch(raw):
        raise ConfigError(name, raw, _AGENT_NAME_RULE)
    return raw


_AGENT_NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
_SECONDS = " (seconds)"

#: Every setting icn-mcp reads, in README order. :meth:`Settings.from_env` reads
#: exactly these (and ``MCP_DB_URL``, a secret), so a new setting added here is
#: range-checked and covered by tests/test_config.py's property tests.
SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("MCP_DB_DIR", "db_dir", _path, "a directory path"),
    SettingSpec("MCP_DB_PATH", "db_path", _path, "a database file path"),
    SettingSpec("MCP_MIGRATIONS_DIR", "migrations_dir", _path, "a directory path"),
    _int_spec("MCP_DB_POOL_MIN", "pool_min", *POOL_MIN_RANGE),
    _int_spec("MCP_DB_POOL_MAX", "pool_max", *POOL_MAX_RANGE),
    _float_spec("MCP_DB_POOL_MAX_LIFETIME_S", "pool_max_lifetime_s", *POOL_MAX_LIFETIME_RANGE, _SECONDS),
    _float_spec("MCP_DB_POOL_MAX_IDLE_S", "pool_max_idle_s", *POOL_MAX_IDLE_RANGE, _SECONDS),
    _float_spec("MCP_DB_POOL_TIMEOUT_S", "pool_timeout_s", *POOL_TIMEOUT_RANGE, _SECONDS),
    _float_spec("MCP_DB_CONNECT_TIMEOUT_S", "connect_timeout_s", *CONNECT_TIMEOUT_RANGE, _SECONDS),
    _int_spec("MCP_DB_BUSY_TIMEOUT_MS", "busy_timeout_ms", 0, MAX_BUSY_TIMEOUT_MS, " (milliseconds)"),
    _choice_spec("MCP_DB_SYNCHRONOUS", "synchronous", SYNCHRONOUS_MODES),
    _choice_spec("MCP_DB_TEMP_STORE", "temp_store", TEMP_STORES),
    _int_spec("MCP_DB_CACHE_SIZE_KIB", "cache_size_kib", 1, MAX_CACHE_SIZE_KIB, " (KiB)"),
    _int_spec("MCP_DB_JOURNAL_SIZE_LIMIT", "journal_size_limit", -1, MAX_JOURNAL_SIZE_LIMIT, " (bytes; -1: no limit)"),
    _float_spec("MCP_DB_HEALTH_CHECK_INTERVAL_S", "health_check_interval_s", 0, MAX_INTERVAL_S, _SECONDS),
    _int_spec("MCP_DB_RETRIES", "retries", 0, MAX_RETRIES),
    SettingSpec("MCP_MIGRATIONS_ALLOW_MISSING", "allow_missing_migrations", _bool, "1/0, true/false, yes/no, on/off"),
    SettingSpec(
        "MCP_MIGRATIONS_ALLOW_OUT_OF_ORDER", "allow_out_of_order_migrations", _bool, "1/0, true/false, yes/no, on/off"
    ),
    SettingSpec("MCP_BACKUP_DIR", "backup_dir", _path, "a directory path"),
    _int_spec("MCP_BACKUP_KEEP", "backup_keep", 0, MAX_BACKUP_KEEP, " (0: keep all)"),
    _choice_spec("MCP_BACKUP_CHECK", "backup_check", BACKUP_CHECKS),
    SettingSpec("MCP_AGENT_KINDS", "agent_kinds", _agent_kinds, "a comma-separated list of kinds"),
    _int_spec("MCP_TOKEN_TTL_S", "token_ttl_s", 1, MAX_TOKEN_TTL_S, _SECONDS),
    _int_spec("MCP_REFRESH_GRACE_S", "refresh_grace_s", 0, MAX_REFRESH_GRACE_S, _SECONDS),
    _int_spec("MCP_LEASE_S", "lease_s", 1, MAX_LEASE_S, _SECONDS),
    SettingSpec("MCP_ADMIN_TOKEN", "admin_token", _admin_token, "a token of at least 16 characters"),
    SettingSpec(
        "MCP_MAINTAINER_TOKENS",
        "maintainer_tokens",
        _maintainer_tokens,
        "comma-separated tokens of at least 16 characters",
    ),
    SettingSpec("MCP_HOST", "host", parse_host, "a host name or IP address"),
    SettingSpec("MCP_PORT", "port", _port, "an integer from 0 to 65535 (0: any free port)", 0, 65535, True),
    _int_spec("MCP_MAX_BODY_BYTES", "max_body_bytes", MIN_MAX_BODY_BYTES, MAX_MAX_BODY_BYTES, " (bytes)"),
    _int_spec("MCP_RATE_LIMIT_IP_PER_MIN", "rate_limit_ip_per_min", 0, MAX_RATE_LIMIT_PER_MIN, " (0: no limit)"),
    _int_spec("MCP_RATE_LIMIT_TOKEN_PER_MIN", "rate_limit_token_per_min", 0, MAX_RATE_LIMIT_PER_MIN, " (0: no limit)"),
    SettingSpec("MCP_STDIO_AGENT_NAME", "stdio_agent_name", _agent_name, _AGENT_NAME_RULE),
    SettingSpec("MCP_STDIO_AGENT_KIND", "stdio_agent_kind", _nonempty, "one of MCP_AGENT_KINDS"),
    _choice_spec("MCP_LOG_LEVEL", "log_level", LOG_LEVELS),
    _float_spec("MCP_SHUTDOWN_TIMEOUT_S", "shutdown_timeout_s", 0, MAX_INTERVAL_S, _SECONDS),
    _float_spec("MCP_HEALTH_CACHE_S", "health_cache_s", 0, MAX_INTERVAL_S, _SECONDS),
    _float_spec("MCP_CLAIM_WAIT_MAX_S", "claim_wait_max_s", 0, CLAIM_WAIT_MAX_LIMIT_S, _SECONDS),
    SettingSpec(
        "MCP_REPLICA_URL",
        "replica_url",
        _replica_url,
        "unset, or a Litestream replica URL (file:///abs/path, s3://bucket/path, ...)",
    ),
    _float_spec("MCP_REPLICA_SYNC_INTERVAL_S", "replica_sync_interval_s", *REPLICA_SYNC_INTERVAL_RANGE_S, _SECONDS),
    SettingSpec(
        "MCP_REPLICA_RETENTION",
        "replica_retention_s",
        _replica_retention,
        "a duration from 1m to 365d: seconds, or a number with s, m, h or d (e.g. 24h)",
    ),
    SettingSpec(
        "MCP_CLAIM_POLL_INTERVAL_MS",
        "claim_poll_interval_s",
        lambda n, r: _float(n, r, minimum=5, maximum=5000, unit=" (milliseconds)") / 1000.0,
        "a number from 5 to 5000 (milliseconds)",
    ),
)
