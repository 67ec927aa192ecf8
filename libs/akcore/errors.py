"""The one exception tree of the shared library.

AKError                 root; ``kind`` maps to CLI exit codes and HTTP statuses
├── InvalidArgument     the user sent something malformed (exit 40, HTTP 400)
├── NotFound            a named thing does not exist (exit 44, HTTP 404)
├── Conflict            the request clashes with current state (exit 42, HTTP 409)
├── Unauthenticated     no API token, or one the server does not know (exit 41, HTTP 401)
├── PermissionDenied    the caller may not do this (a UI form from elsewhere) (exit 43, HTTP 403)
├── ResourceExhausted   too many requests of one kind from one caller (exit 1, HTTP 429)
└── Unavailable         a service did not answer in time (exit 1, HTTP 503)
"""

from __future__ import annotations


class AKError(Exception):
    kind = "internal"
    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AKError):
    kind = "invalid_argument"
    exit_code = 40
    http_status = 400


class NotFound(AKError):
    kind = "not_found"
    exit_code = 44
    http_status = 404


class Conflict(AKError):
    kind = "failed_precondition"
    exit_code = 42
    http_status = 409


class Unauthenticated(AKError):
    kind = "unauthenticated"
    exit_code = 41
    http_status = 401


class PermissionDenied(AKError):
    kind = "permission_denied"
    exit_code = 43
    http_status = 403


class ResourceExhausted(AKError):
    kind = "resource_exhausted"
    exit_code = 1
    http_status = 429


class Unavailable(AKError):
    kind = "unavailable"
    exit_code = 1
    http_status = 503


_BY_KIND: dict[str, type[AKError]] = {
    c.kind: c
    for c in (
        AKError,
        InvalidArgument,
        NotFound,
        Conflict,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
    )
}


def error_from_kind(kind: str, message: str) -> AKError:
    """Rebuilds an error received over the wire."""
    return _BY_KIND.get(kind, AKError)(message)


MAX_SHOWN = 80  # characters of a text a message quotes


def shown(value: object) -> str:
    """What an error message quotes of a value a user sent: a short scalar's repr, a long
    text's first ``MAX_SHOWN`` characters and its length, anything else only its kind.

    Never the repr of a list or mapping: one read from YAML may share its parts
    (``*alias``), and written out it can be a million times the size of what was sent.
    """
    if isinstance(value, str):
        if len(value) <= MAX_SHOWN:
            return repr(value)
        return f"{value[:MAX_SHOWN]!r}... ({len(value):,} characters)"
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):  # (a huge int's repr raises ValueError past 4300 digits)
        return repr(value) if value.bit_length() <= 64 else "a number too long to show"
    kinds: dict[type, str] = {dict: "a mapping", list: "a list", bytes: "binary data"}
    return kinds.get(type(value), f"a {type(value).__name__}")
