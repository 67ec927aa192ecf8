"""Reading and validating ``autokitteh.yaml`` manifests (versions v1 and v2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import cron
from .errors import InvalidArgument, shown
from .names import name_problem

# Characters of a manifest's other text (a trigger's event type, call and schedule, a
# project's display name): each is in every list of its kind, and a 3 MB event type of
# three triggers made every list of triggers (and the web UI's pages) fail over the NATS
# message limit, a 7 MB display name every list of projects.
MAX_TEXT = 1024
_CALL_RE = re.compile(r"^(?P<path>[^:\s]+\.py)[: ](?P<name>[A-Za-z_]\w*)\Z")
SOURCE_TYPES = ("webhook", "schedule", "connection")


@dataclass(frozen=True)
class Var:
    name: str
    value: str
    secret: bool = False
    description: str = ""


@dataclass(frozen=True)
class Connection:
    name: str
    integration: str
    vars: tuple[Var, ...] = ()


@dataclass(frozen=True)
class Trigger:
    name: str
    source_type: str
    event_type: str = ""
    filter: str = ""
    call: str = ""
    schedule: str = ""
    connection: str = ""
    is_durable: bool = True
    is_sync: bool = False
    has_webhook_field: bool = False

    def spec(self) -> dict[str, Any]:
        """The fields a redeploy compares and the store keeps."""
        return {
            "source_type": self.source_type,
            "event_type": self.event_type,
            "filter": self.filter,
            "call": self.call,
            "schedule": self.schedule,
            "connection": self.connection,
            "is_durable": self.is_durable,
            "is_sync": self.is_sync,
        }


@dataclass(frozen=True)
class Project:
    name: str
    display_name: str = ""
    vars: tuple[Var, ...] = ()
    connections: tuple[Connection, ...] = ()
    triggers: tuple[Trigger, ...] = ()


@dataclass(frozen=True)
class Manifest:
    version: str
    project: Project | None = None


@dataclass
class _Checker:
    problems: list[str] = field(default_factory=list)

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"- {where}: {what}")

    def mapping(self, value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                field_name = key if isinstance(key, str) and len(key) <= 64 else shown(key)
                self.fail(f"{where}.{field_name}" if where else field_name, "unknown field")
        return value

    def string(
        self, d: dict[str, Any], key: str, where: str, required: bool = False, most: int = MAX_TEXT
    ) -> str:
        """The text of field ``key``; at most ``most`` characters (0: any number)."""
        if key not in d or d[key] is None:
            if required:
                self.fail(f"{where}.{key}", "missing required field")
            return ""
        if not isinstance(d[key], str):
            self.fail(f"{where}.{key}", f"expected a string, got {_kind(d[key])}")
            return ""
        if "\x00" in d[key]:  # ("\0" in YAML): no database column or environment takes it
            self.fail(f"{where}.{key}", "holds a NUL character (\\0), which no text here may")
            return ""
        if most and len(d[key]) > most:
            self.fail(
                f"{where}.{key}",
                f"{len(d[key]):,} characters, over the limit of {most:,}: shorten it",
            )
            return ""
        return str(d[key])

    def boolean(self, d: dict[str, Any], key: str, where: str, default: bool) -> bool:
        if key not in d or d[key] is None:
            return default
        if not isinstance(d[key], bool):
            self.fail(f"{where}.{key}", f"expected true or false, got {shown(d[key])}")
            return default
        return bool(d[key])

    def name(self, d: dict[str, Any], where: str) -> str:
        name = self.string(d, "name", where, required=True)
        problem = name_problem(name) if name else ""
        if problem:
            self.fail(f"{where}.name", f"invalid name {shown(name)}: {problem}")
        return name

    def items(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {_kind(value)}")
            return []
        return value


class _NoAliases(yaml.SafeLoader):  # type: ignore[misc]  # (PyYAML comes without types)
    """YAML without aliases (``*name``). AutoKitteh's Go YAML takes them, but a few hundred
    bytes of nested aliases expand to gigabytes for whatever walks or prints the result, and
    a manifest has little to repeat: write the value out instead."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.refuse(self.peek_event())
        return super().compose_node(parent, index)

    @staticmethod
    def refuse(event: Any) -> None:
        alias = event.anchor if len(event.anchor) <= 40 else event.anchor[:40] + "..."
        raise yaml.composer.ComposerError(
            None,
            None,
            f"found the alias *{alias}: a manifest cannot use YAML aliases; write the "
            "value out in full",
            event.start_mark,
        )


_TOO_DEEP = "yaml: the manifest's collections are nested too deeply (a manifest needs a few levels)"


def _load_yaml(text: str) -> Any:
    """The YAML document, aliases refused (``_NoAliases``). With libyaml (PyYAML's wheels
    have it), parsed in C, ten times faster: the events are looked at for aliases first,
    then the document is loaded, both without expanding anything."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is None:
        return yaml.load(text, _NoAliases)
    for event in yaml.parse(text, Loader=fast):
        if isinstance(event, yaml.AliasEvent):
            _NoAliases.refuse(event)
    return yaml.load(text, Loader=fast)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _read_vars(c: _Checker, raw: Any, where: str) -> tuple[Var, ...]:
    out: list[Var] = []
    seen: set[str] = set()
    for i, item in enumerate(c.items(raw, where)):
        w = f"{where}[{i}]"
        d = c.mapping(item, w, {"name", "value", "secret", "description"})
        name = c.name(d, w)
        if name in seen:
            c.fail(f"{w}.name", f"duplicate var {shown(name)}")
        seen.add(name)
        out.append(
            Var(
                name,
                c.string(d, "value", w, required=True, most=0),  # (vars: the project's room)
                c.boolean(d, "secret", w, False),
                c.string(d, "description", w, most=0),
            )
        )
    return tuple(out)


# Triggers of one project: every list of triggers (the web UI's pages, `ak trigger list`,
# a manifest's plan) is one NATS message; 2,200 with long filters made every such list
# fail, for the users of every project. Likewise its connections (17,000 made `ak
# connection list` and the web UI's Events page fail).
MAX_TRIGGERS = 500
MAX_CONNECTIONS = 500

_TRIGGER_KEYS = {
    "name",
    "type",
    "webhook",
    "schedule",
    "connection",
    "event_type",
    "filter",
    "call",
    "is_durable",
    "is_sync",
}


def _read_trigger(c: _Checker, item: Any, w: str, durable_default: bool) -> Trigger:
    d = c.mapping(item, w, _TRIGGER_KEYS)
    name = c.name(d, w)
    declared = c.string(d, "type", w)
    if declared and declared not in SOURCE_TYPES:
        c.fail(f"{w}.type", f"{shown(declared)} is not one of webhook, schedule, connection")
    if "webhook" in d and d["webhook"] is not None and not isinstance(d["webhook"], dict):
        c.fail(f"{w}.webhook", "expected a mapping such as {}")
    c.mapping(d.get("webhook"), f"{w}.webhook", set())
    marks = [t for t in SOURCE_TYPES if t in d and (t == "webhook" or d[t] not in (None, ""))]
    if len(marks) > 1:
        c.fail(
            w, f"only one of webhook, schedule, connection may be given (got {', '.join(marks)})"
        )
    source = declared or (marks[0] if marks else "")
    if not source:
        c.fail(w, "missing trigger type: give one of webhook: {}, schedule or connection")
    elif marks and declared and marks[0] != declared:
        c.fail(f"{w}.type", f"type {shown(declared)} contradicts field {marks[0]!r}")
    call = c.string(d, "call", w)
    if call and not _CALL_RE.match(call):
        c.fail(f"{w}.call", f"{shown(call)} is not of the form file.py:function")
    flt = c.string(d, "filter", w, most=0)  # (measured as CEL: akcore.cellimits)
    if flt:
        # CEL takes ~0.2 s to import: a CLI checking a manifest without filters skips it.
        from .cel import FilterError, validate_filter

        try:
            validate_filter(flt)
        except FilterError as e:
            c.fail(f"{w}.filter", str(e))
    schedule = c.string(d, "schedule", w)
    if schedule:
        try:
            cron.parse(schedule)
        except cron.CronError as e:
            c.fail(f"{w}.schedule", str(e))
    is_sync = c.boolean(d, "is_sync", w, False)
    if is_sync and source != "webhook":
        c.fail(f"{w}.is_sync", "only webhook triggers can be sync")
    return Trigger(
        name=name,
        source_type=source,
        event_type=c.string(d, "event_type", w),
        filter=flt,
        call=call,
        schedule=schedule,
        connection=c.string(d, "connection", w),
        is_durable=c.boolean(d, "is_durable", w, durable_default),
        is_sync=is_sync,
        has_webhook_field="webhook" in d,
    )


def parse_manifest(text: str, project_name: str = "") -> Manifest:
    """Parses and validates manifest text; raises InvalidArgument naming every bad field.

    Args:
        text: the YAML document.
        project_name: overrides ``project.name`` (``ak deploy --project-name``).
    """
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as e:
        if "exceeded maximum nesting depth" in str(e):  # (libyaml's own limit)
            raise InvalidArgument(_TOO_DEEP) from None
        raise InvalidArgument(f"yaml: {e}") from None
    except ValueError:  # int() refuses over 4300 digits
        raise InvalidArgument("yaml: a number is too long: quote it to make it text") from None
    except RecursionError:  # (PyYAML composes nested collections by recursion)
        raise InvalidArgument(_TOO_DEEP) from None
    c = _Checker()
    top = c.mapping(raw, "", {"version", "project"})
    version = top.get("version")
    if version not in ("v1", "v2"):
        if c.problems:
            raise InvalidArgument("invalid YAML semantics:\n" + "\n".join(c.problems))
        raise InvalidArgument(f"unsupported manifest version {shown(version)}: use v1 or v2")
    project = None
    if "project" in top:
        p = c.mapping(
            top["project"], "project", {"name", "display_name", "vars", "connections", "triggers"}
        )
        if project_name:
            p = {**p, "name": project_name}
        name = c.name(p, "project")
        triggers: list[Trigger] = []
        names: set[str] = set()
        listed = c.items(p.get("triggers"), "project.triggers")
        if len(listed) > MAX_TRIGGERS:
            c.fail("project.triggers", f"{len(listed)} triggers, over the limit of {MAX_TRIGGERS}")
        for i, item in enumerate(listed[:MAX_TRIGGERS]):
            t = _read_trigger(c, item, f"project.triggers[{i}]", durable_default=version == "v1")
            if t.name in names:
                c.fail(f"project.triggers[{i}].name", f"duplicate trigger {shown(t.name)}")
            names.add(t.name)
            triggers.append(t)
        conns: list[Connection] = []
        conn_names: set[str] = set()
        listed = c.items(p.get("connections"), "project.connections")
        if len(listed) > MAX_CONNECTIONS:
            c.fail(
                "project.connections",
                f"{len(listed)} connections, over the limit of {MAX_CONNECTIONS}",
            )
        for i, item in enumerate(listed[:MAX_CONNECTIONS]):
            w = f"project.connections[{i}]"
            d = c.mapping(item, w, {"name", "integration", "vars"})
            conn = Connection(
                c.name(d, w),
                c.string(d, "integration", w, required=True),
                _read_vars(c, d.get("vars"), f"{w}.vars"),
            )
            if conn.name and conn.name in conn_names:
                c.fail(f"{w}.name", f"duplicate connection {shown(conn.name)}")
            conn_names.add(conn.name)
            conns.append(conn)
        for i, t in enumerate(triggers):
            if t.connection and t.connection not in conn_names:
                c.fail(
                    f"project.triggers[{i}].connection",
                    f"{shown(t.connection)} is not one of the project's connections",
                )
        project = Project(
            name=name,
            display_name=c.string(p, "display_name", "project"),
            vars=_read_vars(c, p.get("vars"), "project.vars"),
            connections=tuple(conns),
            triggers=tuple(triggers),
        )
    if c.problems:
        raise InvalidArgument("invalid YAML semantics:\n" + "\n".join(c.problems))
    return Manifest(version=version, project=project)


def parse_call(call: str) -> tuple[str, str]:
    """Splits ``file.py:function`` into its path and function name."""
    m = _CALL_RE.match(call)
    if not m:
        raise InvalidArgument(f"invalid entry point {shown(call)}: expected file.py:function")
    return m.group("path"), m.group("name")
