"""Request bodies of the HTTP worker API, as pydantic models.

They do two jobs: parse a body (strict JSON types, unknown fields ignored, every
integer within SQLite's range) and describe it in the published OpenAPI document.
Semantic checks (title length, known kinds, existing dependencies) stay in the store.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from icn_mcp.config import CLAIM_WAIT_MAX_LIMIT_S
from icn_mcp.server.errors import validation_error
from icn_mcp.store.validation import (
    DEPENDS_ON_MAX,
    LEASE_MAX_S,
    MAX_ATTEMPTS_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
)

__all__ = [
    "RegisterRequest",
    "RefreshRequest",
    "CreateTaskRequest",
    "ClaimRequest",
    "RunRequest",
    "EmptyRequest",
    "RunStatus",
    "Id",
    "Priority",
    "MaxAttempts",
    "LeaseSeconds",
    "MAX_SQL_INT",
    "REQUEST_MODELS",
    "parse_body",
    "pydantic_fields",
    "query_int",
    "openapi_schemas",
]

#: SQLite stores integers as signed 64-bit; anything larger cannot be bound.
MAX_SQL_INT = 2**63 - 1

RunStatus = Literal["claimed", "in_progress", "completed", "failed"]


def _encodable(value: str) -> str:
    # JSON allows lone surrogates ("\ud800"); SQLite (UTF-8) cannot store them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]
Id = Annotated[int, Field(ge=1, le=MAX_SQL_INT)]
# The store's own bounds, so that the published document states the real limits.
Priority = Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
MaxAttempts = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_MAX)]
LeaseSeconds = Annotated[float, Field(gt=0, le=LEASE_MAX_S)]
#: How long a claim waits for work; the server's MCP_CLAIM_WAIT_MAX_S bounds it further.
WaitSeconds = Annotated[float, Field(ge=0, le=CLAIM_WAIT_MAX_LIMIT_S)]


class _Body(BaseModel):
    # Existing agent clients send fields we do not know (task_kind...): ignore them.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class EmptyRequest(_Body):
    """A body with nothing required (``{}``; an empty body counts as ``{}``)."""


class RefreshRequest(EmptyRequest):
    """``POST /api/agent/refresh``: the token to refresh is the bearer token."""


class RegisterRequest(_Body):
    """``POST /api/agent/register``."""

    name: Text
    kind: Text
    version: Text | None = None


class CreateTaskRequest(_Body):
    """``POST /api/task/create``."""

    title: Text
    description: Text | None = None
    created_by: Text | None = None
    depends_on: list[Id] = Field(default_factory=list, max_length=DEPENDS_ON_MAX)
    priority: Priority = 0
    max_attempts: MaxAttempts = 3
    idempotency_key: Text | None = None


class ClaimRequest(_Body):
    """``POST /api/task/claim``: optionally a lease length other than the default, and
    how long to wait for work when nothing is claimable (0: answer at once)."""

    lease_s: LeaseSeconds | None = None
    wait_s: WaitSeconds | None = None


class RunRequest(_Body):
    """``POST /api/task/run``; a missing ``task_id`` is ``task_id_required``."""

    task_id: Id | None = None
    status: RunStatus
    notes: Text | None = None
    attempt: Annotated[int, Field(ge=0, le=MAX_SQL_INT)] | None = None


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    EmptyRequest,
    RegisterRequest,
    CreateTaskRequest,
    ClaimRequest,
    RunRequest,
)

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes) -> M:
    """``raw`` as ``model``, or :class:`ApiError` ``validation_error`` naming the fields."""
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise validation_error({"body": "must be a JSON object (the body is not valid JSON)"}) from None
    if not isinstance(data, dict):
        raise validation_error({"body": "must be a JSON object"})
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(pydantic_fields(exc)) from None


def pydantic_fields(exc: pydantic.ValidationError) -> dict[str, str]:
    """``{"field.path": "message"}`` from a pydantic error (values are not echoed)."""
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(part) for part in error["loc"]) or "body"
        fields.setdefault(name, str(error["msg"]))
    return fields


def query_int(name: str, raw: str | None, *, minimum: int, maximum: int = MAX_SQL_INT) -> int | None:
    """An integer query parameter, or None when absent; ApiError when malformed."""
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise validation_error({name: "must be an integer"}) from None
    if not minimum <= value <= maximum:
        raise validation_error({name: f"must be between {minimum} and {maximum}"})
    return value


def openapi_schemas() -> dict[str, Any]:
    """JSON schemas of the request models, for ``components.schemas``."""
    schemas: dict[str, Any] = {}
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas

