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
from . import builds, connections, manifests, projects, sessions, settings, views
from . import deploy as deploy_mod
from . import up as up_mod
from . import vars as vars_mod
from . import version as version_mod

app = typer.Typer(
    help="autokitteh: durable Python workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show and change the configuration.", no_args_is_help=True)
sdk_app = typer.Typer(help="The Python SDK for local development.", no_args_is_help=True)

# Each noun with AutoKitteh's aliases (hidden, so `ak --help` lists each noun once).
NOUNS: tuple[tuple[typer.Typer, str, tuple[str, ...]], ...] = (
    (auth_mod.app, "auth", ()),
    (builds.app, "build", ("bld", "builds")),
    (config_app, "config", ("cfg",)),
    (connections.connections, "connection", ("con", "connections")),
    (views.deployments, "deployment", ("dep", "deployments")),
    (vars_mod.envs, "env", ()),
    (views.events, "event", ("evt", "events")),
    (connections.integrations, "integration", ("int", "integrations")),
    (manifests.app, "manifest", ("man",)),
    (projects.app, "project", ("prj", "projects")),
    (sdk_app, "sdk", ()),
    (sessions.app, "session", ("ses", "sessions")),
    (views.triggers, "trigger", ("trg", "triggers")),
    (vars_mod.app, "var", ("vars",)),
)
for sub, noun, aliases in NOUNS:
    app.add_typer(sub, name=noun)
    for alias in aliases:
        app.add_typer(sub, name=alias, hidden=True)


@app.callback()
def global_options(
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            "-C",
            metavar="KEY=VALUE",
            help="key=value: a setting for this command only (repeatable).",
        ),
    ] = None,
    token: Annotated[
        str, typer.Option("--token", help="The API token to call with (over AK_TOKEN).")
    ] = "",
) -> None:
    """autokitteh: durable Python workflows."""
    settings.override(overrides or [])
    if token:
        os.environ[config.ENV_TOKEN] = token


@app.command()
def up(
    mode: Annotated[
        str, typer.Option("--mode", "-m", help="dev (embedded NATS, SQLite) or default.")
    ] = "dev",
    http_addr: Annotated[
        str,
        typer.Option("--http-addr", envvar=config.ENV_HTTP_ADDR, help="host:port to listen on."),
    ] = "",
    nats_url: Annotated[
        str,
        typer.Option(
            "--nats-url",
            envvar=config.ENV_NATS_URL,
            help="Use this NATS (or a comma-separated list of one cluster's servers).",
        ),
    ] = "",
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar=config.ENV_DB_DSN,
            help="SQLAlchemy URL of the store's database, e.g. "
            "postgresql+psycopg://user:pass@host:5432/db (default: SQLite in the data home).",
        ),
    ] = "",
    runners: Annotated[int, typer.Option("--runners", help="How many runner processes.")] = 1,
    dispatchers: Annotated[
        int, typer.Option("--dispatchers", help="How many dispatcher processes.")
    ] = 1,
    ingresses: Annotated[int, typer.Option("--ingresses", help="How many ingress processes.")] = 1,
    stores: Annotated[int, typer.Option("--stores", help="How many store processes.")] = 1,
) -> None:
    """Start the whole stack (NATS, store, dispatcher, runner, ingress) until Ctrl-C."""
    counts = {"runner": runners, "dispatcher": dispatchers, "ingress": ingresses, "store": stores}
    up_mod.up(mode, http_addr or None, nats_url or None, counts, db or None)


@app.command()
def deploy(
    manifest: Annotated[
        str | None,
        typer.Option("--manifest", "-m", help="The manifest (default ./autokitteh.yaml)."),
    ] = None,
    file: Annotated[
        list[str] | None,
        typer.Option("--file", "-f", metavar="FILE", help="A file to upload (repeatable)."),
    ] = None,
    dir: Annotated[
        list[str] | None,
        typer.Option("--dir", "-d", metavar="DIR", help="A directory to upload (repeatable)."),
    ] = None,
    project_name: Annotated[
        str, typer.Option("--project-name", "-n", help="Use this name instead of the manifest's.")
    ] = "",
    skip_existing_secrets: Annotated[
        bool,
        typer.Option("--skip-existing-secrets", help="Keep secret vars that already have a value."),
    ] = False,
) -> None:
    """Apply a manifest, upload the code, then build, deploy and activate it."""
    deploy_mod.deploy(manifest, file or [], dir or [], project_name, skip_existing_secrets)


@config_app.command()
def where(
    cfg: Annotated[bool, typer.Option("--cfg", "-c", help="Print only the config home.")] = False,
    data: Annotated[
        bool, typer.Option("--data", "-d", metavar="KEY=VALUE", help="Print only the data home.")
    ] = False,
) -> None:
    """Print the config and data home directories and where the Python environments are."""
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
        bool, typer.Option("--env", help="Print a new password for each service instead.")
    ] = False,
) -> None:
    """Print the NATS users of the services, for your own nats-server's configuration.

    Each user may use only its service's subjects; nats-server reads the passwords from its
    environment (AK_NATS_<SERVICE>_PASSWORD). With --env: lines for compose's .env file."""
    typer.echo(natsauth.env_lines() if env else natsauth.operator_block(), nl=False)


@sdk_app.command("wheel")
def sdk_wheel(
    output: Annotated[str, typer.Option("--output", "-o", help="Directory to write to.")] = ".",
) -> None:
    """Write the autokitteh SDK as a wheel, to pip install into your own venv or IDE."""
    typer.echo(str(sdkdist.build_wheel(Path(output))))


@config_app.command("list")
def config_list(
    env_vars: Annotated[
        bool,
        typer.Option("--env-vars", "--env_vars", "-e", help="Print AK_ environment names instead."),
    ] = False,
) -> None:
    """Every configuration key, one per line."""
    for name in settings.env_names() if env_vars else settings.known_keys():
        typer.echo(name)


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="A key of `ak config list`, e.g. http.service_url.")],
    value: Annotated[str, typer.Argument(help="Its value.")],
) -> None:
    """Store a setting in <config home>/config.yaml (the environment still wins over it)."""
    settings.set_key(key, value)


@app.command("version")
def version(
    full: Annotated[
        bool, typer.Option("--full", "-f", help="Add the Python it runs on and its path.")
    ] = False,
    build: Annotated[
        bool, typer.Option("--build", "-b", help="Add the installed packages' versions.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", "-j", help="Print it as JSON.")] = False,
) -> None:
    """Print the version of this autokitteh."""
    typer.echo(version_mod.describe(full, build, as_json))


@app.command("completion")
def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh, fish or powershell.")],
) -> None:
    """Print a shell completion script: e.g. `source <(ak completion bash)`."""
    typer.echo(version_mod.completion_script(shell))


for _alias in ("ver", "v"):
    app.command(_alias, hidden=True)(version)


def main() -> None:
    try:
        settings.load_into_environment()
        version_mod.enable_completion()
        app()
    except AKError as e:
        typer.echo(f"Error: {e.message}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
