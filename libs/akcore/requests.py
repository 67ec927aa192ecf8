"""The typed request of every API operation (see ``akcore.ops``), one dataclass each.

Fields change only by adding with defaults. A field the CLI leaves empty is "", 0 or
False (or null, which keeps the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Empty:
    """An operation that takes no arguments."""


# ``within`` (list operations): only the projects of these ids; ingress sets it for an API
# token limited to projects (``ak auth create-token --project``); empty: every project.


@dataclass(frozen=True)
class ProjectRef:
    project: str = ""  # a project name or prj_ id


@dataclass(frozen=True)
class ProjectList:
    within: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProjectFilter:
    """The objects of one project (``project``), or of every project (``within`` them)."""

    project: str = ""
    within: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ManifestApply:
    text: str
    project_name: str = ""
    skip_existing_secrets: bool = False
    # the id the manifest's project must have (ingress, for a token limited to projects:
    # never a project made, nor another one of the same name made since the check)
    project_id: str = ""


@dataclass(frozen=True)
class BuildCreate:
    project: str
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildRef:
    build_id: str
    with_files: bool = True


@dataclass(frozen=True)
class DeploymentCreate:
    project: str
    build_id: str


@dataclass(frozen=True)
class DeploymentRef:
    deployment_id: str


@dataclass(frozen=True)
class TriggerCreate:
    project: str
    trigger: dict[str, Any]


@dataclass(frozen=True)
class TriggerRef:
    trigger: str  # a trg_ id, or a name in ``project``
    project: str = ""


@dataclass(frozen=True)
class SourceResolve:
    """What ``subscribe(source)`` names in a project: a trigger or a connection."""

    project_id: str
    source: str  # a name, or a trg_/con_ id


@dataclass(frozen=True)
class GithubRoute:
    """A GitHub delivery, for the store to find the connections it is for and check its
    signature against their secrets: on a connection's own webhook (``key``: its
    ``pat_key``), or an app's (``app_id`` and ``installation_id``)."""

    body: bytes
    signature: str = ""
    delivery: str = ""  # X-GitHub-Delivery
    key: str = ""
    app_id: str = ""
    installation_id: str = ""


@dataclass(frozen=True)
class SlackRoute:
    """A Slack request, for the store to find the connections it is for (``install_ids``
    = ``<app>/<enterprise>/<team>``) and check its signature with their secret."""

    body: bytes
    timestamp: str
    signature: str
    app_id: str = ""
    enterprise_id: str = ""
    team_id: str = ""
    delivery: str = ""  # the Events API's event_id ("": no de-duplication)
    any_connection: bool = False  # a URL verification: any Slack connection's secret


@dataclass(frozen=True)
class WebhookLookup:
    slug: str


@dataclass(frozen=True)
class DeferredConsumer:
    destination_id: str


@dataclass(frozen=True)
class DispatchTargets:
    trigger_id: str
    after: str = ""  # the subscriptions after this id (the answer before said ``more``)


@dataclass(frozen=True)
class DispatchNote:
    event_id: str
    notes: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class SubscriptionCreate:
    subscription_id: str
    session_id: str
    project_id: str
    trigger_id: str
    filter: str = ""


@dataclass(frozen=True)
class SubscriptionDelete:
    """Every subscription of ``session_id``, or only ``subscription_id`` of it."""

    subscription_id: str = ""
    session_id: str = ""


@dataclass(frozen=True)
class SessionEnv:
    project_id: str


@dataclass(frozen=True)
class VarScope:
    """Whose vars: a connection, or a project (by ``project`` or ``env``)."""

    project: str = ""
    env: str = ""
    connection: str = ""


@dataclass(frozen=True, kw_only=True)
class VarSet(VarScope):
    name: str
    value: str
    secret: bool = False
    description: str | None = None


@dataclass(frozen=True)
class VarGet(VarScope):
    names: list[str] = field(default_factory=list)
    reveal: bool = False


@dataclass(frozen=True, kw_only=True)
class VarDelete(VarScope):
    name: str


@dataclass(frozen=True)
class SessionList:
    project: str = ""
    deployment: str = ""
    event_id: str = ""
    event_ids: list[str] = field(default_factory=list)  # sessions of any of these (<= 1,000)
    state: str = ""
    trigger: str = ""  # a trg_ id, or the name of a trigger of ``project``
    parent: str = ""  # the sessions this ses_ id started
    created_after: str = ""  # RFC 3339 ("2026-12-05T09:00:00Z"; no zone means UTC)
    created_before: str = ""
    page_size: int = 0
    skip: int = 0
    page_token: str = ""
    within: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EventList:
    project: str = ""
    trigger: str = ""  # a trg_ id, or the name of a trigger of ``project``
    within: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SessionRef:
    session: str  # a ses_ id, or a project (its newest session)


@dataclass(frozen=True)
class SessionStates:
    session_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SessionRecords:
    session: str
    skip: int = 0
    limit: int = 0
    kinds: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EventRef:
    event_id: str


@dataclass(frozen=True)
class EventGet:
    event_id: str
    reveal: bool = False  # its credential headers opened (else shown masked)
    sealed: bool = False  # its credential headers as they rest (to dispatch a copy)


@dataclass(frozen=True)
class SessionStart:
    entrypoint: str
    deployment_id: str = ""
    project: str = ""
    build_id: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, str] = field(default_factory=dict)
    durable: bool = False


@dataclass(frozen=True)
class SessionStop:
    session: str
    reason: str = ""
    force: bool = False


@dataclass(frozen=True)
class PyenvPrepare:
    """``requirements``: the bytes of a project's requirements.txt (none: the default list);
    ``token`` and ``offset`` continue following an install already asked for; ``within``
    (ingress sets it for a token limited to projects): a runner builds one environment at a
    time for those projects."""

    requirements: bytes | None = None
    token: str = ""
    offset: int = 0
    within: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TokenCreate:
    """A new API token for the caller (``name`` labels it), taken for ``expires_in``
    seconds (0: as long as the caller's own token, never for one that never expires), on
    ``projects`` only (names or ids; none: those of the caller's own token)."""

    name: str = ""
    expires_in: int = 0
    projects: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TokenAdd:
    """Keeps a token's SHA-256 digest (the raw token never reaches the store)."""

    digest: str
    name: str = ""
    created_by: str = ""
    expires_us: int = 0  # when it stops being taken (0: never)
    projects: list[str] = field(default_factory=list)  # the project ids it may act on (none: all)


@dataclass(frozen=True)
class TokenCheck:
    """``limits``: the caller (an ingress) enforces tokens' project limits; the store
    refuses a limited token to one that does not say so (of an earlier version)."""

    digest: str
    limits: bool = False


@dataclass(frozen=True)
class ScopeResolve:
    """Which project each of ``refs`` names or belongs to: ``[kind, value, project]``, the
    project naming the context of a name (a trigger's name in it); see ``akcore.scope``."""

    refs: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True)
class KeysCheck:
    """A value the caller sealed with its primary secrets key (``akcore.keycheck``)."""

    sealed: bytes


@dataclass(frozen=True)
class TokenRevoke:
    token_id: str


@dataclass(frozen=True)
class ProjectCreate:
    name: str = ""  # empty: the server picks one
    display_name: str = ""


@dataclass(frozen=True)
class ProjectExport:
    project: str
    include_contents: bool = False  # the project vars' values in the manifest


@dataclass(frozen=True)
class ManifestPlan:
    text: str
    project_name: str = ""
    from_scratch: bool = False  # plan as if the server had nothing
    skip_existing_secrets: bool = False


@dataclass(frozen=True)
class BuildId:
    build_id: str
    project: str = ""  # when given, the build must belong to it


@dataclass(frozen=True)
class DeploymentDelete:
    deployment_id: str


@dataclass(frozen=True)
class SessionDelete:
    session_id: str


@dataclass(frozen=True)
class ConnectionList:
    project: str = ""
    integration: str = ""
    within: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConnectionCreate:
    project: str
    name: str
    integration: str  # a unique name or int_ id


@dataclass(frozen=True)
class ConnectionRef:
    connection: str  # a con_ id or PROJECT/NAME


@dataclass(frozen=True)
class ConnectionInit:
    """Vars of a connection set together (``ak connection init``): all or none."""

    connection: str  # a con_ id or PROJECT/NAME
    values: dict[str, str] = field(default_factory=dict)  # stored as they are
    secrets: dict[str, str] = field(default_factory=dict)  # stored encrypted
    delete: list[str] = field(default_factory=list)  # vars removed (absent ones: ignored)


@dataclass(frozen=True)
class EventNew:
    """An event made by hand (``ak event dispatch|save``). ``destination``: a connection
    (con_ id or PROJECT/NAME) or a trigger (trg_ id); ``data`` values are any msgpack value."""

    destination: str
    event_type: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EventStore:
    """A hand-made event, resolved by ingress, for the store to keep without dispatching."""

    event_id: str
    project_id: str
    destination_id: str
    event_type: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, str] = field(default_factory=dict)
