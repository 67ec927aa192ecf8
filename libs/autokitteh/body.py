"""The body of a webhook request as handlers see it: raw bytes that also know their forms."""

from __future__ import annotations

from typing import Any

from .attr_dict import wrap

_FORMS = ("bytes", "text", "json", "form")


class Body(bytes):
    """Request body: ``bytes`` (so ``json.loads(body)`` and ``body.decode()`` work) plus the
    parsed forms AutoKitteh offers: ``body.bytes``, ``body.text``, ``body.json``, ``body.form``,
    also as items (``body["json"]``). Empty forms are None.
    """

    _forms: dict[str, Any]

    def __new__(cls, forms: dict[str, Any]) -> Body:
        self = super().__new__(cls, forms.get("bytes") or b"")
        self._forms = {k: wrap(forms.get(k)) for k in _FORMS}
        return self

    @property
    def bytes(self) -> bytes | None:
        return self._forms["bytes"]  # type: ignore[no-any-return]

    @property
    def text(self) -> str | None:
        return self._forms["text"]  # type: ignore[no-any-return]

    @property
    def json(self) -> Any:
        return self._forms["json"]

    @property
    def form(self) -> dict[str, str] | None:
        return self._forms["form"]  # type: ignore[no-any-return]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key in _FORMS:
                return self._forms[key]
            raise KeyError(key)
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(_FORMS)

    def get(self, key: str, default: Any = None) -> Any:
        return self._forms.get(key, default)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Body, (dict(self._forms),))


def with_body(data: dict[str, Any]) -> dict[str, Any]:
    """Returns webhook event data with ``body`` (a dict of forms) turned into a Body."""
    body = data.get("body")
    if isinstance(body, dict) and set(body) <= set(_FORMS) and "bytes" in body:
        data = dict(data)
        data["body"] = Body(body)
    return data
