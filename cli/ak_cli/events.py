"""``ak event dispatch|save``: events made by hand, from flags or a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from akcore.errors import InvalidArgument, NotFound

from . import client
from .options import JsonOpt

FromFileOpt = Annotated[
    str,
    typer.Option(
        "--from-file",
        "--from_file",
        "-f",
        help="A JSON event: event_type, destination_id, data, memo (flags override it).",
    ),
]
ConnectionOpt = Annotated[
    str,
    typer.Option("--connection", "-c", help="Destination connection: PROJECT/NAME or a con_ ID."),
]
EventTypeOpt = Annotated[str, typer.Option("--event-type", "-e", help="The event's type.")]
DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        "-d",
        metavar="KEY=VALUE",
        help="key=value of the event's data (repeatable, or a,b lists).",
    ),
]
MemoOpt = Annotated[
    list[str] | None,
    typer.Option("--memo", "-m", metavar="KEY=VALUE", help="key=value memo (repeatable)."),
]

_SCALARS = ("string", "integer", "float", "boolean")


def _value(v: Any) -> Any:
    """A data value: plain JSON, or AutoKitteh's Value form such as {"string": {"v": "x"}}."""
    if isinstance(v, dict) and len(v) == 1:
        ((kind, inner),) = v.items()
        if kind in _SCALARS and isinstance(inner, dict):
            return inner.get("v")
    return v


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise InvalidArgument(f"invalid {what} {part!r}: use key=value")
            out[key] = value
    return out


def build_event(
    from_file: str, connection: str, event_type: str, data: list[str], memo: list[str]
) -> dict[str, Any]:
    """The event's fields: the file's, then the flags' (``--data`` replaces all its data)."""
    ev: dict[str, Any] = {"destination": "", "event_type": "", "data": {}, "memo": {}}
    if from_file:
        try:
            raw = json.loads(Path(from_file).read_text())
        except FileNotFoundError:
            raise NotFound(f"open {from_file}: no such file or directory") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"{from_file}: not a JSON event: {e}") from None
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{from_file}: not a JSON event object")
        ev["destination"] = str(raw.get("destination_id") or "")
        ev["event_type"] = str(raw.get("event_type") or "")
        ev["data"] = {str(k): _value(v) for k, v in (raw.get("data") or {}).items()}
        ev["memo"] = {str(k): str(v) for k, v in (raw.get("memo") or {}).items()}
    if connection:
        ev["destination"] = connection
    if event_type:
        ev["event_type"] = event_type
    if data:
        ev["data"] = _pairs(data, "data")
    if memo:
        ev["memo"] = _pairs(memo, "memo")
    return ev


def register(events: typer.Typer) -> None:
    @events.command("dispatch")
    def dispatch(
        from_file: FromFileOpt = "",
        connection: ConnectionOpt = "",
        event_type: EventTypeOpt = "",
        data: DataOpt = None,
        memo: MemoOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Dispatch an event: kept, then sessions start for the triggers it matches (those of
        its connection, or the trg_... destination a --from-file event names)."""
        ev = build_event(from_file, connection, event_type, data or [], memo or [])
        res = client.call("event.dispatch", **ev)
        typer.echo(json.dumps(res) if as_json else f"event_id: {res['event_id']}")

    @events.command("save")
    def save(
        from_file: FromFileOpt = "",
        connection: ConnectionOpt = "",
        event_type: EventTypeOpt = "",
        data: DataOpt = None,
        memo: MemoOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Keep an event without dispatching it (`ak event redispatch` can send it later)."""
        ev = build_event(from_file, connection, event_type, data or [], memo or [])
        res = client.call("event.save", **ev)
        typer.echo(json.dumps(res) if as_json else f"event_id: {res['event_id']}")
