"""``ak manifest validate|plan|apply``: a manifest checked, planned, or applied without a build."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from akcore.errors import AKError, NotFound

from . import client
from . import deploy as deploy_mod
from .options import QuietOpt

app = typer.Typer(help="Validate, plan and apply project manifests.", no_args_is_help=True)

FileArg = Annotated[
    str, typer.Argument(help="The manifest file (autokitteh.yaml); standard input when omitted.")
]
NameOpt = Annotated[
    str,
    typer.Option("--project-name", "-n", help="Use this project name instead of the manifest's."),
]
OrgOpt = Annotated[
    str, typer.Option("--org", "-o", help="Accepted for AutoKitteh's scripts; there is one org.")
]
NoValidateOpt = Annotated[
    bool, typer.Option("--no-validate", help="Accepted and ignored, as in AutoKitteh.")
]
RmCvarsOpt = Annotated[
    bool,
    typer.Option(
        "--rm-unused-cvars",
        help="Accepted; connection vars missing from the manifest are kept.",
    ),
]
SkipSecretsOpt = Annotated[
    bool,
    typer.Option(
        "--skip-existing-secrets", help="Keep secret vars that already have a value on the server."
    ),
]


def read_manifest(path: str) -> str:
    """The manifest's text from ``path``, or from standard input when it is "" or "-"."""
    if path in ("", "-"):
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise NotFound(f"open {path}: no such file or directory") from None
    except OSError as e:
        raise AKError(f"open {path}: {e.strerror}") from None


@app.command("validate")
def validate(path: FileArg = "") -> None:
    """Check a manifest; no output when it is valid."""
    from akcore.manifest import parse_manifest  # with CEL when the manifest has filters

    parse_manifest(read_manifest(path))


@app.command("plan")
def plan(
    path: FileArg = "",
    project_name: NameOpt = "",
    org: OrgOpt = "",
    no_validate: NoValidateOpt = False,
    from_scratch: Annotated[
        bool,
        typer.Option("--from-scratch", "-s", help="Plan as if the server had none of it yet."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Leave out the [plan] lines.")
    ] = False,
    rm_unused_cvars: RmCvarsOpt = False,
    skip_existing_secrets: SkipSecretsOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", "-j", help="Print the actions as compact JSON.")
    ] = False,
) -> None:
    """Show what applying the manifest would change, changing nothing: the [plan] lines,
    then the actions as JSON."""
    res = client.call(
        "manifest.plan",
        text=read_manifest(path),
        project_name=project_name,
        from_scratch=from_scratch,
        skip_existing_secrets=skip_existing_secrets,
    )
    if not quiet:
        for line in res["lines"]:
            typer.echo(line)
    typer.echo(json.dumps(res["actions"], indent=None if as_json else 2))


@app.command("apply")
def apply(
    path: FileArg = "",
    project_name: NameOpt = "",
    org: OrgOpt = "",
    no_validate: NoValidateOpt = False,
    quiet: QuietOpt = False,
    rm_unused_cvars: RmCvarsOpt = False,
    skip_existing_secrets: SkipSecretsOpt = False,
) -> None:
    """Apply the manifest: create or update the project, its vars, connections and
    triggers, without uploading code or deploying (the first half of `ak deploy`)."""
    res = client.call(
        "manifest.apply",
        text=read_manifest(path),
        project_name=project_name,
        skip_existing_secrets=skip_existing_secrets,
    )
    for stream, line in res["lines"]:
        if not quiet or stream == "err":
            typer.echo(line, err=stream == "err")


@app.command("deploy")
def deploy(
    path: Annotated[str, typer.Argument(help="The manifest file (autokitteh.yaml).")],
    project_name: NameOpt = "",
    org: OrgOpt = "",
    dirs: Annotated[
        list[str] | None,
        typer.Option("--dir", "-d", metavar="DIR", help="A directory to upload (repeatable)."),
    ] = None,
    files: Annotated[
        list[str] | None,
        typer.Option("--file", "-f", metavar="FILE", help="A file to upload (repeatable)."),
    ] = None,
    env: Annotated[
        str, typer.Option("--env", "-e", help="Accepted and ignored, as in AutoKitteh.")
    ] = "",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Leave out the [plan] and [exec] lines.")
    ] = False,
    skip_existing_secrets: SkipSecretsOpt = False,
) -> None:
    """Apply the manifest, upload the code, build, deploy and activate: `ak deploy` with the
    manifest as an argument."""
    deploy_mod.deploy(
        path,
        files or [],
        dirs or [],
        project_name,
        skip_existing_secrets,
        quiet=quiet,
        announce_project=False,
    )
