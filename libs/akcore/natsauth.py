"""Who may do what on NATS: one user per service, each allowed only its own subjects.

A service that leaks its credentials (the runner is the one closest to user code) gives
away only what that service does: ingress's user can publish events but not read a
journal or ask for a session's secrets, the runner's can neither purge a stream nor
change a consumer, and no service reads the replies sent to another (each has its own
inbox prefix). Only the store creates and changes streams and consumers (``bus.
ensure_streams``, and the consumers of ``AK_DEFERRED``, one per destination with deferred
events, when a dispatcher asks: ``bus.make_deferred_consumer``); the others wait for them
(``bus.wait_streams``).

``authorization_block`` writes these users for a nats-server configuration: ``ak up``
gives its embedded server one with generated passwords (``ensure_passwords``), and
``ak nats-config`` prints one for an operator's own servers.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import ops, subjects

API = "$JS.API"
STREAMS = (
    subjects.STREAM_EVENTS,
    subjects.STREAM_JOBS,
    subjects.STREAM_JOURNAL,
    subjects.STREAM_INBOX,
    subjects.STREAM_REPLAY,
    subjects.STREAM_DEFERRED,
)
BUCKET_VALUES = "AK_VALUES"  # the projects' values stores (KV)
BUCKET_KEYS = "AK_KEYS"  # the secrets key's canary (akcore.keycheck)
BUCKETS = (BUCKET_VALUES, subjects.BUCKET_WEBHOOKS, subjects.BUCKET_PARKED, BUCKET_KEYS)

# The durable consumers: (stream, name).
DURABLES = (
    (subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER),
    *((subjects.STREAM_JOBS, name) for name in subjects.RUNNER_CONSUMERS),
    (subjects.STREAM_JOURNAL, subjects.CONSUMER_STORE_JOURNAL),
    (subjects.STREAM_EVENTS, subjects.CONSUMER_STORE_EVENTS),
)
# Durable consumers of earlier versions, which the store deletes as it starts.
RETIRED_DURABLES = ((subjects.STREAM_DEFERRED, subjects.CONSUMER_DISPATCHER_DEFERRED_RETIRED),)

# The internal operations (akcore.ops) each service calls; ingress also forwards every
# public one that the store or a runner answers.
CALLS: dict[str, frozenset[str]] = {
    "ingress": frozenset(
        {
            "build.get",
            "event.store",
            "github.route",
            "keys.check",
            "project.active",
            "pyenv.prepare",
            "scope.resolve",
            "slack.route",
            "token.add",
            "token.check",
            "webhook.lookup",
        }
    ),
    "dispatcher": frozenset(
        {
            "deferred.consumer",
            "dispatch.targets",
            "dispatch.note",
            "keys.check",
            "schedule.list",
            "session.states",
        }
    ),
    "runner": frozenset(
        {
            "build.get",
            "deployment.get",
            "event.get",
            "keys.check",
            "project.active",
            "project.get",
            "session.env",
            "session.get",
            "session.states",
            "source.resolve",
            "subscription.create",
            "subscription.delete",
            "trigger.get",
        }
    ),
    "store": frozenset(),
}


def calls(service: str) -> frozenset[str]:
    """The operations ``service`` may ask the store or a runner for."""
    if service != "ingress":
        return CALLS[service]
    forwarded = {n for n, op in ops.OPS.items() if op.public and op.service != ops.Service.INGRESS}
    return CALLS[service] | forwarded


def op_subject(name: str) -> str:
    """``ak.store.<op>`` or ``ak.runner.<op>``, by who answers it."""
    if ops.get(name).service == ops.Service.RUNNER:
        return subjects.runner_subject(name)
    return subjects.store_subject(name)


def inbox_prefix(service: str) -> str:
    """Where a service's replies arrive: only its own user may subscribe there."""
    return f"_INBOX.{service}"


def may_call(service: str, subject: str) -> bool:
    """Whether ``service``'s user may send a request to ``subject`` (``ak.store.<op>`` or
    ``ak.runner.<op>``): checked before asking, so a refused request says so at once
    instead of timing out."""
    return subject in {op_subject(name) for name in calls(service)}


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()


def _pull(stream: str, consumer: str) -> tuple[str, ...]:
    """Reading a durable pull consumer: ask for messages, ack them, look at the consumer."""
    return (
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"{API}.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def _read(stream: str) -> tuple[str, ...]:
    """Reading a stream's messages: the last one of a subject, or all of them through an
    ordered (ephemeral) consumer with flow control."""
    return (
        *_get(stream),
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def _get(stream: str) -> tuple[str, ...]:
    """Reading one message of a stream (a subject's last, or by sequence)."""
    return (
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
    )


def _kv(bucket: str) -> tuple[str, ...]:
    """Reading, listing or watching and writing a KV bucket."""
    return (*_read(f"KV_{bucket}"), f"$KV.{bucket}.>")


def _waits() -> tuple[str, ...]:
    """``bus.wait_streams``: looking whether the store has created everything yet."""
    return (
        *(f"{API}.STREAM.INFO.{s}" for s in (*STREAMS, *(f"KV_{b}" for b in BUCKETS))),
        *(f"{API}.CONSUMER.INFO.{s}.{c}" for s, c in DURABLES),
    )


def _bootstrap() -> tuple[str, ...]:
    """``bus.ensure_streams``: creating the streams, buckets and durable consumers and
    keeping their limits."""
    names = (*STREAMS, *(f"KV_{b}" for b in BUCKETS))
    return (
        f"{API}.STREAM.LIST",
        *(f"{API}.STREAM.{verb}.{s}" for s in names for verb in ("CREATE", "INFO")),
        *(f"{API}.STREAM.UPDATE.{s}" for s in names),  # (buckets: their versions kept)
        *(f"{API}.CONSUMER.INFO.{s}.{c}" for s, c in DURABLES),
        *(f"{API}.CONSUMER.CREATE.{s}.{c}" for s, c in DURABLES),
        *(f"{API}.CONSUMER.CREATE.{s}.{c}.>" for s, c in DURABLES),
        *(f"{API}.CONSUMER.DURABLE.CREATE.{s}.{c}" for s, c in DURABLES),
        *(f"{API}.CONSUMER.DELETE.{s}.{c}" for s, c in RETIRED_DURABLES),
    )


def _deferred_consumers() -> tuple[str, ...]:
    """The dispatchers' consumers of ``AK_DEFERRED``, one per destination: looking at one,
    reading it, acking its events; no other stream's consumers. They are made by the store
    (``deferred.consumer``), with a configuration of its own: a dispatcher's user that
    could make or change one could give it any configuration (a push consumer delivering
    to any subject, past its own publish permissions; a window of one event)."""
    stream = subjects.STREAM_DEFERRED
    return (
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.*.>",
    )


def _deferred_made() -> tuple[str, ...]:
    """The store making a destination's consumer of ``AK_DEFERRED`` (any destination: a
    permission cannot match part of a token), and looking at how many there are."""
    stream = subjects.STREAM_DEFERRED
    return (
        f"{API}.CONSUMER.CREATE.{stream}.*.{subjects.deferred_subject('*')}",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.DELETE.{stream}.*",  # one not made as the store makes them
    )


def _no_durables(*streams: str) -> tuple[str, ...]:
    """An ephemeral consumer may not be given a durable consumer's name (which would
    change that consumer)."""
    return tuple(
        f"{API}.CONSUMER.CREATE.{s}.{c}{rest}"
        for s, c in DURABLES
        if s in streams
        for rest in ("", ".>")
    )


def _requests(service: str) -> tuple[str, ...]:
    return tuple(sorted(op_subject(name) for name in calls(service)))


def _common(service: str) -> tuple[str, ...]:
    """What every service subscribes to: its replies and its health check."""
    return (f"{inbox_prefix(service)}.>", subjects.health_subject(service))


def permissions(service: str) -> Permissions:
    """The allow-lists of one service's user (every user may also answer the requests
    it receives: ``allow_responses``)."""
    new_session = (subjects.JOURNAL_ALL, subjects.JOBS_ALL)  # publish_session
    if service == "ingress":  # events only: sessions are started and stopped by a runner
        return Permissions(
            publish=(
                subjects.EVENTS_ALL,
                subjects.SPANS,
                subjects.health_subject("*"),
                *_requests(service),
                *_kv(subjects.BUCKET_WEBHOOKS),
                f"{API}.STREAM.PURGE.KV_{subjects.BUCKET_WEBHOOKS}",  # a lookup's earlier ones
                *_get(f"KV_{BUCKET_VALUES}"),
                *_get(f"KV_{BUCKET_KEYS}"),  # the key's canary
                *_waits(),
            ),
            subscribe=(
                *_common(service),
                subjects.CHANGED,
                subjects.dispatched_subject("*"),
                subjects.OUTCOMES_ALL,  # outcomes and the ends of sync webhooks' sessions
            ),
        )
    if service == "dispatcher":
        return Permissions(
            publish=(
                *_pull(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER),
                subjects.EVENTS_ALL,  # cron ticks
                # events deferred (ak_dispatcher.admission): kept, taken back, looked for
                subjects.DEFERRED_ALL,
                *_deferred_consumers(),
                *_get(subjects.STREAM_DEFERRED),
                *new_session,
                subjects.INBOX_ALL,
                subjects.dispatched_subject("*"),
                subjects.SPANS,
                *_requests(service),
                *_waits(),
                # the waker: parked sessions, and every inbox message (it may wake one)
                *_kv(subjects.BUCKET_PARKED),
                f"{API}.STREAM.PURGE.KV_{subjects.BUCKET_PARKED}",  # woken entries' markers
                *_read(subjects.STREAM_INBOX),
                *_get(f"KV_{BUCKET_KEYS}"),  # the key's canary
            ),
            subscribe=(*_common(service), subjects.CHANGED),
            deny_publish=_no_durables(subjects.STREAM_INBOX),
        )
    if service == "runner":
        return Permissions(
            publish=(
                *(p for c in subjects.RUNNER_CONSUMERS for p in _pull(subjects.STREAM_JOBS, c)),
                *new_session,  # child sessions
                subjects.INBOX_ALL,
                subjects.outcome_subject("*"),
                subjects.ended_subject("*"),
                subjects.SPANS,
                *_read(subjects.STREAM_JOURNAL),
                *_read(subjects.STREAM_INBOX),
                subjects.REPLAY_ALL,  # replay chunks (akcore.chunks)
                subjects.attempts_subject("*"),  # attempts starting (journalio.JournalWatch)
                *_read(subjects.STREAM_REPLAY),
                *_get(subjects.STREAM_EVENTS),  # whose an event is (a session's outcome)
                *_kv(BUCKET_VALUES),
                f"{API}.STREAM.PURGE.KV_{BUCKET_VALUES}",  # deleted values leave no marker
                *_kv(subjects.BUCKET_PARKED),  # parking a waiting session
                f"{API}.STREAM.PURGE.KV_{subjects.BUCKET_PARKED}",  # an entry's earlier ones
                *_get(f"KV_{BUCKET_KEYS}"),  # the key's canary
                *_requests(service),
                *_waits(),
            ),
            subscribe=(
                *_common(service),
                subjects.CHANGED,
                subjects.inbox_subject("*"),
                subjects.attempts_subject("*"),  # attempts starting (journalio.JournalWatch)
                subjects.RUNNER_ALL,
            ),
            deny_publish=_no_durables(subjects.STREAM_JOURNAL, subjects.STREAM_INBOX),
        )
    if service == "store":
        return Permissions(
            publish=(
                *_pull(subjects.STREAM_JOURNAL, subjects.CONSUMER_STORE_JOURNAL),
                *_pull(subjects.STREAM_EVENTS, subjects.CONSUMER_STORE_EVENTS),
                *(
                    f"{API}.STREAM.{verb}.{s}"
                    for s in (subjects.STREAM_JOURNAL, subjects.STREAM_INBOX)
                    for verb in ("PURGE", "MSG.GET")
                ),
                f"{API}.STREAM.PURGE.{subjects.STREAM_REPLAY}",  # ended sessions' chunks
                *_read(subjects.STREAM_INBOX),  # the inboxes' sizes (ak_store.room)
                f"{API}.DIRECT.GET.{subjects.STREAM_JOURNAL}.>",
                subjects.INBOX_ALL,  # ends a session whose record it could not keep
                subjects.CHANGED,
                subjects.SPANS,
                *_bootstrap(),
                *_deferred_made(),
                *_kv(BUCKET_KEYS),  # seals the key's canary, or seals it again
                subjects.health_subject("store"),  # is another store running? (keycheck)
            ),
            subscribe=(*_common(service), subjects.STORE_ALL, subjects.SPANS),
        )
    raise ValueError(f"no NATS permissions for {service!r}")


def _list(name: str, items: tuple[str, ...], indent: str) -> str:
    lines = "".join(f"{indent}  {json.dumps(x)}\n" for x in dict.fromkeys(items))
    return f"{indent}{name}: [\n{lines}{indent}]\n"


def user_entry(service: str, password: str) -> str:
    """One user of the ``authorization`` block; ``password`` is written as given (a
    quoted string, or ``$NAME`` for nats-server to read from its environment)."""
    p, at = permissions(service), " " * 10
    deny = _list("deny", p.deny_publish, at) if p.deny_publish else ""
    return (
        f"    {{\n      user: {json.dumps(service)}\n      password: {password}\n"
        "      permissions: {\n"
        f"        publish: {{\n{_list('allow', p.publish, at)}{deny}        }}\n"
        f"        subscribe: {{\n{_list('allow', p.subscribe, at)}        }}\n"
        "        allow_responses: true\n      }\n    }\n"
    )


def authorization_block(passwords: Mapping[str, str], admins: Mapping[str, str] = {}) -> str:
    """The nats-server ``authorization`` block of the services' users (``passwords``: the
    password of each, as written in the file) and of ``admins`` allowed everything."""
    users = "".join(user_entry(s, pw) for s, pw in passwords.items())
    users += "".join(
        f"    {{ user: {json.dumps(u)}, password: {pw} }}\n" for u, pw in admins.items()
    )
    return f"authorization {{\n  users: [\n{users}  ]\n}}\n"


def password_variable(service: str) -> str:
    """The environment variable that holds a service's password in compose."""
    return f"AK_NATS_{service.upper()}_PASSWORD"


def operator_block() -> str:
    """The ``authorization`` block for an operator's own servers (``ak nats-config``): each
    password is read from the server's environment (``$AK_NATS_<SERVICE>_PASSWORD``)."""
    return authorization_block({s: f"${password_variable(s)}" for s in subjects.SERVICES})


def env_lines() -> str:
    """A new password for each service, as lines of an env file (compose's ``.env``)."""
    return "".join(f"{password_variable(s)}={new_password()}\n" for s in subjects.SERVICES)


PASSWORD_LETTERS = string.ascii_letters + string.digits


def new_password() -> str:
    """256 random bits as 44 letters and digits, the first a letter: nats-server parses the
    value of an environment variable (``$AK_NATS_..._PASSWORD``) as it would a value in its
    configuration: one that starts with ``-7D`` (as ``token_urlsafe`` may give) is lexed as a
    number and fails to parse."""
    first = secrets.choice(string.ascii_letters)
    return first + "".join(secrets.choice(PASSWORD_LETTERS) for _ in range(43))


def ensure_passwords(folder: Path) -> dict[str, Path]:
    """A password file per service in ``folder`` (owner-only; made once, kept after):
    the file each service's ``AK_NATS__PASSWORD_FILE`` names."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    files = {}
    for service in subjects.SERVICES:
        path = files[service] = folder / f"{service}.password"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as out:
            out.write(new_password() + "\n")
    return files


def read_password(path: Path) -> str:
    return path.read_text().strip()
