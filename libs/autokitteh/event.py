"""The event a handler receives."""

from __future__ import annotations

import dataclasses
from typing import Any

from .attr_dict import AttrDict


# A dataclass as AutoKitteh's Event is (``dataclasses.fields``, ``asdict`` and ``replace``
# work), kept as a dict so that ``event["data"]`` works too: the fields are its items, so
# no field has a class-level default (it would hide the item of the same name).
@dataclasses.dataclass(init=False, repr=False, eq=False)
class Event(AttrDict):
    """What a handler gets: a dict-like object with ``data``, ``session_id``, ``event_id``
    (None for a manual start) and ``event_type``. ``event.data.x`` and
    ``event["data"]["x"]`` both work.
    """

    data: AttrDict
    event_type: str | None
    event_id: str | None
    session_id: str | None

    def __init__(
        self,
        data: Any = None,
        event_type: str | None = None,
        event_id: str | None = None,
        session_id: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(
            data=data if data is not None else {},
            event_type=event_type,
            event_id=event_id,
            session_id=session_id,
            **extra,
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.items())
        return f"Event({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_event, (dict(self),))


def _rebuild_event(fields: dict[str, Any]) -> Event:
    return Event(**fields)
