"""Which environment a build needs, and the SDK wheel that goes into it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import typing
import zipfile
from pathlib import Path

import pytest
from ak_runner import pyenv
from ak_runner.sandbox import UserIds, kill_user
from akcore import config, sdkdist
from akcore.cgroups import WorkerGroups

from tests.helpers import wait_until


@pytest.fixture(autouse=True)
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def test_lines_naming_the_sdk_are_skipped() -> None:
    text, skipped = pyenv.without_sdk(
        "autokitteh ~= 0.2\nAutoKitteh>=0.1\nautokitteh\nautokitteh-extras\nrequests\n"
    )
    assert text == "autokitteh-extras\nrequests\n"
    assert skipped == ["autokitteh ~= 0.2", "AutoKitteh>=0.1", "autokitteh"]


def test_default_list_is_copied_to_the_config_home_once_and_then_read_from_there() -> None:
    spec = pyenv.spec_for(None)
    path = config.python_requirements()
    assert "boto3 ~= 1.34" in path.read_text()  # the seed's list
    assert spec.path == config.default_venv()
    path.write_text("six\n")
    assert pyenv.spec_for(None).requirements == "six\n"


def test_a_requirements_file_is_keyed_by_the_hash_of_its_packages() -> None:
    a, b = pyenv.spec_for(b"six\n"), pyenv.spec_for(b"six==1.17.0\n")
    assert a.path.parent == b.path.parent == config.project_venvs()
    assert a.path.name == hashlib.sha256(b"six\n").hexdigest()[:16]
    assert a.path != b.path
    assert pyenv.spec_for(b"six\n") == a
    # Comments, blank lines, spacing, order and repeats make no other environment: each
    # was a new venv on the data home's disk, one per deploy.
    two = pyenv.spec_for(b"six\ntabulate==0.9.0\n")
    for same in (
        b"# tables\ntabulate == 0.9.0  # pinned\n\n   six\n",
        b"tabulate==0.9.0\nsix\nsix\n",
        b"six\r\ntabulate==0.9.0",
    ):
        assert pyenv.spec_for(same).path == two.path, same
    assert two.requirements == "six\ntabulate==0.9.0\n"


def test_ready_only_when_the_marker_matches(tmp_path: Path) -> None:
    spec = pyenv.spec_for(b"six\n")
    assert not pyenv.is_ready(spec)
    (spec.path / "bin").mkdir(parents=True)
    spec.python.write_text("")
    (spec.path / pyenv.MARKER).write_text('{"requirements": "other", "sdk": "x"}')
    assert not pyenv.is_ready(spec)
    (spec.path / pyenv.MARKER).write_text(json.dumps(spec.wanted))
    # Not without the record of the interpreter it was made from (a venv of an earlier
    # version is made again: a root runner starts that interpreter, never the venv's).
    assert not pyenv.is_ready(spec)
    spec.base_file.write_text("/usr/bin/python3\n")
    assert pyenv.is_ready(spec)


def test_sdk_wheel_has_every_file_with_its_hash(tmp_path: Path) -> None:
    wheel = sdkdist.build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "autokitteh/_worker.py" in names and "autokitteh/__init__.py" in names
        assert not any("__pycache__" in n for n in names)
        info = f"autokitteh-{sdkdist.version()}.dist-info"
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.split(",")
            if name.endswith("RECORD"):
                continue
            data = zf.read(name)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, size) == (f"sha256={b64}", str(len(data)))
        assert {line.split(",")[0] for line in record} == names


def test_sessions_starting_together_all_get_a_whole_sdk_copy(tmp_path: Path) -> None:
    """Workers put the SDK copy on their path: writers racing to make it (sessions starting
    at once on a fresh runner) must each end with the complete copy, never a partial one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        copies = list(pool.map(lambda _: sdkdist.write_copy(tmp_path / "sdk"), range(16)))
    assert len(set(copies)) == 1
    names = {p.relative_to(copies[0]).as_posix() for p in copies[0].rglob("*") if p.is_file()}
    assert names == set(sdkdist.files())
    assert not [p for p in (tmp_path / "sdk").iterdir() if p != copies[0]]  # no leftovers


def test_autokitteh_all_brings_autokittehs_all_extra() -> None:
    spec = pyenv.spec_for(b"autokitteh[all] ~= 0.2  # every client helper\nsix\n")
    wanted = spec.requirements.splitlines()
    assert "six" in wanted and "slack-sdk~=3.33" in wanted and "PyGithub~=2.8.1" in wanted
    assert not any(line.lower().startswith("autokitteh") for line in wanted)
    assert spec.skipped == ("autokitteh[all] ~= 0.2  # every client helper",)
    # Without the extra, the SDK line is only skipped.
    assert pyenv.spec_for(b"autokitteh\nsix\n").requirements == "six\n"


def _build(timeout: int = 1800) -> pyenv.Build:
    return pyenv.Build(typing.cast(pyenv.Spec, None), timeout)


def test_an_install_past_its_time_is_stopped_and_says_so() -> None:
    """A package whose build script never ends (or waits on the network for ever) no
    longer holds the environment's lock, and `ak deploy`, for good."""
    build = _build(timeout=1)
    hang = "import time; print('building', flush=True); time.sleep(600)"
    started = time.monotonic()
    with pytest.raises(pyenv.EnvError) as e:
        asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", hang))
    assert time.monotonic() - started < 30
    assert e.value.message.startswith("pip install was stopped: installing the packages took")
    assert "more than 1 s (AK_RUNNER__PACKAGES_TIMEOUT)" in e.value.message
    assert e.value.message.endswith("\nbuilding")


# A build script that takes ~400 MiB, in a child process (counted with its parent), and
# holds it: over a limit of 100 MiB.
_GREEDY = (
    "import subprocess, sys, time\n"
    "print('building', flush=True)\n"
    "child = 'b = bytearray(400 * 1024 * 1024); import time; time.sleep(60)'\n"
    "subprocess.run([sys.executable, '-c', child])\n"
)


@pytest.mark.parametrize("as_user", [False, True], ids=["own session", "own user"])
def test_an_install_over_its_memory_limit_is_stopped_and_says_so(as_user: bool) -> None:
    """A package's build script that takes the host's memory is stopped at the limit, all
    its processes together: by their session (a runner that is not root), or by their
    user (the sandbox), which a process leaving the session does not escape."""
    if as_user and os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    build = pyenv.Build(typing.cast(pyenv.Spec, None), 60, memory_mb=100)
    uid = 779986 if as_user else -1  # outside the workers' range
    started = time.monotonic()
    try:
        with pytest.raises(pyenv.EnvError) as e:
            asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", _GREEDY, uid=uid))
    finally:
        if as_user:
            kill_user(uid)
    assert time.monotonic() - started < 30
    assert re.match(
        r"pip install was stopped: installing the packages used \d+ MiB, more than the 100 "
        r"MiB allowed \(AK_RUNNER__PACKAGES_MEMORY_MB\); give more, or fewer or prebuilt "
        r"packages \(wheels\)\nbuilding$",
        e.value.message,
    ), e.value.message


@pytest.mark.skipif(
    os.geteuid() != 0 or WorkerGroups.find()[0] is None,
    reason="needs root and cgroup v1's memory controller",
)
def test_an_install_is_held_to_its_memory_limit_by_the_kernel() -> None:
    """With a control group per user id, the kernel stops the build's processes at the
    limit as they allocate, before any count of them could: `ak deploy` says so."""
    locks = Path(tempfile.mkdtemp(prefix="ak-uid-locks-"))
    users = UserIds(779984, 779985, locks, groups=WorkerGroups.find()[0])
    build = pyenv.Build(typing.cast(pyenv.Spec, None), 60, memory_mb=100)

    async def run() -> None:
        uid = await users.take(build.memory_mb)
        try:
            argv = (sys.executable, "-c", _GREEDY)
            await pyenv._run(build, "pip install", *argv, uid=uid, users=users)
        finally:
            await users.give_back(uid)

    with pytest.raises(pyenv.EnvError) as e:
        asyncio.run(run())
    assert e.value.message == (
        "pip install was stopped: installing the packages went over the 100 MiB allowed "
        "(AK_RUNNER__PACKAGES_MEMORY_MB), where the kernel stopped a process of it; give "
        "more, or fewer or prebuilt packages (wheels)\nbuilding"
    )
    assert users.groups is not None  # given back: its group is gone
    assert not {779984, 779985} & set(users.groups.leftovers())


def test_a_build_process_in_a_group_of_its_own_is_killed_with_the_rest() -> None:
    """Without the sandbox the build's processes are counted by their session: one that
    moved to a process group of its own is killed with them too (it held its memory after
    `ak deploy` said the build was stopped)."""
    build = pyenv.Build(typing.cast(pyenv.Spec, None), 60, memory_mb=100)
    greedy = (
        "import subprocess, sys\n"
        "child = ('import os, time; os.setpgid(0, 0); print(os.getpid(), flush=True); '\n"
        "         'b = bytearray(400 * 1024 * 1024); time.sleep(60)')\n"
        "subprocess.Popen([sys.executable, '-c', child])\n"
        "import time; time.sleep(60)\n"
    )
    with pytest.raises(pyenv.EnvError, match="used \\d+ MiB, more than the 100 MiB"):
        asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", greedy))
    (pid,) = (int(line) for line in build.lines if line.isdigit())
    # (a zombie until init reaps it)
    wait_until(lambda: _state(pid) in ("Z", "gone"), f"process {pid} to be killed", 5)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_an_installers_output_is_kept_within_bounds() -> None:
    """A chatty build script cannot fill the runner's memory with its output: the first
    lines are kept for `ak deploy`, long lines cut, and an error shows the last ones."""
    build = _build()
    chatty = (
        "import sys\n"
        "for i in range(30_000): print('line', i)\n"
        "print('x' * 50_000)\n"
        "print('the end'); sys.exit(3)\n"
    )
    with pytest.raises(pyenv.EnvError) as e:
        asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", chatty))
    assert len(build.lines) == pyenv.MAX_LINES + 1
    assert build.lines[-1] == "[more output not shown: only the first 5,000 lines]"
    assert e.value.message.startswith("pip install failed (exit code 3)\nline 29987")
    assert e.value.message.endswith("x [cut]\nthe end")


def test_an_install_that_left_a_process_holding_its_output_ends_when_it_does() -> None:
    """What a tool wrote before it ended is read; a process it left behind holding the
    output open does not turn a finished install into a timeout."""
    build = _build(timeout=60)
    leave = (
        "import os, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        "print('installed', flush=True)\n"
    )
    started = time.monotonic()
    asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", leave))
    assert time.monotonic() - started < pyenv.OUTPUT_GRACE + 10
    assert build.lines == ["installed"]


def test_ak_deploy_gets_a_long_output_in_pages(tmp_path: Path) -> None:
    """Each answer to `ak deploy` holds at most PAGE_BYTES of output (one over the NATS
    message limit could not be sent); it asks again for the rest, told "building"."""
    envs = pyenv.PythonEnvs("", tmp_path)
    spec = pyenv.spec_for(b"six\n")
    build = pyenv.Build(spec)
    for i in range(pyenv.MAX_LINES):
        build.say(f"{i:05} " + "y" * 900)
    build.error = "pip install failed"
    build.done.set()
    envs._builds[spec.path] = build
    got, offset, answers = [], 0, 0
    while True:
        res = asyncio.run(envs.prepare(b"six\n", build.token, offset))
        answers += 1
        size = sum(len(line) for line in res["lines"])
        assert size <= pyenv.PAGE_BYTES
        got += res["lines"]
        offset = res["next"]
        if res["state"] != "building":
            break
    assert res["state"] == "failed" and got == build.lines and answers > 5


class _Builders:
    """The sandbox's user ids as a build takes them (none really: the install is faked)."""

    temp = ""

    async def take(self, memory_mb: int = 0) -> int:
        return 779_998

    async def give_back(self, uid: int) -> None:
        pass


async def test_an_environment_pruned_as_a_session_finds_it_ready_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another runner's prune may remove a project environment between the moment a
    session finds it ready and the moment it reads which interpreter it was made from (its
    record beside the venv, removed with it): the session builds it again, as when the
    prune comes a moment later. That FileNotFoundError ended the session in ERROR ("the
    runner failed running this session")."""
    builds: list[str] = []

    async def install(build: pyenv.Build, spec: pyenv.Spec, *_: object) -> None:
        builds.append(spec.path.name)
        (spec.path / "bin").mkdir(parents=True, exist_ok=True)
        (spec.path / "bin" / "python").write_text("")
        spec.base_file.write_text(sys.executable + "\n")

    monkeypatch.setattr(pyenv, "_install", install)
    venvs = pyenv.VenvCache(config.project_venvs(), 1, 0, locks=tmp_path / "venvs-locks")
    users = typing.cast(UserIds, _Builders())
    envs = pyenv.PythonEnvs("", tmp_path / "sdk", users=users, venvs=venvs)
    python, _, kind, held = await envs.hold_python_for(b"six\n", "prj_1")
    assert (python, kind, len(builds)) == (sys.executable, "project", 1) and held is not None
    held.close()
    envs._ready.clear()  # (a session more than READY_SECONDS later)
    real_is_ready = pyenv.is_ready
    pruned: list[str] = []

    def is_ready(spec: pyenv.Spec) -> bool:
        ready = real_is_ready(spec)
        if not pruned:  # the other runner's prune, right after
            pruned.extend(venvs.prune())
        return ready

    monkeypatch.setattr(pyenv, "is_ready", is_ready)
    python, _, kind, held = await envs.hold_python_for(b"six\n", "prj_1")
    assert pruned == [pyenv.spec_for(b"six\n").path.name]
    assert (python, kind, len(builds)) == (sys.executable, "project", 2) and held is not None
    held.close()
