"""Who may see the web UI, and which of its forms to believe.

Tokens on: the API token, typed once into the login page, rides in an HttpOnly,
SameSite=Strict cookie (path ``/ui``) and is checked exactly as ``/api`` checks a bearer
token. Tokens off (dev mode on loopback): as the tokens-off API, only the server's own user
(or root), over a loopback ``Host`` (no DNS rebinding), and no page of another site.

Forms (stop, restart, login, logout) change things, so each must come from a UI page: its
``Origin`` must be this server (another port of localhost is "same site" to a browser, so
SameSite alone does not do), and its ``csrf`` field must match the ``ak_ui_csrf`` cookie
(double submit: another origin can neither read the cookie nor the page holding the field).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from akcore.config import is_loopback
from akcore.errors import InvalidArgument, PermissionDenied, Unauthenticated
from fastapi import Request, Response

from .auth import DEV_CALLER, Authenticator, Caller, host_name
from .body import read_body
from .clients import ClientAddresses

# The UI's cookies share the origin with webhooks, whose sync answers are the handlers':
# such an answer may set no cookie named so (``sync``), which would log the admin in as
# another token, or out.
UI_COOKIES = "ak_ui_"
TOKEN_COOKIE = f"{UI_COOKIES}token"
CSRF_COOKIE = f"{UI_COOKIES}csrf"
COOKIE_PATH = "/ui"
# Requests a browser makes from a UI page or from its address bar (Sec-Fetch-Site).
OWN_FETCHES = frozenset({"same-origin", "none"})
MAX_FORM = 8192
# A UI page's path, as ``after_login`` goes on to: /ui/ then segments of letters, digits,
# "_" and "-" (ids, page names), each after a single "/".
UI_PAGE = re.compile(r"/ui(/[A-Za-z0-9_-]+)+")


class UiAuth:
    """The UI's gate in front of ``Authenticator``."""

    def __init__(self, auth: Authenticator, clients: ClientAddresses | None = None) -> None:
        self.auth = auth
        self.clients = clients or ClientAddresses()

    @property
    def tokens_required(self) -> bool:
        return self.auth.required

    async def caller(self, request: Request) -> Caller:
        """The caller of a UI request; Unauthenticated (log in) or PermissionDenied."""
        client, server = request.scope.get("client"), request.scope.get("server")
        if self.auth.required:
            token = request.cookies.get(TOKEN_COOKIE, "")
            if not token:
                raise Unauthenticated("log in with an API token")
            return await self.auth.caller(
                f"Bearer {token}", client, server, address=self.clients.of_request(request)
            )
        check_page_request(request.headers)
        await self.auth.check_local_user(client, server)
        return DEV_CALLER

    async def check_token(self, request: Request, token: str) -> Caller:
        """The caller a token typed into the login page names (Unauthenticated if none)."""
        client, server = request.scope.get("client"), request.scope.get("server")
        return await self.auth.caller(
            f"Bearer {token}", client, server, address=self.clients.of_request(request)
        )


def check_page_request(headers: Mapping[str, str]) -> None:
    """A tokens-off UI answers a loopback name only, and no page of another site."""
    host = headers.get("host") or ""
    if not is_loopback(host_name(host)):
        raise PermissionDenied(
            "API tokens are off on this server (dev mode on a loopback address), so its UI "
            f"answers only pages addressed to localhost or 127.0.0.1, not to {host!r}"
        )
    site = headers.get("sec-fetch-site")
    if site is not None and site not in OWN_FETCHES:
        raise PermissionDenied(
            "API tokens are off on this server, so its UI does not answer requests a page "
            f"of another site makes ({site}): open the UI's address yourself"
        )


def check_form(request: Request, fields: Mapping[str, str]) -> None:
    """PermissionDenied unless a form post comes from a page of this UI (module docstring)."""
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if not origin or urlsplit(origin).netloc.lower() != host.strip().lower():
        raise PermissionDenied(
            f"this form was not sent by a page of this server (Origin {origin!r}, Host "
            f"{host!r}): reload the page and try again"
        )
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = fields.get("csrf", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise PermissionDenied("this form's CSRF token is stale: reload the page and try again")


def csrf_token(request: Request) -> str:
    """The CSRF token of this browser (a new one when it has none: ``set_cookies`` sends it)."""
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)


def set_cookies(request: Request, response: Response, csrf: str, token: str | None = None) -> None:
    """Sets the CSRF cookie if the browser lacks it, and the token cookie when ``token``
    ("" clears it)."""
    secure = request.url.scheme == "https"
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(
            CSRF_COOKIE, csrf, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure
        )
    if token:
        response.set_cookie(
            TOKEN_COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure
        )
    elif token == "":
        response.delete_cookie(
            TOKEN_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure
        )


async def read_form(request: Request, limit: int = MAX_FORM) -> dict[str, str]:
    """A url-encoded form of at most ``limit`` bytes (a button's CSRF token, a login, a var)."""
    body = await read_body(request, limit, limit)
    if body is None:
        raise InvalidArgument(f"this form is over the UI's {limit} byte limit")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def after_login(target: str | None) -> str:
    """Where to go after logging in: a UI page of this server, never elsewhere. Its path is
    plain segments of the UI's addresses (ids, page names): no dot segment, which a browser
    resolves out of ``/ui`` even encoded (``/ui/%2e%2e/webhooks/...``, a project's page on
    this origin), no ``//``, backslash or control character; the query is kept as it is."""
    path, mark, query = (target or "").partition("?")
    if UI_PAGE.fullmatch(path) and not any(c < " " or c == "\x7f" for c in query):
        return path + mark + query
    return "/ui/sessions"
