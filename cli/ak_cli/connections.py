"""``ak connection ...`` and ``ak integration list``: the connections of projects' manifests
and the integrations they may name."""

from __future__ import annotations

import getpass
import secrets
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from akcore.errors import AKError, NotFound

from . import client
from .options import FailOpt, JsonOpt, silent_unless
from .render import emit, emit_list

connections = typer.Typer(
    help="Create, initialize, list, show, test and delete connections.", no_args_is_help=True
)
integrations = typer.Typer(help="The integrations connections can use.", no_args_is_help=True)

ConnArg = Annotated[str, typer.Argument(help="Connection ID (con_...) or PROJECT/NAME.")]
CONNECTION_KEYS = [
    "connection_id",
    "integration_id",
    "integration",
    "project_id",
    "project",
    "name",
    "status",
    "links",
]


@connections.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Connection name: letters, digits and _.")],
    integration: Annotated[
        str,
        typer.Option("--integration", "-i", help="Integration name or ID: http, github or slack."),
    ] = "",
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")] = "",
    org: Annotated[
        str, typer.Option("--org", "-o", help="Not supported: connections belong to projects.")
    ] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the ID.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a connection in a project; prints its ID. Set its vars with `ak var set -c`."""
    if not integration:
        raise AKError('required flag(s) "integration" not set')
    if org and not project:
        raise AKError("org-level connections are not supported: give --project")
    if not project:
        raise AKError("at least one of the flags in the group [project org] is required")
    res = client.call("connection.create", project=project, name=name, integration=integration)
    if as_json:
        emit(res, True)
    else:
        typer.echo(f"connection_id: {res['connection_id']}")


@dataclass(frozen=True)
class Need:
    """A var a connection mode needs: its name, whether it is a secret, what it is."""

    name: str
    secret: bool
    what: str
    optional: bool = False


# What each integration's modes need (auth_type: the value AutoKitteh's UI writes).
MODES: dict[str, dict[str, tuple[str, tuple[Need, ...]]]] = {
    "github": {
        "pat": (
            "pat",
            (
                Need("pat", True, "the personal access token"),
                Need("pat_secret", True, "the webhook's secret, as set in GitHub"),
                Need("pat_key", False, "the webhook URL's key (one is made when left out)", True),
            ),
        ),
        "app": (
            "oauthPrivate",
            (
                Need("app_id", False, "the GitHub app's ID"),
                Need("install_id", False, "the app installation's ID"),
                Need("client_secret", True, "the app's webhook secret"),
                Need("private_key", True, "the app's private key (PEM)", True),
            ),
        ),
    },
    "slack": {
        "oauth": (
            "oauthPrivate",
            (
                Need("install_ids", False, "<app id>/<enterprise id>/<team id>"),
                Need("oauth_access_token", True, "the bot token (xoxb-...)"),
                Need("private_signing_secret", True, "the app's signing secret"),
            ),
        ),
    },
    "http": {
        "bearer": ("", (Need("bearer_token", True, "the bearer token"),)),
        "basic": (
            "",
            (
                Need("basic_username", False, "the user name"),
                Need("basic_password", True, "the password"),
            ),
        ),
    },
}


@connections.command("init")
def init(
    connection: ConnArg,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            "-m",
            help="github: pat or app; slack: oauth; http: bearer or basic (the first by default).",
        ),
    ] = "",
    values: Annotated[
        list[str] | None,
        typer.Option(
            "--var",
            "-v",
            help="NAME=VALUE of a var the mode needs (secrets: better on standard input).",
        ),
    ] = None,
) -> None:
    """Set the vars a connection's mode needs: from --var, then NAME=VALUE lines on standard
    input, then a prompt that does not echo. Secrets are stored encrypted and never printed;
    prints the URL to give the provider and the connection's status."""
    conn = client.call("connection.get", connection=connection)
    modes = MODES.get(conn["integration"], {})
    chosen = mode or next(iter(modes), "")
    if chosen not in modes:
        known = ", ".join(modes) or "none"
        raise AKError(f'mode "{chosen}" of {conn["integration"]}: use one of {known}')
    auth_type, needs = modes[chosen]
    given = _pairs(values or [], "--var")
    if not sys.stdin.isatty():
        given = {**_pairs(sys.stdin.read().splitlines(), "standard input"), **given}
    if not given.get("pat_key") and any(n.name == "pat_key" for n in needs):
        given["pat_key"] = secrets.token_hex(13)
    ref = conn["connection_id"]
    for need in needs:
        value = given.get(need.name)
        if value is None and sys.stdin.isatty() and not need.optional:
            ask = getpass.getpass if need.secret else input
            value = ask(f"{need.name} ({need.what}): ")
        if value is None:
            if need.optional:
                continue
            raise AKError(f"{need.name} ({need.what}) is needed: give --var {need.name}=... or a "
                          f"{need.name}=... line on standard input")  # fmt: skip
        client.call("var.set", connection=ref, name=need.name, value=value, secret=need.secret)
        typer.echo(f"set {need.name}{' (secret)' if need.secret else ''}", err=True)
    if auth_type:
        client.call("var.set", connection=ref, name="auth_type", value=auth_type, secret=False)
    if chosen == "app":
        key = f"install_key__{given['app_id']}__{given['install_id']}"
        client.call("var.set", connection=ref, name=key, value="1", secret=False)
    url = client.service_url()
    if chosen == "pat":
        typer.echo(f"webhook URL: {url}/github/webhook/{given['pat_key']}")
    elif chosen == "app":
        typer.echo(f"webhook URL: {url}/github/webhook")
    elif chosen == "oauth":
        for kind in ("event", "command", "interaction"):
            typer.echo(f"{kind} URL: {url}/slack/{kind}")
    res = client.call("connection.test", connection=ref)
    typer.echo(f'status: code:{res["code"]} message:"{res["message"]}"')


def _pairs(lines: list[str], where: str) -> dict[str, str]:
    out = {}
    for line in lines:
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise AKError(f"{where}: expected NAME=VALUE, got a line without '='")
        out[name.strip()] = value
    return out


@connections.command("list")
def list_(
    integration: Annotated[
        str, typer.Option("--integration", "-i", help="Only this integration (name or ID).")
    ] = "",
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")] = "",
    as_json: JsonOpt = False,
    fail: FailOpt = False,
) -> None:
    """Connections, one per line (every project's unless --project)."""
    try:
        found = client.call("connection.list", project=project, integration=integration)
        if not found:
            raise NotFound("connections: not_found")
    except NotFound as e:
        silent_unless(fail, e)
        return
    emit_list(found, as_json, CONNECTION_KEYS)


@connections.command("get")
def get(connection: ConnArg, as_json: JsonOpt = False, fail: FailOpt = False) -> None:
    """One connection."""
    try:
        found = client.call("connection.get", connection=connection)
    except NotFound as e:
        silent_unless(fail, e)
        return
    emit(found, as_json, CONNECTION_KEYS, label="connection")


@connections.command("test")
def test(connection: ConnArg, as_json: JsonOpt = False) -> None:
    """A connection's status from its vars, by AutoKitteh's rules for its integration (the
    service itself is not called)."""
    res = client.call("connection.test", connection=connection)
    if as_json:
        emit({"status": res}, True)
    else:
        typer.echo(f'status: code:{res["code"]} message:"{res["message"]}"')


@connections.command("delete")
def delete(connection: ConnArg) -> None:
    """Delete a connection and its vars (refused while a trigger uses it)."""
    client.call("connection.delete", connection=connection)


@integrations.command("list")
def integration_list(as_json: JsonOpt = False) -> None:
    """The integrations this server knows, one per line."""
    emit_list(client.call("integration.list"), as_json)
