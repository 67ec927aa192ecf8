"""A connection's status from its vars, as AutoKitteh computes it per integration, with
warnings of ours where a setting would silently drop or accept deliveries (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARNING, ERROR, INIT_REQUIRED = "CODE_OK", "CODE_WARNING", "CODE_ERROR", "CODE_INIT_REQUIRED"
_APP_MODES = ("oauth", "oauthDefault", "oauthPrivate")


@dataclass(frozen=True)
class Status:
    code: str
    message: str


def status(integration: str, variables: dict[str, str], server_secret: bool = False) -> Status:
    """``variables``: the connection's vars in plaintext; ``server_secret``: the server has
    the integration's own secret (GITHUB_WEBHOOK_SECRET, SLACK_SIGNING_SECRET)."""
    if integration == "github":
        return _github(variables, server_secret)
    if integration == "slack":
        return _slack(variables, server_secret)
    return Status(OK, "OK")


def _github(v: dict[str, str], server_secret: bool) -> Status:
    mode = v.get("auth_type", "")
    if not mode:
        return Status(INIT_REQUIRED, "Init required")
    if mode in _APP_MODES:
        if not v.get("install_id"):
            return Status(INIT_REQUIRED, "Init required")
        if not (v.get("client_secret") or server_secret):
            return Status(
                WARNING,
                "Using GitHub app, but no webhook secret (client_secret, or the server's "
                "GITHUB_WEBHOOK_SECRET): every delivery is refused",
            )
        route = f"install_key__{v.get('app_id', '')}__{v['install_id']}"
        if route not in v:
            return Status(
                WARNING,
                f"Using GitHub app, but no {route} var (it routes the installation's "
                "deliveries): no delivery can reach it (run ak connection init --mode app)",
            )
        return Status(OK, "Using GitHub app")
    if mode == "pat":
        if not v.get("pat"):
            return Status(INIT_REQUIRED, "Init required")
        if "pat_secret" not in v:
            return Status(
                WARNING,
                "Using PAT + webhook, but no pat_secret: every delivery is refused (set the "
                "webhook's secret)",
            )
        if not v["pat_secret"]:
            return Status(
                WARNING,
                "Using PAT + webhook without a webhook secret: anyone who knows the webhook "
                "URL can send events (set pat_secret)",
            )
        return Status(OK, "Using PAT + webhook")
    return Status(ERROR, "Bad auth type")


def _slack(v: dict[str, str], server_secret: bool) -> Status:
    mode = v.get("auth_type", "")
    if not mode:
        return Status(INIT_REQUIRED, "Init required")
    if mode == "socketMode":
        return Status(
            WARNING, "Using Socket Mode, which this server does not support: no events arrive"
        )
    if mode not in _APP_MODES:
        return Status(ERROR, "Bad auth type")
    if not v.get("oauth_access_token"):
        return Status(INIT_REQUIRED, "Init required")
    if not v.get("install_ids"):
        return Status(WARNING, "Using OAuth 2.0, but no install_ids: no event can reach it")
    if not (v.get("private_signing_secret") or server_secret):
        return Status(
            WARNING,
            "Using OAuth 2.0, but no signing secret (private_signing_secret, or the "
            "server's SLACK_SIGNING_SECRET): every request is refused",
        )
    return Status(OK, "Using OAuth 2.0")
