"""``ak auth ...``: API tokens."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from . import client, credentials
from .render import emit, emit_list

app = typer.Typer(help="API tokens.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", "-j", help="JSON output.")]


@app.command("create-token")
def create_token(
    name: Annotated[str, typer.Option("--name", "-n", help="A label for the token.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API token and print it (it is shown only this once)."""
    token = client.call("auth.create_token", name=name)
    typer.echo(json.dumps(token) if as_json else token)


@app.command("set-token")
def set_token(token: Annotated[str, typer.Argument(help="The token; empty deletes it.")]) -> None:
    """Store the token the CLI sends to the server (AK_TOKEN overrides it)."""
    credentials.save(credentials.host_key(client.service_url()), token.strip())


@app.command("list-tokens")
def list_tokens(as_json: JsonOpt = False) -> None:
    """List the API tokens: id, name, who made it and when (never the tokens themselves)."""
    emit_list(
        client.call("auth.list_tokens"),
        as_json,
        ["token_id", "name", "created_by", "created_at"],
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
