"""AttrDict: a dict whose keys can also be read as attributes."""

from __future__ import annotations

from typing import Any


def wrap(value: Any) -> Any:
    """Turns nested plain dicts (also inside lists) into AttrDicts; other values pass through."""
    if isinstance(value, dict) and not isinstance(value, AttrDict):
        return AttrDict(value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


class AttrDict(dict):  # type: ignore[type-arg]
    """A dict with read-only attribute access: ``d.key`` is ``d["key"]``.

    Nested dicts become AttrDicts when stored, so ``event.data.body`` and
    ``event["data"]["body"]`` are the same object and item assignment sticks.
    Setting an attribute raises, since it would silently not set a key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for k, v in self.items():
            dict.__setitem__(self, k, wrap(v))

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, wrap(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise NotImplementedError(
            f"can't set attribute {name!r} of an AttrDict; use item assignment: d[{name!r}] = ..."
        )

    def __delattr__(self, name: str) -> None:
        raise NotImplementedError(f"can't delete attribute {name!r} of an AttrDict; use del d[...]")

    def __dir__(self) -> list[str]:
        return [str(k) for k in self.keys()]

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (dict(self),))
