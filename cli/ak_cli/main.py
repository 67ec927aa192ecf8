"""The ``ak`` entry point: parse arguments and call the command; nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from akcore import config, natsauth, sdkdist
from akcore.errors import AKError

from . import auth as auth_mod
from . import deploy as deploy_mod
from . import sessions, views
from . import up as up_mod
from . import vars as vars_mod

app = typer.Typer(
    help="autokitteh: durable Python workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(sessions.app, name="session")
app.add_typer(sessions.app, name="ses", hidden=True)
app.add_typer(views.projects, name="project")
app.add_typer(views.triggers, name="trigger")
app.add_typer(views.deployments, name="deployment")
app.add_typer(views.events, name="event")
app.add_typer(vars_mod.app, name="var")
app.add_typer(vars_mod.envs, name="env")
app.add_typer(auth_mod.app, name="auth")
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
sdk_app = typer.Typer(help="The Python SDK for local development.", no_args_is_help=True)
app.add_typer(sdk_app, name="sdk")


@app.command()
def up(
    mode: Annotated[str, typer.Option("--mode", "-m", help="dev or default")] = "dev",
    http_addr: Annotated[
        str, typer.Option("--http-addr", envvar=config.ENV_HTTP_ADDR, help="host:port to listen on")
    ] = "",
    nats_url: Annotated[
        str,
        typer.Option(
            "--nats-url",
            envvar=config.ENV_NATS_URL,
            help="use this NATS (or a comma-separated list of one cluster's servers)",
        ),
    ] = "",
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar=config.ENV_DB_DSN,
            help="SQLAlchemy URL of the store's database, e.g. "
            "postgresql+psycopg://user:pass@host:5432/db (default: SQLite in the data home)",
        ),
    ] = "",
    runners: Annotated[int, typer.Option("--runners", help="runner processes")] = 1,
    dispatchers: Annotated[int, typer.Option("--dispatchers", help="dispatchers")] = 1,
    ingresses: Annotated[int, typer.Option("--ingresses", help="ingress processes")] = 1,
    stores: Annotated[int, typer.Option("--stores", help="store processes")] = 1,
) -> None:
    """Start the whole stack (NATS, store, dispatcher, runner, ingress) until Ctrl-C."""
    counts = {"runner": runners, "dispatcher": dispatchers, "ingress": ingresses, "store": stores}
    up_mod.up(mode, http_addr or None, nats_url or None, counts, db or None)


@app.command()
def deploy(
    manifest: Annotated[str | None, typer.Option("--manifest", "-m")] = None,
    file: Annotated[list[str] | None, typer.Option("--file", "-f")] = None,
    dir: Annotated[list[str] | None, typer.Option("--dir", "-d")] = None,
    project_name: Annotated[str, typer.Option("--project-name", "-n")] = "",
    skip_existing_secrets: Annotated[bool, typer.Option("--skip-existing-secrets")] = False,
) -> None:
    """Apply a manifest, upload the code, then build, deploy and activate it."""
    deploy_mod.deploy(manifest, file or [], dir or [], project_name, skip_existing_secrets)


@config_app.command()
def where(
    cfg: Annotated[bool, typer.Option("--cfg", "-c")] = False,
    data: Annotated[bool, typer.Option("--data", "-d")] = False,
) -> None:
    """Print the config and data home directories."""
    if cfg or data:
        if cfg:
            typer.echo(str(config.config_home()))
        if data:
            typer.echo(str(config.data_home()))
        return
    typer.echo(f"Config home directory: {config.config_home()}")
    typer.echo(f"Data home directory:   {config.data_home()}")
    worker_python = os.environ.get(config.ENV_WORKER_PYTHON)
    if worker_python:
        typer.echo(f"Worker Python:         {worker_python} (from {config.ENV_WORKER_PYTHON})")
    else:
        typer.echo(f"Python venv:           {config.default_venv()}")
        typer.echo(f"Python packages list:  {config.python_requirements()}")
        typer.echo(f"Project venvs:         {config.project_venvs()}")
    typer.echo("")
    typer.echo("Override environment variable names:")
    typer.echo("XDG_CONFIG_HOME")
    typer.echo("XDG_DATA_HOME")
    typer.echo(config.ENV_WORKER_PYTHON)


@app.command("nats-config")
def nats_config(
    env: Annotated[
        bool, typer.Option("--env", help="print a new password for each service instead")
    ] = False,
) -> None:
    """Print the NATS users of the services, for your own nats-server's configuration.

    Each user may use only its service's subjects; nats-server reads the passwords from its
    environment (AK_NATS_<SERVICE>_PASSWORD). With --env: lines for compose's .env file."""
    typer.echo(natsauth.env_lines() if env else natsauth.operator_block(), nl=False)


@sdk_app.command("wheel")
def sdk_wheel(
    output: Annotated[str, typer.Option("--output", "-o", help="directory to write to")] = ".",
) -> None:
    """Write the autokitteh SDK as a wheel, to pip install into your own venv or IDE."""
    typer.echo(str(sdkdist.build_wheel(Path(output))))


def main() -> None:
    try:
        app()
    except AKError as e:
        typer.echo(f"Error: {e.message}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
