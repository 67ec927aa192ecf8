"""``ak deploy``: apply the manifest, upload the code, build, deploy and activate."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import typer
from akcore.buildfiles import MAX_BUILD_BYTES, check_build
from akcore.config import REQUIREMENTS_FILE
from akcore.errors import AKError, InvalidArgument, NotFound

from . import client
from .render import terminal_safe

DEFAULT_MANIFEST = "autokitteh.yaml"
POLL_EVERY = 0.5
_SKIP_DIRS = {"__pycache__"}


def _walk(root: Path, skip: set[Path]) -> dict[str, bytes]:
    """Files under ``root`` by relative path, minus dot-files, ``__pycache__`` and ``skip``."""
    out: dict[str, bytes] = {}
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            real = path.resolve()
            if real in skip:
                continue
            if not real.is_relative_to(real_root):
                raise InvalidArgument(f"{path} points outside {root}: refusing to upload it")
            data = _read(real, path)
            if data is not None:
                out[path.relative_to(root).as_posix()] = data
    return out


def _read(real: Path, path: Path) -> bytes | None:
    """A regular file's bytes; None, said on stderr, for anything else the directory holds
    (a FIFO would block the upload for ever, a device would never end). A file over the
    build's whole size limit is refused before it is read."""
    try:
        info = real.stat()
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        typer.echo(f"skipping {path}: not a regular file", err=True)
        return None
    if info.st_size > MAX_BUILD_BYTES:
        raise InvalidArgument(
            f"{path} is {info.st_size:,} bytes, over the build's limit of {MAX_BUILD_BYTES:,}: "
            "leave it out of the project's directory, or upload only the code with --file/--dir"
        )
    return real.read_bytes()


def collect_files(manifest: Path | None, files: list[str], dirs: list[str]) -> dict[str, bytes]:
    """What a build uploads: ``--file`` by basename, ``--dir`` trees, else the manifest's dir."""
    out: dict[str, bytes] = {}
    skip = {manifest.resolve()} if manifest else set()
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise NotFound(f"stat {f}: no such file or directory")
        out[p.name] = p.read_bytes()
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise NotFound(f"stat {d}: no such file or directory")
        out.update(_walk(p, skip))
    if not files and not dirs and manifest is not None:
        out.update(_walk(manifest.parent, skip | {(manifest.parent / DEFAULT_MANIFEST).resolve()}))
    check_build(out)  # as the store will: refused before anything changes
    return out


def prepare_python(upload: dict[str, bytes]) -> None:
    """Has a runner build (or reuse) the Python environment the upload needs, showing pip's
    progress on stderr. Runs before anything is changed, so a failed install changes nothing."""
    if not any(name.endswith(".py") for name in upload):
        return
    requirements = upload.get(REQUIREMENTS_FILE)
    token, offset = "", 0
    while True:
        res = client.call("build.prepare", requirements=requirements, token=token, offset=offset)
        if res.get("worker_python"):
            if requirements is not None:
                typer.echo(
                    f"[!!!!] AK_WORKER_PYTHON is set: {REQUIREMENTS_FILE} is not installed, "
                    f"handlers run on {res['python']}",
                    err=True,
                )
            return
        for line in res.get("lines", ()):
            typer.echo(f"[pyenv] {terminal_safe(line)}", err=True)  # (a package's words)
        if res["state"] == "ready":
            return
        if res["state"] == "failed":
            what = REQUIREMENTS_FILE if requirements is not None else "the default package list"
            raise AKError(
                f"the Python environment could not be built: {res['error'].splitlines()[0]}. "
                f"Fix {what} and deploy again (pip's output is above). "
                "Nothing was changed: the previous deployment stays active"
            )
        token, offset = res["token"], res["next"]
        time.sleep(POLL_EVERY)


def deploy(
    manifest: str | None,
    files: list[str],
    dirs: list[str],
    project_name: str,
    skip_existing_secrets: bool,
    quiet: bool = False,
    announce_project: bool = True,
) -> None:
    """``ak deploy`` (and ``ak manifest deploy``: no ``[plan] project`` line, ``-q``
    silences the ``[plan]``/``[exec]`` lines)."""
    if manifest is None:
        if not Path(DEFAULT_MANIFEST).is_file():
            raise AKError(
                "no project or manifest provided, and default 'autokitteh.yaml' not "
                "found in current directory"
            )
        manifest = DEFAULT_MANIFEST
    path = Path(manifest)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"open {manifest}: no such file or directory") from None
    except OSError as e:
        raise AKError(f"open {manifest}: {e.strerror}") from None
    upload = collect_files(path, files, dirs)  # check the files before changing anything
    from akcore.manifest import parse_manifest  # with CEL when the manifest has filters

    try:
        parse_manifest(text, project_name)
    except AKError:
        pass  # manifest.apply reports it, exactly as AutoKitteh words it
    else:
        prepare_python(upload)
    res = client.call(
        "manifest.apply",
        text=text,
        project_name=project_name,
        skip_existing_secrets=skip_existing_secrets,
    )
    for stream, line in res["lines"]:
        if not quiet or stream == "err":
            typer.echo(line, err=stream == "err")
    pid = res["project_id"]
    if not pid:
        raise InvalidArgument("the manifest has no project to deploy")
    ref = pid if res["created"] else res["project_name"]
    if announce_project and not quiet:
        typer.echo(f'[plan] project "{ref}": found, id="{pid}"')
    build_and_deploy(pid, upload, quiet)


def build_and_deploy(project: str, upload: dict[str, bytes], quiet: bool) -> tuple[str, str]:
    """Builds the upload, deploys and activates it; returns the build and deployment ids."""
    bid = client.call("build.create", project=project, files=upload)
    if not quiet:
        typer.echo(f'[exec] create_build: created "{bid}"')
    did = client.call("deployment.create", project=project, build_id=bid)
    if not quiet:
        typer.echo(f'[exec] create_deployment: created "{did}"')
    client.call("deployment.activate", deployment_id=did)
    if not quiet:
        typer.echo("[exec] activate_deployment: activated")
    sys.stdout.flush()
    return bid, did
