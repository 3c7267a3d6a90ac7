"""The one validation layer of the server: every request, HTTP or MCP, is parsed here.

Each operation has one pydantic model. The HTTP routes parse their JSON bodies (and
query strings) with it, the MCP tools parse their arguments with the same model, so
the same input gets the same verdict through both transports (issue 8), and the
published documents (OpenAPI, the MCP tools' input schemas) come from the same
source. Strict JSON types: ``"5"`` is not a priority, ``true`` is not a number,
``1.0`` is not an id. Unknown fields are ignored (existing clients send ``task_kind``).

Ids are read with :func:`icn_mcp.store.validation.parse_id` (the canonical string
``"42"``, or a deprecated JSON integer); semantic checks (title length, known
kinds, existing dependencies) stay in the store.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from icn_mcp.config import CLAIM_WAIT_MAX_LIMIT_S
from icn_mcp.errors import ValidationError
from icn_mcp.server.errors import task_id_required, validation_error
from icn_mcp.store.validation import (
    ATTEMPT_MAX,
    DEPENDS_ON_MAX,
    ID_MAX,
    LEASE_MAX_S,
    LIST_LIMIT_MAX,
    MAX_ATTEMPTS_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    parse_decimal,
    parse_id,
)

__all__ = [
    "RegisterRequest",
    "RefreshRequest",
    "CreateTaskRequest",
    "ClaimRequest",
    "RunRequest",
    "TaskStatusRequest",
    "ListTasksRequest",
    "AddArtifactRequest",
    "EmptyRequest",
    "RunStatus",
    "Id",
    "Priority",
    "MaxAttempts",
    "LeaseSeconds",
    "MAX_SQL_INT",
    "ID_SCHEMA",
    "REQUEST_MODELS",
    "DEFAULT_LIST_LIMIT",
    "parse_arguments",
    "parse_body",
    "parse_query",
    "pydantic_fields",
    "openapi_schemas",
]

#: SQLite stores integers as signed 64-bit; anything larger cannot be bound.
MAX_SQL_INT = 2**63 - 1

#: Page size of a task list when the client gives none.
DEFAULT_LIST_LIMIT = 50

RunStatus = Literal["claimed", "in_progress", "completed", "failed"]
TaskStatusName = Literal["open", "claimed", "completed", "failed"]


def _encodable(value: str) -> str:
    # JSON allows lone surrogates ("\ud800"); SQLite (UTF-8) cannot store them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _wire_id(value: Any) -> int:
    try:
        return parse_id(value)
    except ValidationError as exc:
        raise PydanticCustomError("id", exc.fields["id"]) from None


#: How an id is described in every published schema: the string form, and the
#: deprecated integer form of 0.1 clients.
ID_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": "^[1-9][0-9]{0,18}$", "description": 'decimal id, e.g. "42"'},
        {
            "type": "integer",
            "minimum": 1,
            "maximum": ID_MAX,
            "deprecated": True,
            "description": "the 0.1 integer form, deprecated: send the string",
        },
    ]
}

Text = Annotated[str, AfterValidator(_encodable)]
#: An id from a client: ``"42"`` (or, deprecated, ``42``), parsed to the stored integer.
Id = Annotated[int, PlainValidator(_wire_id), WithJsonSchema(ID_SCHEMA)]
# The store's own bounds, so that the published documents state the real limits.
Priority = Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
MaxAttempts = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_MAX)]
LeaseSeconds = Annotated[float, Field(gt=0, le=LEASE_MAX_S)]
#: How long a claim waits for work; the server's MCP_CLAIM_WAIT_MAX_S bounds it further.
WaitSeconds = Annotated[float, Field(ge=0, le=CLAIM_WAIT_MAX_LIMIT_S)]
Attempt = Annotated[int, Field(ge=1, le=ATTEMPT_MAX, description="The attempt number from the claim")]


def _task_id_in_required(schema: dict[str, Any]) -> None:
    # ``task_id`` is parsed as optional only so that its absence gets the specific
    # ``task_id_required`` error; the documents say it is required.
    schema["required"] = ["task_id", *[name for name in schema.get("required", []) if name != "task_id"]]


class _Body(BaseModel):
    # Existing agent clients send fields we do not know (task_kind...): ignore them.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    #: A missing ``task_id`` is ``task_id_required``, not a generic validation_error.
    needs_task_id: ClassVar[bool] = False


class _TaskBody(_Body):
    model_config = ConfigDict(json_schema_extra=_task_id_in_required)
    needs_task_id: ClassVar[bool] = True

    task_id: Annotated[Id | None, Field(description="The task's id")] = None


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
    """``POST /api/task/create``, MCP ``create_task``."""

    title: Annotated[Text, Field(description="What to do, 1-200 characters")]
    description: Text | None = None
    created_by: Text | None = None
    depends_on: Annotated[
        list[Id], Field(max_length=DEPENDS_ON_MAX, description="Ids of tasks that must complete first")
    ] = []
    priority: Annotated[Priority, Field(description="Higher is claimed first")] = 0
    max_attempts: MaxAttempts = 3
    idempotency_key: Annotated[Text | None, Field(description="Repeating a key returns the first task")] = None


class ClaimRequest(_Body):
    """``POST /api/task/claim``, MCP ``claim_task``: optionally a lease length other than the default."""

    lease_s: Annotated[LeaseSeconds | None, Field(description="Lease length in seconds (default: the server's)")] = None
    wait_s: Annotated[
        WaitSeconds | None,
        Field(
            description="Seconds to wait for work when nothing is claimable "
            "(default 0: answer at once; at most MCP_CLAIM_WAIT_MAX_S)"
        ),
    ] = None


class RunRequest(_TaskBody):
    """``POST /api/task/run``, MCP ``report_run``."""

    status: RunStatus
    notes: Text | None = None
    attempt: Attempt | None = None


class TaskStatusRequest(_TaskBody):
    """``GET /api/task/status?task_id=``, MCP ``task_status``."""


class ListTasksRequest(_Body):
    """``GET /api/task/list``, MCP ``list_tasks``."""

    status: TaskStatusName | None = None
    limit: Annotated[int, Field(ge=1, le=LIST_LIMIT_MAX)] = DEFAULT_LIST_LIMIT
    cursor: Annotated[Text | None, Field(description="The next cursor of the previous page")] = None


class AddArtifactRequest(_TaskBody):
    """``POST /api/task/artifact``, MCP ``add_artifact``: by the claim holder (with the
    claim's attempt, like a report) or a maintainer."""

    kind: Annotated[Text, Field(description="What the artifact is, e.g. file, log, report")]
    path: Annotated[Text, Field(description="Where it is (a path or URL)")]
    meta: dict[str, Any] | None = None
    attempt: Attempt | None = None


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    EmptyRequest,
    RegisterRequest,
    CreateTaskRequest,
    ClaimRequest,
    RunRequest,
    AddArtifactRequest,
)

M = TypeVar("M", bound=_Body)


def parse_arguments(model: type[M], data: object) -> M:
    """``data`` (decoded JSON, or MCP tool arguments) as ``model``, or :class:`ApiError`
    ``validation_error`` naming the fields (``task_id_required`` when it is missing)."""
    if not isinstance(data, dict):
        raise validation_error({"body": "must be a JSON object"})
    try:
        parsed = model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(pydantic_fields(exc)) from None
    if model.needs_task_id and getattr(parsed, "task_id", None) is None:
        raise task_id_required()
    return parsed


def parse_body(model: type[M], raw: bytes) -> M:
    """A JSON body as ``model`` (an empty body counts as ``{}``); ApiError."""
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise validation_error({"body": "must be a JSON object (the body is not valid JSON)"}) from None
    return parse_arguments(model, data)


def parse_query(model: type[M], params: Any, *, integers: tuple[str, ...] = ()) -> M:
    """Query parameters (Starlette's ``QueryParams``) as ``model``.

    Query values are text by nature, so the fields in ``integers`` are read with the
    strict digit rule first (``" 5"``, ``"+5"``, ``"5_0"``, ``"\u0665"`` refused) and
    then range-checked by the model; ids are read by the model itself. A parameter
    given twice is refused (which one would count is a guess), an empty one counts
    as absent.
    """
    data: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in model.model_fields:
        values = params.getlist(name)
        if len(values) > 1:
            problems[name] = "given more than once; give it once"
        elif values and values[0] != "":
            if name in integers:
                try:
                    data[name] = parse_decimal(values[0], name, minimum=0, maximum=MAX_SQL_INT)
                except ValidationError as exc:
                    problems.update(exc.fields)
            else:
                data[name] = values[0]
    if problems:
        raise validation_error(problems)
    return parse_arguments(model, data)


def pydantic_fields(exc: pydantic.ValidationError) -> dict[str, str]:
    """``{"field.path": "message"}`` from a pydantic error (values are not echoed)."""
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(part) for part in error["loc"]) or "body"
        fields.setdefault(name, str(error["msg"]))
    return fields


def openapi_schemas() -> dict[str, Any]:
    """JSON schemas of the request models, for ``components.schemas``."""
    schemas: dict[str, Any] = {}
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
