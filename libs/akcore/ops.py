"""Every API operation, declared once: its request and reply types, which service answers
it, whether it is public (reachable over HTTP ``/api``, with a token) or internal (NATS
only), what names the project it touches, and which caches it makes stale.

The table drives the store's dispatch, the store's change notices (``akcore.cache``) and
ingress's HTTP allow-list; an operation that is not here does not exist.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

from . import requests as rq
from .errors import NotFound
from .typedargs import parse


class Service(enum.Enum):
    STORE = "store"
    RUNNER = "runner"
    INGRESS = "ingress"  # commands ingress carries out itself (they publish to JetStream)


class Cache(enum.Enum):
    """Answers other services keep (``akcore.cache.StoreCache``) that an operation changes."""

    WEBHOOKS = "ingress: the trigger behind each webhook slug"
    TARGETS = "dispatcher: each trigger's deployments and subscriptions"
    SESSION_ENV = "runner: each project's vars and webhook URLs"
    TOKENS = "ingress: the API tokens it took lately"


ALL_CACHES = frozenset(Cache)
NONE: frozenset[Cache] = frozenset()


@dataclass(frozen=True)
class Op:
    """One operation.

    Attributes:
        name: ``noun.verb``; also the NATS subject suffix (``ak.<service>.<name>``).
        request: the dataclass its arguments are parsed into (``akcore.requests``).
        reply: the type of its result (``type(None)`` when it answers nothing).
        service: who answers it.
        scope: the request field naming the project, or an object of one project, it
            touches ("" when it is about no one project).
        invalidates: the caches it makes stale.
        public: reachable over HTTP ``/api`` (with a token); otherwise NATS only.
    """

    name: str
    request: type
    reply: type
    service: Service
    scope: str
    invalidates: frozenset[Cache] = NONE
    public: bool = False

    def parse(self, args: Any) -> Any:
        """The typed request, or InvalidArgument naming the bad field."""
        return parse(self.name, self.request, args)


# The verbs of the operations that change nothing, or nothing a repeat would change again
# (``*.route`` keeps a provider delivery's claim, idempotently): asking again is safe.
READ_VERBS = frozenset(
    {"active", "check", "describe", "download", "env", "export", "get", "list", "lookup"}
    | {"plan", "records", "resolve", "route", "states", "targets", "trace", "whoami"}
)


def changes_nothing(name: str) -> bool:
    """Whether operation ``name`` may simply be asked again (by its verb: see READ_VERBS)."""
    return name.rpartition(".")[2] in READ_VERBS


_S, _R, _I = Service.STORE, Service.RUNNER, Service.INGRESS
_TARGETS = frozenset({Cache.TARGETS})
_HOOKS = frozenset({Cache.WEBHOOKS, Cache.TARGETS})
_ENV = frozenset({Cache.SESSION_ENV})
# (A connection's events reach the triggers naming it: ``dispatch.targets``.)
_CONNECTION = frozenset({Cache.SESSION_ENV, Cache.TARGETS})


_api = functools.partial(Op, public=True)
_internal = functools.partial(Op, public=False)

_NONE_T = type(None)

_TABLE = (
    # The CLI's operations: public (with a token).
    _api("project.list", rq.ProjectList, list, _S, ""),
    _api("project.get", rq.ProjectRef, dict, _S, "project"),
    _api("project.create", rq.ProjectCreate, dict, _S, "name"),
    _api("project.delete", rq.ProjectRef, _NONE_T, _S, "project", ALL_CACHES),
    _api("project.export", rq.ProjectExport, dict, _S, "project"),
    _api("manifest.plan", rq.ManifestPlan, dict, _S, "project_name"),
    _api("manifest.apply", rq.ManifestApply, dict, _S, "project_name", ALL_CACHES),
    _api("build.create", rq.BuildCreate, str, _S, "project", _TARGETS),
    _api("build.prepare", rq.PyenvPrepare, dict, _I, ""),
    _api("build.list", rq.ProjectRef, list, _S, "project"),
    _api("build.describe", rq.BuildId, dict, _S, "build_id"),
    _api("build.download", rq.BuildId, dict, _S, "build_id"),
    _api("build.delete", rq.BuildId, _NONE_T, _S, "build_id", _TARGETS),
    _api("deployment.create", rq.DeploymentCreate, str, _S, "project", _HOOKS),
    _api("deployment.activate", rq.DeploymentRef, _NONE_T, _S, "deployment_id", _HOOKS),
    _api("deployment.deactivate", rq.DeploymentRef, dict, _S, "deployment_id", _HOOKS),
    _api("deployment.get", rq.DeploymentRef, dict, _S, "deployment_id"),
    _api("deployment.list", rq.ProjectFilter, list, _S, "project"),
    _api("deployment.delete", rq.DeploymentDelete, _NONE_T, _S, "deployment_id", _HOOKS),
    _api("trigger.create", rq.TriggerCreate, dict, _S, "project", ALL_CACHES),
    _api("trigger.delete", rq.TriggerRef, _NONE_T, _S, "trigger", ALL_CACHES),
    _api("trigger.get", rq.TriggerRef, dict, _S, "trigger"),
    _api("trigger.list", rq.ProjectFilter, list, _S, "project"),
    _api("env.list", rq.ProjectFilter, list, _S, "project"),
    _api("var.set", rq.VarSet, _NONE_T, _S, "project", _ENV),
    _api("var.get", rq.VarGet, list, _S, "project"),
    _api("var.delete", rq.VarDelete, _NONE_T, _S, "project", _ENV),
    _api("session.list", rq.SessionList, dict, _S, "project"),
    _api("session.get", rq.SessionRef, dict, _S, "session"),
    _api("session.records", rq.SessionRecords, dict, _S, "session"),
    _api("session.trace", rq.SessionRef, dict, _S, "session"),
    _api("session.start", rq.SessionStart, dict, _R, "deployment_id"),
    _api("session.stop", rq.SessionStop, _NONE_T, _R, "session"),
    _api("session.restart", rq.SessionRef, dict, _R, "session"),
    _api("session.delete", rq.SessionDelete, dict, _S, "session_id"),
    _api("event.list", rq.EventList, list, _S, "project"),
    _api("event.get", rq.EventGet, dict, _S, "event_id"),
    _api("event.redispatch", rq.EventRef, dict, _I, "event_id"),
    _api("event.dispatch", rq.EventNew, dict, _I, "destination"),
    _api("event.save", rq.EventNew, dict, _I, "destination"),
    _api("connection.create", rq.ConnectionCreate, dict, _S, "project", _CONNECTION),
    _api("connection.list", rq.ConnectionList, list, _S, "project"),
    _api("connection.get", rq.ConnectionRef, dict, _S, "connection"),
    _api("connection.init", rq.ConnectionInit, _NONE_T, _S, "connection", _ENV),
    _api("connection.test", rq.ConnectionRef, dict, _S, "connection"),
    _api("connection.delete", rq.ConnectionRef, _NONE_T, _S, "connection", _CONNECTION),
    _api("integration.list", rq.Empty, list, _S, ""),
    _api("auth.create_token", rq.TokenCreate, str, _I, ""),
    _api("auth.whoami", rq.Empty, dict, _I, ""),
    _api("auth.list_tokens", rq.Empty, list, _S, ""),
    _api("auth.revoke_token", rq.TokenRevoke, _NONE_T, _S, "", frozenset({Cache.TOKENS})),
    # Between services only (NATS).
    _internal("build.get", rq.BuildRef, dict, _S, "build_id"),
    _internal("project.active", rq.ProjectRef, dict, _S, "project"),
    _internal("webhook.lookup", rq.WebhookLookup, dict, _S, "slug"),
    _internal("dispatch.targets", rq.DispatchTargets, dict, _S, "trigger_id"),
    _internal("source.resolve", rq.SourceResolve, dict, _S, "project_id"),
    _internal("github.route", rq.GithubRoute, dict, _S, ""),
    _internal("slack.route", rq.SlackRoute, dict, _S, ""),
    _internal("dispatch.note", rq.DispatchNote, _NONE_T, _S, "event_id"),
    _internal("deferred.consumer", rq.DeferredConsumer, dict, _S, ""),
    _internal("schedule.list", rq.Empty, list, _S, ""),
    _internal("event.store", rq.EventStore, _NONE_T, _S, "project_id"),
    _internal("subscription.create", rq.SubscriptionCreate, _NONE_T, _S, "project_id", _TARGETS),
    _internal("subscription.delete", rq.SubscriptionDelete, _NONE_T, _S, "session_id", _TARGETS),
    _internal("session.env", rq.SessionEnv, dict, _S, "project_id"),
    _internal("session.states", rq.SessionStates, dict, _S, "session_ids"),
    _internal("token.add", rq.TokenAdd, _NONE_T, _S, ""),
    _internal("token.check", rq.TokenCheck, dict, _S, ""),
    _internal("scope.resolve", rq.ScopeResolve, list, _S, ""),
    _internal("keys.check", rq.KeysCheck, dict, _S, ""),
    _internal("pyenv.prepare", rq.PyenvPrepare, dict, _R, ""),
)

OPS: dict[str, Op] = {op.name: op for op in _TABLE}
assert len(OPS) == len(_TABLE), "an operation is declared twice"


def get(name: str) -> Op:
    """The operation named ``name``; NotFound when there is none."""
    op = OPS.get(name)
    if op is None:
        raise NotFound(f"unknown operation {name!r}")
    return op


def public(name: str) -> Op:
    """The public operation named ``name``; NotFound (as for no operation at all) when it
    is internal: HTTP callers cannot tell the two apart."""
    op = OPS.get(name)
    if op is None or not op.public:
        raise NotFound(f"unknown operation {name!r}: see `ak --help` for what the API offers")
    return op


def served_by(service: Service) -> dict[str, Op]:
    return {name: op for name, op in OPS.items() if op.service is service}
