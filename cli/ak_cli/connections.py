"""``ak connection ...`` and ``ak integration list``: the connections of projects' manifests
and the integrations they may name."""

from __future__ import annotations

import getpass
import secrets
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from akcore.errors import AKError, InvalidArgument, NotFound

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
                Need("pat_key", False, "the webhook URL's key (kept, or made when none)", True),
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
    all the vars are set at once, or none when one is refused. Prints the URL to give the
    provider and the connection's status."""
    conn = client.call("connection.get", connection=connection)
    modes = MODES.get(conn["integration"], {})
    chosen = mode or next(iter(modes), "")
    if chosen not in modes:
        known = ", ".join(modes) or "none"
        raise InvalidArgument(f'mode "{chosen}" of {conn["integration"]}: use one of {known}')
    auth_type, needs = modes[chosen]
    flags = _pairs(values or [], "--var")
    given = dict(flags)
    if not sys.stdin.isatty():
        given = {**_pairs(sys.stdin.read().splitlines(), "standard input"), **flags}
    ref = conn["connection_id"]
    kept_key = ""
    if chosen == "pat" and "pat_key" not in given:  # the webhook URL stays where it is
        kept_key = _current(ref, "pat_key")
    for need in needs:
        if need.name in given or need.optional or not sys.stdin.isatty():
            continue
        ask = getpass.getpass if need.secret else input
        given[need.name] = ask(f"{need.name} ({need.what}): ")
    chosen_vars: dict[bool, dict[str, str]] = {False: {}, True: {}}
    for need in needs:
        value = given.get(need.name)
        if value is None and need.optional:
            continue
        if value is None:
            raise InvalidArgument(
                f"{need.name} ({need.what}) is needed: give --var {need.name}=... or a "
                f"{need.name}=... line on standard input"
            )
        if not value and not _may_be_empty(need.name, flags):
            raise InvalidArgument(_empty_message(need))
        chosen_vars[need.secret][need.name] = value
    plain, secret = chosen_vars[False], chosen_vars[True]
    if chosen == "pat" and not plain.get("pat_key"):
        plain["pat_key"] = kept_key or secrets.token_hex(13)
    if auth_type:
        plain["auth_type"] = auth_type
    if chosen == "app":
        for name in ("app_id", "install_id"):
            if not plain[name].isdigit():
                raise InvalidArgument(f"{name} must be GitHub's ID (a number): {plain[name]!r}")
        plain[f"install_key__{plain['app_id']}__{plain['install_id']}"] = "1"
    # Routing vars an earlier init left that this one does not set (another installation's,
    # the other mode's) would keep routing deliveries here: they go.
    stale: list[str] = []
    if chosen in ("app", "pat"):
        stale = [
            n
            for n in _names(ref)
            if (n.startswith("install_key__") or n == "pat_key") and n not in plain
        ]
    client.call("connection.init", connection=ref, values=plain, secrets=secret, delete=stale)
    for name in stale:
        typer.echo(f"deleted {name}", err=True)
    for name in (n.name for n in needs):
        if name in secret:
            typer.echo(f"set {name} (secret)", err=True)
        elif name in plain and not (name == "pat_key" and plain[name] == kept_key):
            typer.echo(f"set {name}", err=True)
    if kept_key:
        typer.echo("kept pat_key (give --var pat_key= to make a new one)", err=True)
    url = client.service_url()
    if chosen == "pat":
        typer.echo(f"webhook URL: {url}/github/webhook/{plain['pat_key']}")
    elif chosen == "app":
        typer.echo(f"webhook URL: {url}/github/webhook")
    elif chosen == "oauth":
        for kind in ("event", "command", "interaction"):
            typer.echo(f"{kind} URL: {url}/slack/{kind}")
    res = client.call("connection.test", connection=ref)
    typer.echo(f'status: code:{res["code"]} message:"{res["message"]}"')


# Vars an empty value means something for: no webhook secret (only when given on purpose,
# as --var pat_secret=: every delivery is then accepted unsigned), a new webhook key.
_EMPTY_ON_PURPOSE = {"pat_secret"}
_EMPTY_MEANS_NEW = {"pat_key"}


def _may_be_empty(name: str, flags: dict[str, str]) -> bool:
    return name in _EMPTY_MEANS_NEW or (name in _EMPTY_ON_PURPOSE and flags.get(name) == "")


def _empty_message(need: Need) -> str:
    if need.name in _EMPTY_ON_PURPOSE:
        return (
            f"{need.name} ({need.what}) is empty: give the secret, or --var {need.name}= "
            "to accept unsigned deliveries (anyone who knows the webhook URL can then send "
            "events)"
        )
    return f"{need.name} ({need.what}) is empty: give a value"


def _names(connection: str) -> list[str]:
    """The names of the connection's vars."""
    return [str(v["name"]) for v in client.call("var.get", connection=connection)]


def _current(connection: str, name: str) -> str:
    """The value of the connection's plain var ``name``; "" when it has none."""
    try:
        (found,) = client.call("var.get", connection=connection, names=[name])
    except NotFound:
        return ""
    return "" if found.get("secret") else str(found.get("value") or "")


def _pairs(lines: list[str], where: str) -> dict[str, str]:
    out = {}
    for line in lines:
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidArgument(f"{where}: expected NAME=VALUE, got a line without '='")
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
