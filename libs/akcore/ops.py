"""Every API operation, declared once: its request and reply types, which service answers
it, whether it is public (reachable over HTTP ``/api``, with a token) or internal (NATS
only), what names the project it touches, and which caches it makes stale.

The table drives the store's dispatch, the store's change notices (``akcore.cache``) and
ingress's HTTP allow-list; an operation that is not here does not exist.
"""

from __future__ import annotations

import enum
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
        public: reachable over HTTP ``/api`` (with a token); otherwise NATS only.
        scope: the request field naming the project, or an object of one project, it
            touches ("" when it is about no one project).
        invalidates: the caches it makes stale.
    """

    name: str
    request: type
    reply: type
    service: Service
    public: bool
    scope: str
    invalidates: frozenset[Cache] = NONE

    def parse(self, args: Any) -> Any:
        """The typed request, or InvalidArgument naming the bad field."""
        return parse(self.name, self.request, args)


_S, _R, _I = Service.STORE, Service.RUNNER, Service.INGRESS
_WT = frozenset({Cache.WEBHOOKS, Cache.TARGETS})

_TABLE = (
    # The CLI's operations: public.
    Op("project.list", rq.Empty, list, _S, True, ""),
    Op("project.get", rq.ProjectRef, dict, _S, True, "project"),
    Op("manifest.apply", rq.ManifestApply, dict, _S, True, "project_name", ALL_CACHES),
    Op("build.create", rq.BuildCreate, str, _S, True, "project", frozenset({Cache.TARGETS})),
    Op("build.prepare", rq.PyenvPrepare, dict, _I, True, ""),
    Op("deployment.create", rq.DeploymentCreate, str, _S, True, "project", _WT),
    Op("deployment.activate", rq.DeploymentRef, type(None), _S, True, "deployment_id", _WT),
    Op("deployment.deactivate", rq.DeploymentRef, dict, _S, True, "deployment_id", _WT),
    Op("deployment.get", rq.DeploymentRef, dict, _S, True, "deployment_id"),
    Op("deployment.list", rq.ProjectRef, list, _S, True, "project"),
    Op("trigger.create", rq.TriggerCreate, dict, _S, True, "project", ALL_CACHES),
    Op("trigger.delete", rq.TriggerRef, type(None), _S, True, "trigger", ALL_CACHES),
    Op("trigger.get", rq.TriggerRef, dict, _S, True, "trigger"),
    Op("trigger.list", rq.ProjectRef, list, _S, True, "project"),
    Op("env.list", rq.ProjectRef, list, _S, True, "project"),
    Op("var.set", rq.VarSet, type(None), _S, True, "project", frozenset({Cache.SESSION_ENV})),
    Op("var.get", rq.VarGet, list, _S, True, "project"),
    Op("var.delete", rq.VarDelete, type(None), _S, True, "project", frozenset({Cache.SESSION_ENV})),
    Op("session.list", rq.SessionList, dict, _S, True, "project"),
    Op("session.get", rq.SessionRef, dict, _S, True, "session"),
    Op("session.records", rq.SessionRecords, dict, _S, True, "session"),
    Op("session.trace", rq.SessionRef, dict, _S, True, "session"),
    Op("session.start", rq.SessionStart, dict, _I, True, "deployment_id"),
    Op("session.stop", rq.SessionStop, type(None), _I, True, "session"),
    Op("session.restart", rq.SessionRef, dict, _I, True, "session"),
    Op("event.list", rq.ProjectRef, list, _S, True, "project"),
    Op("event.get", rq.EventRef, dict, _S, True, "event_id"),
    Op("event.redispatch", rq.EventRef, dict, _I, True, "event_id"),
    Op("auth.create_token", rq.TokenCreate, str, _I, True, ""),
    Op("auth.whoami", rq.Empty, dict, _I, True, ""),
    # Between services only.
    Op("ping", rq.Empty, str, _S, False, ""),
    Op("build.get", rq.BuildRef, dict, _S, False, "build_id"),
    Op("project.active", rq.ProjectRef, dict, _S, False, "project"),
    Op("webhook.lookup", rq.WebhookLookup, dict, _S, False, "slug"),
    Op("dispatch.targets", rq.DispatchTargets, dict, _S, False, "trigger_id"),
    Op("dispatch.note", rq.DispatchNote, type(None), _S, False, "event_id"),
    Op("schedule.list", rq.Empty, list, _S, False, ""),
    Op(
        "subscription.create",
        rq.SubscriptionCreate,
        type(None),
        _S,
        False,
        "project_id",
        frozenset({Cache.TARGETS}),
    ),  # fmt: skip
    Op(
        "subscription.delete",
        rq.SubscriptionDelete,
        type(None),
        _S,
        False,
        "session_id",
        frozenset({Cache.TARGETS}),
    ),  # fmt: skip
    Op("session.env", rq.SessionEnv, dict, _S, False, "project_id"),
    Op("session.states", rq.SessionStates, dict, _S, False, ""),
    Op("token.add", rq.TokenAdd, type(None), _S, False, ""),
    Op("token.check", rq.TokenCheck, dict, _S, False, ""),
    Op("pyenv.prepare", rq.PyenvPrepare, dict, _R, False, ""),
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


CHANGING = frozenset(name for name, op in OPS.items() if op.invalidates)
