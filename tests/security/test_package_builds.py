"""What a package's build script may reach while a runner installs a project's
requirements.txt (a third adversarial review): the script is anyone's code (an sdist on the
index), runs as a throwaway user, and what it prints `ak deploy` shows the deployer, who may
hold a token limited to one project.

It got the runner's whole environment (the operator's shell: PGPASSWORD, cloud keys, a
DSN) and printed it to the deployer; it could open 20,000 files in each of its 512
processes (ten million: the kernel's one table of open files holds 2.5 million for every
process of the machine); a handler of any project could hold the lock of the default
environment for ever (it was a 0644 file on a path every worker reaches), so that no
runner could build it again; any number of environments were built at once (a token
limited to one project had twelve built together, each allowed 4 GiB and 512 processes);
it wrote what it liked to the machine's /tmp and /var/tmp and to its venv, on the disk of
the data home, and a failed build's venv stayed there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import typing
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ak_runner import pyenv
from ak_runner.sandbox import kill_user
from akcore.errors import ResourceExhausted

from tests.e2e.faultproject import fire, journal_log
from tests.e2e.test_pyenv import MANIFEST
from tests.helpers import AK, Stack, start_stack, wait_until, write_project

SECRETS = {
    "PGPASSWORD": "hunter2-pgpassword",
    "AWS_SECRET_ACCESS_KEY": "hunter2-aws",
    "DATABASE_URL": "postgresql://ak:hunter2-dsn@db/ak",
}

PRINT_ENV = "import os\nfor k, v in sorted(os.environ.items()):\n    print(f'{k}={v}')\n"


def test_a_build_script_gets_none_of_the_runners_other_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build script gets a worker's environment and pip's settings: nothing of the
    operator's shell that `ak deploy` would show the deployer."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("CFLAGS", "-O2")
    build = pyenv.Build(typing.cast(pyenv.Spec, None), 60, env_names=("CFLAGS",))
    asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", PRINT_ENV))
    shown = "\n".join(build.lines)
    assert not [value for value in SECRETS.values() if value in shown], shown
    # What pip and compilers need still comes: its settings, PATH, and what the operator
    # listed for workers (AK_RUNNER__WORKER_ENV).
    assert "PIP_INDEX_URL=https://mirror.example/simple" in build.lines
    assert "CFLAGS=-O2" in build.lines
    assert any(line.startswith("PATH=") for line in build.lines)


# Opens files until it may open no more, and says how many it opened.
OPEN_FILES = (
    "import os\n"
    "opened = []\n"
    "try:\n"
    "    while len(opened) < 5000:\n"
    "        opened.append(os.open('/dev/null', os.O_RDONLY))\n"
    "except OSError:\n"
    "    pass\n"
    "print('opened', len(opened))\n"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_a_build_script_opens_no_more_files_than_a_worker() -> None:
    """A sandboxed build's processes each hold at most a worker's open files
    (AK_RUNNER__WORKER_FILES): the runner's own limit (20,000 under `ak up`) times the
    512 processes a build may run would fill the kernel's one table of open files,
    after which nothing on the machine opens a file or a socket."""
    build = pyenv.Build(typing.cast(pyenv.Spec, None), 60, files=256)
    uid = 779983  # outside the workers' range
    try:
        asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", OPEN_FILES, uid=uid))
    finally:
        kill_user(uid)
    [said] = [line for line in build.lines if line.startswith("opened ")]
    assert said == "opened 253", build.lines  # 256, less stdin, stdout and stderr


def _wheel(index: Path, name: str) -> None:
    """A pure wheel ``<name>-1.0`` with one module, in the local index ``index``."""
    entries = {
        f"{name}/__init__.py": "VALUE = 1\n",
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{name}-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = ""
    for n, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record += f"{n},sha256={digest.decode()},{len(text.encode())}\n"
    entries[f"{name}-1.0.dist-info/RECORD"] = record + f"{name}-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(index / f"{name}-1.0-py3-none-any.whl", "w") as zf:
        for n, text in entries.items():
            zf.writestr(n, text)


HOMES = Path("/var/lib/autokitteh-tests")
PACKAGES_MEMORY_MB = 512


@contextlib.contextmanager
def _indexed_stack(
    prefix: str, wheels: tuple[str, ...], settings: dict[str, str] | None = None
) -> Iterator[Stack]:
    """A sandboxed stack (root, AK_WORKER_PYTHON unset: venvs built by pip, as in
    production) whose pip installs from a local index (``stack.home / "index"``) of
    ``wheels``; the default package list is the first of them."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs the runner to run as root")
    # Not under pytest's own directory (the workers' users must reach what is there), nor
    # under the machine's temporary directories (they are then not made the builds' own).
    HOMES.mkdir(mode=0o755, parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix=prefix, dir=HOMES))
    home.chmod(0o755)
    index = home / "index"
    index.mkdir()
    for name in wheels:
        _wheel(index, name)
    (home / "config" / "autokitteh").mkdir(parents=True)
    (home / "config" / "autokitteh" / "python-requirements.txt").write_text(f"{wheels[0]}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_NO_INDEX", "1")
        mp.setenv("PIP_FIND_LINKS", str(index))
        memory = {"AK_RUNNER__PACKAGES_MEMORY_MB": str(PACKAGES_MEMORY_MB)}
        s = start_stack(home, {"AK_WORKER_PYTHON": "", **memory, **(settings or {})})
    s.home = home  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """``_indexed_stack`` of wheels and probe sdists (made by the tests)."""
    with _indexed_stack("ak-package-builds-", ("okpkg", "otherpkg", "lockpkg")) as s:
        yield s


HOLDER = """\
import fcntl, os, time

def hold(event):
    held = []
    for path in {paths!r}:
        try:
            f = open(path)
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(f)
            print("held", path, flush=True)
        except OSError as e:
            print("could not hold", path, e.strerror, flush=True)
    print("tried", flush=True)
    time.sleep(3600)
"""


def _limited(stack: Stack, project: str) -> dict[str, str]:
    """The environment of a CLI holding a token limited to ``project`` (made first)."""
    manifest = f"version: v1\nproject:\n  name: {project}\n"
    root = write_project(stack.home / f"{project}-0", {"autokitteh.yaml": manifest})  # type: ignore[attr-defined]
    stack.ak("deploy", "--manifest", str(root / "autokitteh.yaml"), check=True)
    made = stack.ak("auth", "create-token", "-n", project, "-p", project, check=True)
    return dict(stack.env, AK_TOKEN=made.stdout.strip())


def _ak(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AK, *args], env=env, capture_output=True, text=True, timeout=600)


def test_a_handler_cannot_hold_an_environments_build_lock(stack: Stack) -> None:
    """A handler of one project cannot keep a runner from building another's environment:
    here the default one, after its package list changed (an upgrade does the same), while
    the handler holds every lock file it can open."""
    data = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh"
    victim = write_project(
        stack.home / "victim",  # type: ignore[attr-defined]
        {"autokitteh.yaml": "version: v1\nproject:\n  name: victim\n", "h.py": "x = 1\n"},
    )
    stack.ak("deploy", "--manifest", str(victim / "autokitteh.yaml"), check=True)
    # Where the default environment's lock was, and where it is now.
    paths = [str(data / ".venv.lock"), str(data / "venv-locks" / "venv.lock")]
    assert any(Path(p).exists() for p in paths)
    env = _limited(stack, "holder")
    holder = write_project(
        stack.home / "holder",  # type: ignore[attr-defined]
        {
            "autokitteh.yaml": "version: v1\nproject:\n  name: holder\n",
            "h.py": HOLDER.format(paths=paths),
            "requirements.txt": "otherpkg\n",
        },
    )
    res = _ak(env, "deploy", "--manifest", str(holder / "autokitteh.yaml"))
    assert res.returncode == 0, res.stderr
    started = _ak(env, "session", "start", "-o", "holder", "-p", "h.py:hold")
    sid = started.stdout.strip().removeprefix("session_id: ")
    prints = ""

    def tried() -> bool:
        nonlocal prints
        prints = _ak(env, "session", "prints", sid, "-n").stdout
        return "tried" in prints

    wait_until(tried, "the handler to try the locks", 60)
    assert "held" not in prints.replace("could not hold", ""), prints
    # The operator adds a package to the default list: the environment is built again.
    config_home = Path(stack.env["XDG_CONFIG_HOME"]) / "autokitteh"
    (config_home / "python-requirements.txt").write_text("okpkg\nlockpkg\n")
    res = stack.ak("deploy", "--manifest", str(victim / "autokitteh.yaml"))
    assert res.returncode == 0, res.stderr
    assert "waiting for another runner" not in res.stderr
    assert "Successfully installed lockpkg" in res.stderr
    _ak(env, "session", "stop", sid)


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


class Installs:
    """Stands in for pip (``pyenv._install``): each install says it started and then waits
    until the test lets it end."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.release: dict[str, asyncio.Event] = {}
        monkeypatch.setattr(pyenv, "_install", self.install)

    def of(self, requirements: str) -> tuple[asyncio.Event, asyncio.Event]:
        key = pyenv.spec_for(requirements.encode()).path.name
        started = self.started.setdefault(key, asyncio.Event())
        return started, self.release.setdefault(key, asyncio.Event())

    async def install(self, build: pyenv.Build, spec: pyenv.Spec, *_: object) -> None:
        started = self.started.setdefault(spec.path.name, asyncio.Event())
        release = self.release.setdefault(spec.path.name, asyncio.Event())
        started.set()
        build.say("installing")
        await release.wait()
        spec.path.mkdir(parents=True)


async def _prepared(envs: pyenv.PythonEnvs, text: str, **kw: typing.Any) -> dict[str, typing.Any]:
    return await envs.prepare(text.encode(), "", 0, **kw)


@pytest.mark.usefixtures("homes")
async def test_a_runner_builds_at_most_its_number_of_environments_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environments beyond AK_RUNNER__PACKAGES_BUILDS wait their turn, and say so to `ak
    deploy`; the time limit counts from their turn."""
    installs = Installs(monkeypatch)
    envs = pyenv.PythonEnvs("", tmp_path / "sdk", builds=2)
    lists = ["aaa\n", "bbb\n", "ccc\n"]
    answers = [await _prepared(envs, text) for text in lists]
    first, second = installs.of(lists[0]), installs.of(lists[1])
    await asyncio.wait_for(asyncio.gather(first[0].wait(), second[0].wait()), 10)
    third = installs.of(lists[2])
    waiting = await envs.prepare(lists[2].encode(), answers[2]["token"], 0)
    assert waiting["state"] == "building"
    assert waiting["lines"] == [
        "waiting for a turn: 2 environment(s) are being built on this runner "
        "(AK_RUNNER__PACKAGES_BUILDS)"
    ]
    assert not third[0].is_set()
    first[1].set()
    await asyncio.wait_for(third[0].wait(), 10)
    second[1].set()
    third[1].set()
    for text, answer in zip(lists, answers, strict=True):
        build = envs._builds[pyenv.spec_for(text.encode()).path]
        await asyncio.wait_for(build.done.wait(), 10)
        assert not build.error, build.error
        assert (await envs.prepare(text.encode(), answer["token"], 0))["state"] == "ready"


@pytest.mark.usefixtures("homes")
async def test_a_limited_token_gets_one_build_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token limited to projects has one environment built at a time on a runner: it
    cannot take every turn, nor fill the line, with requirements.txt that differ (by a
    comment, before environments were named by their packages). Another token's
    projects, and sessions, are not held up by it."""
    installs = Installs(monkeypatch)
    envs = pyenv.PythonEnvs("", tmp_path / "sdk", builds=4)
    evil = frozenset({"prj_evil"})
    first = await _prepared(envs, "aaa1\n", within=evil)
    await asyncio.wait_for(installs.of("aaa1\n")[0].wait(), 10)
    with pytest.raises(ResourceExhausted) as e:
        await _prepared(envs, "aaa2\n", within=evil)
    key = pyenv.spec_for(b"aaa1\n").path.name
    assert e.value.message == (
        f"requirements.txt {key} is still being built on this runner for this API token's "
        "projects, and they get one build at a time: let that deploy end, then deploy again"
    )
    # The same list again follows the same build (`ak deploy` run twice).
    again = await _prepared(envs, "aaa1\n", within=evil)
    assert again["token"] == first["token"]
    # Another token's projects are not held up.
    other = await _prepared(envs, "bbb\n", within=frozenset({"prj_other"}))
    assert other["state"] == "building"
    installs.of("aaa1\n")[1].set()
    await asyncio.wait_for(envs._builds[pyenv.spec_for(b"aaa1\n").path].done.wait(), 10)
    second = await _prepared(envs, "aaa2\n", within=evil)  # its turn now
    assert second["state"] == "building"
    for text in ("aaa2\n", "bbb\n"):
        installs.of(text)[1].set()
        await asyncio.wait_for(envs._builds[pyenv.spec_for(text.encode()).path].done.wait(), 10)


def _sdist(index: Path, name: str, code: str) -> None:
    """``<name>-1.0.tar.gz``: an sdist whose build backend (in the sdist itself, as PEP 517
    allows) runs ``code`` when pip asks it what it needs to build, then fails, so that pip
    shows what it printed."""
    backend = (
        "import sys\n\n\ndef get_requires_for_build_wheel(config_settings=None):\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "    sys.stdout.flush()\n    raise SystemExit('probe done')\n"
    )
    files = {
        "pyproject.toml": (
            '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        ),
        "backend.py": backend,
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
    }
    with tarfile.open(index / f"{name}-1.0.tar.gz", "w:gz") as tf:
        for fname, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-1.0/{fname}")
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))


def _prepare(stack: Stack, env: dict[str, str], text: str, token: str = "") -> tuple[int, Any]:
    """`build.prepare` over HTTP with the CLI token of ``env``: its status and reply."""
    from akcore import wire

    args = {"requirements": text.encode(), "token": token}
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {env['AK_TOKEN']}"}
    status, _, raw = stack.request(
        "POST", "/api/build.prepare", wire.encode(wire.StoreRequest(args)), headers
    )
    return status, wire.decode(wire.StoreReply, raw)


def test_a_limited_token_has_one_environment_built_at_a_time(stack: Stack) -> None:
    """Through the API: while a build asked for with a token limited to a project runs,
    another requirements.txt asked for with it is refused (429), saying why; once the
    first is over, it is built."""
    home: Path = stack.home  # type: ignore[attr-defined]
    marks = home / "marks"
    marks.mkdir()
    marks.chmod(0o1777)  # (the builder's user leaves its mark here)
    release = home / "release"
    code = (
        "import os, time\n"
        f"open(os.path.join({str(marks)!r}, 'started-%d' % os.getpid()), 'w').close()\n"
        f"while not os.path.exists({str(release)!r}):\n"
        "    time.sleep(0.05)\n"
    )
    _sdist(home / "index", "waitpkg", code)
    env = _limited(stack, "greedy")
    status, first = _prepare(stack, env, "waitpkg\n")
    assert status == 200 and first.result["state"] == "building", (status, first)
    wait_until(lambda: any(marks.iterdir()), "the first build's script to start", 120)
    status, second = _prepare(stack, env, "waitpkg>=1.0\n")
    assert status == 429, (status, second)
    assert second.error_kind == "resource_exhausted"
    assert "is still being built on this runner for this API token's projects" in second.error
    # Another project's token is not held up by it.
    status, other = _prepare(stack, _limited(stack, "bystander"), "otherpkg\n")
    assert status == 200 and other.result["state"] in ("building", "ready"), (status, other)
    release.touch()

    def first_over() -> bool:
        return _prepare(stack, env, "waitpkg\n", first.result["token"])[1].result["state"] in (
            "ready",
            "failed",
        )

    wait_until(first_over, "the first build to end", 120)
    status, second = _prepare(stack, env, "waitpkg>=1.0\n")
    assert status == 200 and second.result["state"] == "building", (status, second)


TEMPS = (
    "import os\n"
    "for d in ('/tmp', '/var/tmp'):\n"
    "    open(os.path.join(d, 'probe-%d' % os.getpid()), 'w').write('x')\n"
    "    fs = os.statvfs(d)\n"
    "    print('TEMP', d, os.stat(d).st_dev, fs.f_blocks * fs.f_frsize >> 20)\n"
)


def _deploy_package(
    stack: Stack, project: str, package: str, script: str
) -> subprocess.CompletedProcess[str]:
    """``ak deploy``, with a token limited to ``project``, of a project whose
    requirements.txt names ``package``, an sdist whose build runs ``script``."""
    home: Path = stack.home  # type: ignore[attr-defined]
    _sdist(home / "index", package, script)
    env = _limited(stack, project)
    files = {"autokitteh.yaml": f"version: v1\nproject:\n  name: {project}\n", "h.py": "x = 1\n"}
    proj = write_project(home / project, {**files, "requirements.txt": f"{package}\n"})
    return _ak(env, "deploy", "--manifest", str(proj / "autokitteh.yaml"))


def test_a_build_script_writes_to_temporary_directories_of_its_own(stack: Stack) -> None:
    """A package's build script has /tmp and /var/tmp of its own, in memory, of at most the
    build's memory limit (and counted against it): it wrote to the machine's, on the disk
    of the data home, the database and NATS's store, which nothing bounded."""
    res = _deploy_package(stack, "temps", "temppkg", TEMPS)
    said = [line.split() for line in res.stderr.splitlines() if " TEMP /" in line]
    seen = {words[-3]: (int(words[-2]), int(words[-1])) for words in said}
    assert set(seen) == {"/tmp", "/var/tmp"}, res.stderr
    for folder, (device, size_mb) in seen.items():
        assert device != os.stat(folder).st_dev, f"{folder} is the machine's"
        assert size_mb <= PACKAGES_MEMORY_MB, (folder, size_mb)
        assert not list(Path(folder).glob("probe-*")), f"the build script wrote to {folder}"


# Writes 1 MiB at a time (up to 60) to the file it is given, then waits: only a kill ends it.
FILL = (
    "import sys, time\n"
    "with open(sys.argv[1], 'wb') as f:\n"
    "    for i in range(60):\n"
    "        f.write(b'x' * (1 << 20))\n"
    "        f.flush()\n"
    "print('filled', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small disk")
def test_an_install_that_fills_the_disk_is_stopped_and_says_so(tmp_path: Path) -> None:
    """An install is stopped once a disk it writes to has less room left than is kept
    free for the services (AK_RUNNER__PACKAGES_MIN_FREE_MB): the data home's disk holds
    the database and NATS's store too, which stop when it is full."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    try:
        build = pyenv.Build(typing.cast(pyenv.Spec, None), 60)
        build.min_free_mb, build.disks = 32, (("scratch", str(disk)),)
        started = time.monotonic()
        with pytest.raises(pyenv.EnvError) as e:
            argv = (sys.executable, "-c", FILL, str(disk / "f"))
            asyncio.run(pyenv._run(build, "pip install", *argv))
        assert time.monotonic() - started < 30
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
    assert re.match(
        r"pip install was stopped: scratch's disk has \d+ MiB free, less than the 32 MiB "
        r"kept free for the services \(AK_RUNNER__PACKAGES_MIN_FREE_MB\); free some room "
        r"and deploy again",
        e.value.message,
    ), e.value.message


@pytest.mark.usefixtures("homes")
async def test_no_build_starts_while_the_disk_is_low(tmp_path: Path) -> None:
    """An install is not started while the data home's disk has less room left than is
    kept free: `ak deploy` says so, and no venv is made."""
    envs = pyenv.PythonEnvs("", tmp_path / "sdk", min_free_mb=1 << 40)  # (a TiB free)
    answer = await envs.prepare(b"six\n", "", 0)
    build = envs._builds[pyenv.spec_for(b"six\n").path]
    await asyncio.wait_for(build.done.wait(), 30)
    assert build.error.startswith(
        f"requirements.txt {build.spec.path.name} was not built: the data home's disk has "
    ), build.error
    assert build.error.endswith(
        "MiB free, less than the 1099511627776 MiB kept free for the services "
        "(AK_RUNNER__PACKAGES_MIN_FREE_MB); free some room and deploy again"
    )
    assert answer["state"] == "building" and not build.spec.path.exists()


JUNK = (
    "import os, sys\n"
    "with open(os.path.join(sys.prefix, 'junk'), 'wb') as f:\n"
    "    f.write(b'x' * (30 << 20))\n"
    "print('JUNK', sys.prefix)\n"
)


def test_a_failed_build_leaves_no_venv_behind(stack: Stack) -> None:
    """The venv of a build that failed is removed, with what its build scripts wrote
    there: one per requirements.txt, they took the data home's disk for good."""
    res = _deploy_package(stack, "junk", "junkpkg", JUNK)
    assert res.returncode != 0
    [venv] = [line.split()[-1] for line in res.stderr.splitlines() if " JUNK /" in line]
    assert Path(venv).parent == Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / "venvs"
    assert not Path(venv).exists()
    assert not (Path(venv).parent / f".{Path(venv).name}.python").exists()


@pytest.mark.usefixtures("homes")
async def test_one_projects_builds_do_not_hold_up_anothers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions of one project (on deployments of its own whose requirements.txt differ)
    have its environments built one at a time: another project's environment,
    asked for after all of them, takes the next free turn."""
    installs = Installs(monkeypatch)
    envs = pyenv.PythonEnvs("", tmp_path / "sdk", builds=2)
    flood = [f"aaa{i}\n" for i in range(3)]
    sessions = [asyncio.create_task(envs.python_for(text.encode(), "prj_flood")) for text in flood]
    await asyncio.wait_for(installs.of(flood[0])[0].wait(), 10)
    other = asyncio.create_task(envs.python_for(b"bbb\n", "prj_other"))
    await asyncio.wait_for(installs.of("bbb\n")[0].wait(), 10)  # the second turn is its
    assert not installs.of(flood[1])[0].is_set() and not installs.of(flood[2])[0].is_set()
    waiting = envs._builds[pyenv.spec_for(flood[1].encode()).path].lines
    assert waiting == [
        "waiting for a turn: another environment of this project is being built on this "
        "runner (one at a time for each project)"
    ]
    installs.of("bbb\n")[1].set()
    _, _, kind = await asyncio.wait_for(other, 10)
    assert kind == "project"
    for i, text in enumerate(flood):  # each in its turn
        await asyncio.wait_for(installs.of(text)[0].wait(), 10)
        if i + 1 < len(flood):
            assert not installs.of(flood[i + 1])[0].is_set()
        installs.of(text)[1].set()
    await asyncio.wait_for(asyncio.gather(*sessions), 10)


@pytest.mark.usefixtures("homes")
async def test_an_environment_another_project_waits_for_takes_a_free_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment is built once for all who need it, in the turns of the project that
    asked first: one that project queued behind its own build (the default environment
    after an upgrade, asked by a session of a project whose other environment is being
    built) kept every other project's sessions waiting for it, a turn free, for as long as
    that other build took (up to AK_RUNNER__PACKAGES_TIMEOUT). Another project asking for
    it now lets it take a free turn of its own."""
    installs = Installs(monkeypatch)
    envs = pyenv.PythonEnvs("", tmp_path / "sdk", builds=2)
    busy = asyncio.create_task(envs.python_for(b"aaa\n", "prj_first"))
    await asyncio.wait_for(installs.of("aaa\n")[0].wait(), 10)
    queued = asyncio.create_task(envs.python_for(b"bbb\n", "prj_first"))
    await asyncio.wait_for(_said(envs, b"bbb\n", "waiting for a turn"), 10)
    other = asyncio.create_task(envs.python_for(b"bbb\n", "prj_other"))
    started, release = installs.of("bbb\n")
    await asyncio.wait_for(started.wait(), 10)  # a turn was free: built now, for both
    assert not busy.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(queued, other), 10)
    # ... under the other project's turn: the first project's own may still take one.
    third = asyncio.create_task(envs.python_for(b"ccc\n", "prj_third"))
    await asyncio.wait_for(installs.of("ccc\n")[0].wait(), 10)
    for text in ("aaa\n", "ccc\n"):
        installs.of(text)[1].set()
    await asyncio.wait_for(asyncio.gather(busy, third), 10)
    assert envs._turns.busy == 0


async def _said(envs: pyenv.PythonEnvs, requirements: bytes, start: str) -> None:
    """Until the build of ``requirements`` has said a line starting with ``start``."""
    path = pyenv.spec_for(requirements).path
    while not any(x.startswith(start) for x in getattr(envs._builds.get(path), "lines", [])):
        await asyncio.sleep(0.01)


@pytest.mark.usefixtures("homes")
async def test_finished_builds_keep_a_bounded_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished builds' output, kept for `ak deploy` to read, is bounded all together, the
    oldest forgotten first: a build script that prints the most a build keeps (about
    5 MB) and fails takes seconds, and one after another they grew the runner, which every
    project shares, by hundreds of megabytes."""
    monkeypatch.setattr(pyenv, "KEEP_OUTPUT", 8 << 20, raising=False)
    full = pyenv.MAX_LINES * pyenv.MAX_LINE

    async def loud(build: pyenv.Build, *_: object) -> None:
        for _ in range(pyenv.MAX_LINES):
            build.say("y" * pyenv.MAX_LINE)
        raise pyenv.EnvError("pip install failed (exit code 1)")

    monkeypatch.setattr(pyenv, "_install", loud)
    envs = pyenv.PythonEnvs("", tmp_path / "sdk")
    for i in range(6):
        await envs.prepare(f"aaa\n# {i}\n".encode(), "", 0)
        build = envs._builds[pyenv.spec_for(f"aaa\n# {i}\n".encode()).path]
        await asyncio.wait_for(build.done.wait(), 30)
        assert build.error.startswith("pip install failed")
    kept = sum(len(line) for b in envs._builds.values() for line in b.lines)
    assert kept <= (8 << 20) + full + pyenv.MAX_LINES, kept
    assert build.lines  # the last one's is there for its `ak deploy`


# test_pyenv's project, with a trigger ``go`` that only carries events (a session's wake-up).
RESUMES = MANIFEST + "    - name: go\n      webhook: {{}}\n"


@dataclass
class _Resuming:
    """A session parked, its project environment pruned meanwhile (by another project's
    build: AK_RUNNER__VENVS_MB=1), woken while pip cannot build it again (its package
    taken out of the index), and stopped for pip once (a `retry` record)."""

    stack: Stack
    sid: str
    venvs: Path
    kept: str  # its environment's name
    wheel: Path  # where its package goes back to (``put_back``)
    away: Path  # where it is meanwhile

    def put_back(self) -> None:
        self.away.rename(self.wheel)

    def journal_has(self, kind: str, text: str = "") -> bool:
        return any(e["type"] == kind and text in str(e) for e in journal_log(self.stack, self.sid))


@contextlib.contextmanager
def _resuming(code: str, settings: dict[str, str] | None = None) -> Iterator[_Resuming]:
    """``_Resuming`` of a session of ``code``'s ``wait`` (it imports ``keptpkg``, of its
    requirements.txt, and waits for an event of its trigger ``go``, which wakes it)."""
    with _indexed_stack(
        "ak-venvs-resume-",
        ("otherpkg", "keptpkg"),
        {
            "AK_RUNNER__VENVS_MB": "1",  # every environment no session holds goes
            "AK_RUNNER__PARK_AFTER": "1",
            **(settings or {}),
        },
    ) as stack:
        home: Path = stack.home  # type: ignore[attr-defined]
        index = home / "index"
        resumes = write_project(
            home / "resumes",
            {
                "autokitteh.yaml": RESUMES.format(name="resumes", fn="wait"),
                "handlers.py": code,
                "requirements.txt": "keptpkg\n",
            },
        )
        other = write_project(
            home / "other",
            {
                "autokitteh.yaml": RESUMES.format(name="other", fn="nothing"),
                "handlers.py": "def nothing(event):\n    pass\n",
                "requirements.txt": "otherpkg\n",
            },
        )
        paths = stack.deploy_paths(resumes)
        venvs = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / "venvs"
        (kept,) = [p.name for p in venvs.iterdir() if not p.name.startswith(".")]
        wheel = index / "keptpkg-1.0-py3-none-any.whl"
        r = _Resuming(
            stack, fire(stack, "resumes", paths["hook"]), venvs, kept, wheel, home / wheel.name
        )
        wait_until(lambda: r.journal_has("parked"), "the session to park", 60)
        stack.ak("deploy", "--manifest", str(other / "autokitteh.yaml"), check=True)
        assert not (venvs / kept).exists()  # removed: no running attempt held it
        wheel.rename(r.away)  # pip cannot install it for now
        status, _, _ = stack.request("POST", paths["go"], b"{}")  # wakes it
        assert status == 202
        wait_until(
            lambda: r.journal_has("retry", "its Python environment could not be built"),
            f"an attempt to stop for pip, to be tried again\n{stack.output()[-3000:]}",
            120,
        )
        yield r


def _state(stack: Stack, sid: str) -> str:
    return str(json.loads(stack.ak("session", "get", sid, "-j", check=True).stdout)["state"])


def test_a_resumed_session_whose_environment_went_waits_for_pip() -> None:
    """A parked session's project environment removed meanwhile (past AK_RUNNER__VENVS_MB)
    is built again as it resumes; while pip cannot install its packages (here missing from
    the index, as when the index is away) the session is tried again later, not ended in
    ERROR, and it goes on once pip can: what it did before is not lost."""
    code = (
        "import autokitteh\nimport keptpkg\n\n\ndef wait(event):\n"
        "    print('before', keptpkg.VALUE)\n"
        "    autokitteh.next_event(autokitteh.subscribe('go'))\n"
        "    print('after', keptpkg.VALUE)\n"
    )
    with _resuming(code) as r:
        assert _state(r.stack, r.sid) == "RUNNING"  # (it ended in ERROR before)
        r.put_back()  # the index is back
        s = r.stack.wait_session(r.sid, timeout=120)
        prints = r.stack.ak("session", "prints", r.sid, "-n", check=True).stdout
        assert s["state"] == "COMPLETED", prints
        assert prints.splitlines() == ["before 1", "after 1"]
        assert (r.venvs / r.kept).is_dir()


def test_a_session_waiting_for_pip_stops_when_asked() -> None:
    """A resumed session tried again while pip cannot build its environment
    (``EnvAway``) still reads its inbox: `ak session stop` ends it in STOPPED at its next
    attempt, not after every attempt it has left (minutes), in ERROR."""
    code = (
        "import autokitteh\nimport keptpkg\n\n\ndef wait(event):\n"
        "    autokitteh.next_event(autokitteh.subscribe('go'))\n"
    )
    # (It must not end by running out of attempts; its package stays away for good.)
    with _resuming(code, {"AK_JOBS__MAX_ATTEMPTS": "30"}) as r:
        r.stack.ak("session", "stop", r.sid, check=True)
        # (The next attempt comes 30 s at most after the one before.)
        wait_until(lambda: _state(r.stack, r.sid) != "RUNNING", "the session to end", 75)
        assert _state(r.stack, r.sid) == "STOPPED", journal_log(r.stack, r.sid)
