"""``ak auth ...``: API tokens."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from akcore.errors import InvalidArgument

from . import client, credentials
from .render import emit, emit_list

app = typer.Typer(help="API tokens.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", "-j", help="JSON output.")]


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> int:
    """A duration as ``--expires`` takes it: a number and a unit (``90m``, ``12h``, ``30d``)."""
    text = text.strip().lower()
    unit = UNITS.get(text[-1:]) if text[-1:].isalpha() else 1
    number = text[:-1] if text[-1:].isalpha() else text
    if unit is None or not (number.isascii() and number.isdigit()) or int(number) == 0:
        raise InvalidArgument(
            f"--expires: {text!r} is not a duration: give a whole number and a unit, s, m, h "
            "or d (90m, 12h, 30d)"
        )
    return int(number) * unit


@app.command("create-token")
def create_token(
    name: Annotated[str, typer.Option("--name", "-n", help="A label for the token.")] = "",
    expires: Annotated[
        str,
        typer.Option(
            "--expires",
            help="How long the token is taken (90m, 12h, 30d); by default as long as the "
            "calling token, for ever when that one never expires.",
        ),
    ] = "",
    projects: Annotated[
        list[str] | None,
        typer.Option(
            "--project",
            "-p",
            help="A project (name or id) the token may act on, and none else; repeat it for "
            "more. By default those of the calling token (every project when it is not "
            "limited).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token and print it (it is shown only this once)."""
    args: dict[str, object] = {}  # (only what is asked: an earlier server knows neither)
    if expires:
        args["expires_in"] = _seconds(expires)
    if projects:
        args["projects"] = projects
    token = client.call("auth.create_token", name=name, **args)
    typer.echo(json.dumps(token) if as_json else token)


@app.command("set-token")
def set_token(token: Annotated[str, typer.Argument(help="The token; empty deletes it.")]) -> None:
    """Store the token the CLI sends to the server (AK_TOKEN overrides it)."""
    credentials.save(credentials.host_key(client.service_url()), token.strip())


@app.command("list-tokens")
def list_tokens(as_json: JsonOpt = False) -> None:
    """List the API tokens: id, name, who made it, when, when it expires and the projects
    it is limited to (never the tokens themselves)."""
    emit_list(
        client.call("auth.list_tokens"),
        as_json,
        ["token_id", "name", "created_by", "created_at", "expires_at", "projects"],
    )


@app.command("revoke-token")
def revoke_token(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_...): ak auth list-tokens.")],
) -> None:
    """Revoke an API token: the server no longer takes it, at once."""
    client.call("auth.revoke_token", token_id=token_id)


@app.command()
def whoami(as_json: JsonOpt = False) -> None:
    """The token this CLI calls with."""
    emit(client.call("auth.whoami"), as_json, label="user")
