"""Webhook headers that carry credentials: which they are, and masked where an event is
shown (``ak event get``, the web UI) unless revealed.

An event's data rests sealed whole (``akcore.eventdata``). Earlier versions sealed only
these headers, one by one, each bound to its project and header name (``seal``): such
events, still in a stream or the store, are opened by ``unseal``."""

from __future__ import annotations

from typing import Any

from .datakey import TEXT_PREFIX, Keyring

MASK = "<secret>"
_NAMES = frozenset({"authorization", "proxy-authorization", "cookie"})
_PARTS = ("token", "secret", "signature", "key", "auth", "cookie", "password")


def is_credential(name: str) -> bool:
    """Whether a header of this name carries a credential (any case)."""
    low = name.lower()
    return low in _NAMES or any(part in low for part in _PARTS)


def _aad(project_id: str, name: str) -> bytes:
    return f"{project_id}/header/{name}".encode()


def _headers(data: Any) -> dict[str, Any] | None:
    headers = data.get("headers") if isinstance(data, dict) else None
    return headers if isinstance(headers, dict) else None


def seal(data: dict[str, Any], project_id: str, keys: Keyring) -> dict[str, Any]:
    """Event data with its credential headers sealed, as earlier versions published it
    (data without headers as it is)."""
    headers = _headers(data)
    if not headers or not any(map(is_credential, headers)):
        return data
    sealed = {
        k: keys.seal_text(v.encode(), _aad(project_id, k))
        if is_credential(k) and isinstance(v, str)
        else v
        for k, v in headers.items()
    }
    return {**data, "headers": sealed}


def unseal(data: Any, project_id: str, keys: Keyring) -> Any:
    """Event data with its sealed credential headers opened, as the handler gets them;
    raises SealError for one that does not open (another project's, or altered)."""
    headers = _headers(data)
    if not headers or not any(_is_sealed(k, v) for k, v in headers.items()):
        return data
    opened = {
        k: keys.open_text(v, _aad(project_id, k)).decode() if _is_sealed(k, v) else v
        for k, v in headers.items()
    }
    return {**data, "headers": opened}


def mask(data: Any) -> Any:
    """Event data with its credential headers shown as ``MASK``."""
    headers = _headers(data)
    if not headers:
        return data
    return {**data, "headers": {k: MASK if is_credential(k) else v for k, v in headers.items()}}


def _is_sealed(name: str, value: Any) -> bool:
    return is_credential(name) and isinstance(value, str) and value.startswith(TEXT_PREFIX)
