"""``ak build list|get|download|delete``: the builds ``ak deploy`` makes of a project's code."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Annotated

import typer
from akcore.buildfiles import check_paths
from akcore.errors import InvalidArgument, NotFound

from . import client
from .options import FailOpt, JsonOpt, silent_unless
from .render import emit, emit_list

app = typer.Typer(help="List, show, download and delete builds.", no_args_is_help=True)

BuildArg = Annotated[str, typer.Argument(help="Build ID (bld_...).")]
BUILD_KEYS = ["build_id", "project_id", "project", "created_at", "files", "size"]
FILE_VERSION = "=^.^= autokitteh-nats-build-file-v1\n"


@app.command("list")
def list_(
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")],
    as_json: JsonOpt = False,
    fail: FailOpt = False,
) -> None:
    """A project's builds, newest first."""
    try:
        found = client.call("build.list", project=project)
        if not found:
            raise NotFound("builds: not_found")
    except NotFound as e:
        silent_unless(fail, e)
        return
    emit_list(found, as_json, BUILD_KEYS)


@app.command("get")
def get(build_id: BuildArg, as_json: JsonOpt = False, fail: FailOpt = False) -> None:
    """One build: its project, when it was made, how many files and bytes."""
    try:
        found = client.call("build.describe", build_id=build_id)
    except NotFound as e:
        silent_unless(fail, e)
        return
    emit(found, as_json, BUILD_KEYS, label="build")


def build_file(build_id: str, files: dict[str, bytes]) -> bytes:
    """A build as a tar.gz: ``version.txt``, ``info.json`` and the code under ``resources/``."""
    buf = io.BytesIO()
    now = time.time()
    entries = {
        "version.txt": FILE_VERSION.encode(),
        "info.json": json.dumps({"build_id": build_id, "files": sorted(files)}).encode(),
        **{f"resources/{name}": data for name, data in sorted(files.items())},
    }
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(now), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@app.command("download")
def download(
    build_id: BuildArg,
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write; - for standard output.")
    ] = "build.akb",
) -> None:
    """Write a build (its code) as a tar.gz file."""
    res = client.call("build.download", build_id=build_id)
    check_paths(res["files"], "refusing to write the build file")  # one stored unchecked
    data = build_file(res["build_id"], res["files"])
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(output).write_bytes(data)


def read_build_file(data: bytes) -> dict[str, bytes]:
    """The code of a build file that ``ak build download`` wrote."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            version = tar.extractfile("version.txt")
            if version is None or version.read().decode() != FILE_VERSION:
                raise InvalidArgument("not a build file of `ak build download`")
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("resources/"):
                    f = tar.extractfile(member)
                    assert f is not None
                    files[member.name.removeprefix("resources/")] = f.read()
    except (tarfile.TarError, KeyError, OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"not a build file: {e}") from None
    return files


@app.command("upload")
def upload(
    path: Annotated[str, typer.Argument(help="A build file of `ak build download`.")],
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")],
    as_json: JsonOpt = False,
) -> None:
    """Store a build file as a new build of the project; prints its ID."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"open {path}: no such file or directory") from None
    bid = client.call("build.create", project=project, files=read_build_file(data))
    typer.echo(json.dumps({"build_id": bid}) if as_json else f"build_id: {bid}")


@app.command("describe")
def describe(build_id: BuildArg, as_json: JsonOpt = False) -> None:
    """The files of a build, with their sizes."""
    res = client.call("build.download", build_id=build_id)
    files = {name: len(data) for name, data in sorted(res["files"].items())}
    emit({"build_id": res["build_id"], "files": files}, as_json, label="build")


@app.command("delete")
def delete(build_id: BuildArg) -> None:
    """Delete a build that no deployment uses and no session runs."""
    client.call("build.delete", build_id=build_id)
