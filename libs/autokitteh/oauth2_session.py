"""A requests session that sends a connection's OAuth token and refreshes it once on a 401
(``requests-toolbelt ~= 1.0``)."""

from __future__ import annotations

from typing import Any

from requests_toolbelt.sessions import BaseUrlSession

from ._helpers import var
from .connections import refresh_oauth


class OAuth2Session(BaseUrlSession):  # type: ignore[misc]
    def __init__(self, integration: str, connection: str, base_url: str = "") -> None:
        super().__init__(base_url=base_url)
        self.integration, self.connection = integration, connection
        self.headers["Authorization"] = f"Bearer {var(connection, 'oauth_access_token')}"

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        resp = super().request(method, url, *args, **kwargs)
        if resp.status_code == 401 and var(self.connection, "oauth_refresh_token"):
            token, _ = refresh_oauth(self.integration, self.connection)
            self.headers["Authorization"] = f"Bearer {token}"
            resp = super().request(method, url, *args, **kwargs)
        return resp
