"""One authorization rule for the HTTP API and the MCP tools (issue 8).

A request acts for a :class:`Principal`: an agent (its bearer token), a maintainer
(``MCP_ADMIN_TOKEN`` / ``MCP_MAINTAINER_TOKENS``), the local stdio agent (both at
once: whoever starts ``serve --stdio`` can open the database file anyway), or
nobody. :data:`RULES` says who may do what, whatever the transport:

=================  ==========================================================
action             who
=================  ==========================================================
create_task        an agent or a maintainer (``created_by``: the agent's id or
                   ``maintainer:<role>``)
claim_task         an agent (a claim is held by an agent)
report_run         an agent; the store then requires the task's current claim
add_artifact       a maintainer, or an agent holding the task's current claim
                   (checked by the store, with the claim's attempt like a report)
task_status,       anyone (over MCP the transport itself needs a valid token)
list_tasks
db_info,           a maintainer
create_backup,
admin_stats,
cleanup_agents,
dashboard
=================  ==========================================================

No credential, or one nobody knows: :class:`~icn_mcp.errors.Unauthorized` (401).
A valid credential of the wrong kind: :class:`~icn_mcp.errors.Forbidden` (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from icn_mcp.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from icn_mcp.store import Store

__all__ = ["Principal", "RULES", "AGENT", "MAINTAINER", "ANYONE", "resolve", "authorize", "artifact_author"]

AGENT = "agent"
MAINTAINER = "maintainer"
ANYONE = "anyone"

#: action -> who may do it (see the module's table).
RULES: dict[str, frozenset[str]] = {
    "create_task": frozenset({AGENT, MAINTAINER}),
    "claim_task": frozenset({AGENT}),
    "report_run": frozenset({AGENT}),
    "add_artifact": frozenset({AGENT, MAINTAINER}),
    "task_status": frozenset({ANYONE}),
    "list_tasks": frozenset({ANYONE}),
    "db_info": frozenset({MAINTAINER}),
    "create_backup": frozenset({MAINTAINER}),
    "admin_stats": frozenset({MAINTAINER}),
    "cleanup_agents": frozenset({MAINTAINER}),
    "dashboard": frozenset({MAINTAINER}),
}

_NEEDS = {
    frozenset({AGENT}): "an agent token",
    frozenset({MAINTAINER}): "a maintainer token (MCP_ADMIN_TOKEN or MCP_MAINTAINER_TOKENS)",
    frozenset({AGENT, MAINTAINER}): "an agent token or a maintainer token",
}


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an agent, a maintainer, or both (the stdio agent)."""

    agent_id: str | None = None
    #: ``admin``, ``maintainer``, or ``local`` (the stdio process); None for agents.
    maintainer_role: str | None = None
    #: When the agent's bearer token expires (None for maintainers and stdio).
    token_expires_at: str | None = None

    @property
    def is_maintainer(self) -> bool:
        return self.maintainer_role is not None

    @property
    def name(self) -> str:
        """What is recorded as the author: the agent's id, or ``maintainer:<role>``."""
        return self.agent_id if self.agent_id is not None else f"maintainer:{self.maintainer_role}"

    @property
    def must_hold_claim(self) -> bool:
        """Whether its artifacts need the task's current claim (agents: yes)."""
        return not self.is_maintainer


def resolve(store: Store, token: str | None) -> Principal:
    """The principal of a bearer token (blocking: may read the database).

    Maintainer tokens are checked first (in memory, constant time), then agent
    tokens; Unauthorized names why a token is refused.
    """
    if token is None:
        raise Unauthorized("missing bearer token")
    role = store.maintainer_role(token)
    if role is not None:
        return Principal(maintainer_role=role)
    agent = store.authenticate(token)
    return Principal(agent_id=agent.id, token_expires_at=agent.token_expires_at)


def authorize(principal: Principal | None, action: str) -> Principal | None:
    """``principal`` if it may do ``action``; Unauthorized or Forbidden otherwise."""
    allowed = RULES[action]
    if ANYONE in allowed:
        return principal
    if principal is None:
        raise Unauthorized("missing bearer token")
    if (AGENT in allowed and principal.agent_id is not None) or (MAINTAINER in allowed and principal.is_maintainer):
        return principal
    raise Forbidden(f"{action} needs {_NEEDS[allowed]}")


def artifact_author(principal: Principal) -> dict[str, str]:
    """The author arguments of ``Store.add_artifact`` for ``principal``: an agent
    must hold the task's current claim (``agent_id``); a maintainer, or the stdio
    agent, is recorded as ``added_by`` without one."""
    if principal.must_hold_claim:
        assert principal.agent_id is not None
        return {"agent_id": principal.agent_id}
    return {"added_by": principal.name}
