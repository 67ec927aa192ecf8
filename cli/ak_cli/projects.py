"""``ak project ...``: create, list, get, delete, download, export and lint projects."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Annotated

import typer
from akcore.buildfiles import check_paths
from akcore.errors import AKError, NotFound

from . import client
from .deploy import DEFAULT_MANIFEST, build_and_deploy, collect_files, prepare_python
from .manifests import read_manifest
from .options import FailOpt, JsonOpt, silent_unless
from .render import emit, emit_list

app = typer.Typer(help="Create, inspect, export and delete projects.", no_args_is_help=True)

ProjectArg = Annotated[str, typer.Argument(help="Project name or ID.")]
USER_MANIFEST_HEADER = (
    "# The manifest as it was uploaded with the project's code.\n"
    "# autokitteh.yaml beside it is made from what the server holds now.\n"
)


@app.command("create")
def create(
    name: Annotated[
        str, typer.Option("--name", "-n", help="Project name (empty: a random one).")
    ] = "",
    org: Annotated[str, typer.Option("--org", "-o", help="Accepted; there is one org.")] = "",
    display_name: Annotated[
        str, typer.Option("--display-name", "-t", help="A name for people to read.")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an empty project; prints its ID."""
    res = client.call("project.create", name=name, display_name=display_name)
    emit_kv("project_id", res["project_id"], as_json)


def emit_kv(key: str, value: str, as_json: bool) -> None:
    typer.echo(json.dumps({key: value}) if as_json else f"{key}: {value}")


@app.command("list")
def list_(as_json: JsonOpt = False, fail: FailOpt = False) -> None:
    """All projects, one per line."""
    found = client.call("project.list")
    if not found and fail:
        raise NotFound("projects: not_found")
    emit_list(found, as_json)


@app.command("get")
def get(project: ProjectArg, as_json: JsonOpt = False) -> None:
    """One project."""
    emit(client.call("project.get", project=project), as_json, label="project")


@app.command("delete")
def delete(project: ProjectArg, fail: FailOpt = False) -> None:
    """Delete a project with its builds, deployments, triggers, vars, connections, sessions
    and events. Only when none of its deployments is active or draining."""
    try:
        client.call("project.delete", project=project)
    except NotFound as e:
        silent_unless(fail, e)


@app.command("download")
def download(
    project: ProjectArg,
    output_dir: Annotated[
        str, typer.Option("--output-dir", "-o", help="Directory to write the files into.")
    ] = ".",
    fail: FailOpt = False,
) -> None:
    """Write the project's code (the files of its newest build) into a directory."""
    try:
        files = client.call("project.export", project=project)["files"]
        if not files:
            raise NotFound("resources: not_found")
    except NotFound as e:
        silent_unless(fail, e)
        return
    check_paths(files, f"refusing to write into {output_dir}")  # a build stored unchecked
    root = Path(output_dir)
    for name, data in sorted(files.items()):
        path = root.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@app.command("export")
def export(
    project: ProjectArg,
    output: Annotated[
        str, typer.Option("--output", "-o", help="Zip file to write; - for standard output.")
    ] = "-",
    include_contents: Annotated[
        bool,
        typer.Option("--include-contents", "-c", help="Put the vars' values into the manifest."),
    ] = False,
) -> None:
    """Write the project as a zip: its code and an autokitteh.yaml (v2) made from what the
    server holds (connection vars are never exported; var values only with -c)."""
    res = client.call("project.export", project=project, include_contents=include_contents)
    check_paths(res["files"], "refusing to write the zip")  # a build stored unchecked
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(res["files"].items()):
            if name == DEFAULT_MANIFEST:
                z.writestr(f"{name}.user", USER_MANIFEST_HEADER.encode() + data)
            else:
                z.writestr(name, data)
        z.writestr(DEFAULT_MANIFEST, res["manifest"])
    if output == "-":
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.flush()
    else:
        Path(output).write_bytes(buf.getvalue())


DirsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dir", "-d", metavar="DIR", help="A directory of the project's code (repeatable)."
    ),
]
FilesOpt = Annotated[
    list[str] | None,
    typer.Option("--file", "-f", metavar="FILE", help="A file of the project (repeatable)."),
]


def _upload(dirs: list[str] | None, files: list[str] | None) -> dict[str, bytes]:
    if not dirs and not files:
        raise AKError("at least one of the flags in the group [dir file] is required")
    upload = collect_files(None, files or [], dirs or [])
    prepare_python(upload)
    return upload


@app.command("build")
def build(
    project: ProjectArg, dirs: DirsOpt = None, files: FilesOpt = None, as_json: JsonOpt = False
) -> None:
    """Upload code to an existing project and build it (no deployment); prints the build ID."""
    upload = _upload(dirs, files)
    pid = client.call("project.get", project=project)["project_id"]
    emit_kv("build_id", client.call("build.create", project=pid, files=upload), as_json)


@app.command("deploy")
def deploy(
    project: ProjectArg, dirs: DirsOpt = None, files: FilesOpt = None, as_json: JsonOpt = False
) -> None:
    """Upload code to an existing project, build it, deploy and activate it."""
    upload = _upload(dirs, files)
    pid = client.call("project.get", project=project)["project_id"]
    bid, did = build_and_deploy(pid, upload, quiet=True)
    emit_kv("build_id", bid, as_json)
    emit_kv("deployment_id", did, as_json)


@app.command("lint")
def lint(
    manifest: Annotated[
        str, typer.Option("--manifest", "-m", help="The manifest to check.")
    ] = DEFAULT_MANIFEST,
    project: Annotated[
        str, typer.Option("--project", "-p", help="Accepted; the checks need no server.")
    ] = "",
    dirs: DirsOpt = None,
    files: FilesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a project before deploying it: the manifest is valid, every trigger's call
    names an existing file and function, the Python files compile. One line per problem;
    exit 1 when there is an error."""
    from . import lint as lint_mod  # the manifest's checks, with CEL

    text = read_manifest(manifest)
    upload = collect_files(Path(manifest), files or [], dirs or [])
    found = lint_mod.lint(Path(manifest).name, text, upload)
    for v in found:
        if as_json:
            typer.echo(
                json.dumps({"file": v.file, "level": v.level, "line": v.line, "message": v.message})
            )
        else:
            typer.echo(v.text())
    if any(v.level == lint_mod.ERROR for v in found):
        raise AKError("lint errors")
