"""The ``ak`` entry point: parse arguments and call the command; nothing else lives here.

Start-up is most of a command's wall time, so this module imports only typer and what the
root's options need, and ``make_app`` builds only what the command line names: the noun's
module is imported, and its command alone turned into click's form (``ak --help``,
completion and typos get everything: building all of it takes ~0.1 s). The commands import
what they call (CEL, the manifest, NATS auth, the SDK wheel builder) in their bodies, and
``coercion`` keeps typer from importing pydantic. tests/unit/cli/test_import_cost.py checks
that the client commands stay this light.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import typer.main
from akcore import config
from akcore.errors import AKError

from . import coercion, settings
from . import version as version_mod

SETTINGS = {
    "help": "autokitteh: durable Python workflows.",
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "add_completion": False,
    "rich_markup_mode": None,
}
config_app = typer.Typer(help="Show and change the configuration.", no_args_is_help=True)
sdk_app = typer.Typer(help="The Python SDK for local development.", no_args_is_help=True)

# Each noun with AutoKitteh's aliases (hidden, so `ak --help` lists each noun once), and
# where its typer lives: "module:attribute" in this package (no module: this one).
NOUNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("auth:app", "auth", ()),
    ("builds:app", "build", ("bld", "builds")),
    (":config_app", "config", ("cfg",)),
    ("connections:connections", "connection", ("con", "connections")),
    ("views:deployments", "deployment", ("dep", "deployments")),
    ("vars:envs", "env", ()),
    ("views:events", "event", ("evt", "events")),
    ("connections:integrations", "integration", ("int", "integrations")),
    ("manifests:app", "manifest", ("man",)),
    ("projects:app", "project", ("prj", "projects")),
    (":sdk_app", "sdk", ()),
    ("sessions:app", "session", ("ses", "sessions")),
    ("views:triggers", "trigger", ("trg", "triggers")),
    ("vars:app", "var", ("vars",)),
)
# The root's options that take a value: the command is the first word after them.
_VALUE_OPTIONS = ("--config", "-C", "--token")
_VALUE_OPTION_FORMS = ("--config=", "--token=", "-C")


def _typer_of(where: str) -> typer.Typer:
    module, _, attr = where.partition(":")
    owner = importlib.import_module(f".{module}", __package__) if module else sys.modules[__name__]
    sub = getattr(owner, attr)
    assert isinstance(sub, typer.Typer)
    return sub


def command_words(args: list[str]) -> list[str]:
    """A command line from its first word after the root's options on (``session list``
    in ``ak -C k=v session list``); [] when there is none, or when an option comes first
    that is not the root's own (``--help``), or when a shell asks for completions."""
    if os.environ.get("_AK_COMPLETE"):
        return []
    words = iter(enumerate(args))
    for i, word in words:
        if word in _VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return args[i:]
        elif not word.startswith(_VALUE_OPTION_FORMS):
            return []
    return []


def _only(sub: typer.Typer, name: str) -> typer.Typer:
    """``sub`` with its command ``name`` alone, when it has one by that name."""
    found = [
        c
        for c in sub.registered_commands
        if (c.name or typer.main.get_command_name(getattr(c.callback, "__name__", ""))) == name
    ]
    if not found:
        return sub
    only = copy.copy(sub)
    only.registered_commands = found
    return only


def make_app(args: list[str] | None = None) -> typer.Typer:
    """The ``ak`` typer for a command line: when it names a root command, or a noun (or
    an alias) and one of its commands, with that alone, else with everything there is
    under what it names (help, completion, a typo's message with its suggestions).

    Click needs no more to parse and run the command line, and the help and errors it
    prints are the same: ``ak session list --help`` shows no sibling. Building a command's
    click form takes about a millisecond (typer evaluates its annotations twice); every
    noun, with the aliases that build it again, takes ~0.1 s.
    """
    root = typer.Typer(**SETTINGS)  # type: ignore[arg-type]
    root.callback()(global_options)
    words = command_words(args) if args is not None else []
    word = words[0] if words else None
    nouns = [n for n in NOUNS if word in (n[1], *n[2])]
    if word in ROOT_COMMANDS:
        root.command(word, hidden=word in HIDDEN_ROOT_COMMANDS)(ROOT_COMMANDS[word])
    elif word and nouns:
        sub = _typer_of(nouns[0][0])
        if len(words) > 1:
            sub = _only(sub, words[1])
        root.add_typer(sub, name=word, hidden=word != nouns[0][1])
    else:
        for name, func in ROOT_COMMANDS.items():
            root.command(name, hidden=name in HIDDEN_ROOT_COMMANDS)(func)
        for where, noun, aliases in NOUNS:
            sub = _typer_of(where)
            root.add_typer(sub, name=noun)
            for alias in aliases:
                root.add_typer(sub, name=alias, hidden=True)
    return root


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
    from . import up as up_mod

    counts = {"runner": runners, "dispatcher": dispatchers, "ingress": ingresses, "store": stores}
    up_mod.up(mode, http_addr or None, nats_url or None, counts, db or None)


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
    from . import deploy as deploy_mod

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


def nats_config(
    env: Annotated[
        bool, typer.Option("--env", help="Print a new password for each service instead.")
    ] = False,
) -> None:
    """Print the NATS users of the services, for your own nats-server's configuration.

    Each user may use only its service's subjects; nats-server reads the passwords from its
    environment (AK_NATS_<SERVICE>_PASSWORD). With --env: lines for compose's .env file."""
    from akcore import natsauth

    typer.echo(natsauth.env_lines() if env else natsauth.operator_block(), nl=False)


@sdk_app.command("wheel")
def sdk_wheel(
    output: Annotated[str, typer.Option("--output", "-o", help="Directory to write to.")] = ".",
) -> None:
    """Write the autokitteh SDK as a wheel, to pip install into your own venv or IDE."""
    from akcore import sdkdist

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


def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh, fish or powershell.")],
) -> None:
    """Print a shell completion script: e.g. `source <(ak completion bash)`."""
    typer.echo(version_mod.completion_script(shell))


# In the order `ak --help` lists them.
ROOT_COMMANDS: dict[str, Callable[..., None]] = {
    "up": up,
    "deploy": deploy,
    "nats-config": nats_config,
    "version": version,
    "completion": completion,
    "ver": version,
    "v": version,
}
HIDDEN_ROOT_COMMANDS = frozenset({"ver", "v"})


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole ``ak`` typer with every noun (for tests and tools)."""
    if name == "app":
        return make_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    try:
        settings.load_into_environment()
        coercion.install()
        version_mod.enable_completion()
        make_app(sys.argv[1:])()
    except AKError as e:
        from .render import terminal_safe  # (only on an error: commands import it lazily)

        typer.echo(f"Error: {terminal_safe(e.message)}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
