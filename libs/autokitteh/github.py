"""GitHub clients for a project's GitHub connection (PyGithub, ``PyGithub ~= 2.8``).

Reads only the connection's variables in the session's environment (``<connection>__pat``,
``__app_id``, ``__install_id``, ``__private_key``, ``__enterprise_url``), as AutoKitteh's
helper does. Importing this module needs PyGithub (``autokitteh[all]`` in the package list).
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urljoin

from github import Auth, Consts, Github, GithubIntegration

from .connections import check_connection_name, encode_jwt
from .errors import ConnectionInitError


def github_client(connection: str, **kwargs: Any) -> Github:
    """A ``github.Github`` for ``connection``: with its personal access token, or as its
    GitHub app's installation (the JWT signed by the server unless the connection holds
    the app's private key). ``kwargs`` go to PyGithub (``base_url``, ``timeout``, ...)."""
    check_connection_name(connection)
    enterprise = os.getenv(f"{connection}__enterprise_url") or os.getenv("GITHUB_ENTERPRISE_URL")
    if enterprise:
        kwargs["base_url"] = urljoin(enterprise, "api/v3")
        print(f"GitHub Enterprise base URL: {kwargs['base_url']}")
    pat = os.getenv(f"{connection}__pat")
    if pat:
        return Github(auth=Auth.Token(pat), **kwargs)
    app_id = os.getenv(f"{connection}__app_id")
    install_id = os.getenv(f"{connection}__install_id")
    if not app_id or not install_id:
        raise ConnectionInitError(connection)
    key = os.getenv(f"{connection}__private_key")
    auth = Auth.AppAuth(int(app_id), key) if key else _ServerSigned(int(app_id), connection)
    app = GithubIntegration(auth=auth, **kwargs)
    return app.get_github_for_installation(int(install_id))


def _signed_elsewhere(*_: Any) -> str:
    """PyGithub's signing hook, never called: ``_ServerSigned.create_jwt`` asks the server.
    (A module function: clients an activity returns must pickle, and a lambda does not.)"""
    return ""


class _ServerSigned(Auth.AppAuth):
    """App authentication whose JWTs the server signs with its GitHub app key."""

    def __init__(self, app_id: int, connection: str) -> None:
        super().__init__(app_id, sign_func=_signed_elsewhere)
        self._connection = connection

    def create_jwt(self, expiration: int | None = None) -> str:
        now = int(time.time())
        claims = {
            "iat": now + Consts.DEFAULT_JWT_ISSUED_AT,
            "exp": now + (expiration or Consts.DEFAULT_JWT_EXPIRY),
            "iss": int(self.app_id),
        }
        return encode_jwt(claims, self._connection, Consts.DEFAULT_JWT_ALGORITHM)
