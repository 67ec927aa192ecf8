"""Python environments for workers: the default venv, one venv per requirements.txt, or
``AK_WORKER_PYTHON`` as given.

An environment is ready when its marker file names the package list and the SDK version it
was built with; anything else is (re)built: the venv created if missing, the list installed
with pip, the SDK wheel installed last. Builds are shared: ``ak deploy`` starts one and polls
its output (``prepare``), a session that needs one waits for it (``python_for``). A file lock
keeps two runners on one machine from building the same environment at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from akcore import config, sdkdist
from akcore.cgroups import Stops
from akcore.config import (
    ENV_PACKAGES_MEMORY_MB,
    ENV_PACKAGES_MIN_FREE_MB,
    ENV_PACKAGES_TIMEOUT,
    REQUIREMENTS_FILE,
)
from akcore.errors import AKError, InvalidArgument, ResourceExhausted
from packaging.requirements import InvalidRequirement, Requirement

from . import diskroom
from .builds import DirCache, Held, open_lock_file
from .requirements import RequirementsRefused, check_requirements
from .sandbox import (
    TEMP_DIRS,
    UserIds,
    as_user,
    chown_tree,
    kill_session,
    kill_user,
    open_way_to,
    read_small,
    resident_by_user,
    resident_of_session,
)
from .turns import Turns

log = logging.getLogger(__name__)

MARKER = ".ak-env.json"
MIN_PYTHON = (3, 11)
_SDK_LINE_RE = re.compile(r"^\s*autokitteh\s*($|[\[<>=~!;@ ])", re.IGNORECASE)
_PIP = ("-m", "pip", "--disable-pip-version-check", "--no-input")


class EnvError(AKError):
    """A Python environment could not be built; the message ends with pip's last words."""


class RequirementsError(EnvError):
    """A package list holds a line pip must not see: refused before pip runs."""

    kind = InvalidArgument.kind
    exit_code = InvalidArgument.exit_code
    http_status = InvalidArgument.http_status


@dataclass(frozen=True)
class Spec:
    """Which environment a build of a project needs."""

    path: Path
    requirements: str  # what pip installs (lines naming the SDK removed)
    label: str  # for messages: "the default environment" or "requirements.txt <hash>"
    skipped: tuple[str, ...] = ()  # lines naming the SDK

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def base_file(self) -> Path:
        """Where the interpreter the venv was created from is recorded, outside the venv
        (whose files an installer may have replaced): what a root runner starts."""
        return self.path.parent / f".{self.path.name}.python"

    def base_python(self) -> str:
        return self.base_file.read_text().strip()

    @property
    def wanted(self) -> dict[str, str]:
        sha = hashlib.sha256(self.requirements.encode()).hexdigest()[:16]
        return {"requirements": sha, "sdk": sdkdist.digest()}


def default_requirements() -> str:
    """The default package list: the user's copy in the config home, created on first use."""
    path = config.python_requirements()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        shipped = resources.files("akcore").joinpath("python-requirements.txt").read_text()
        path.write_text(shipped)
    return path.read_text()


def without_sdk(text: str) -> tuple[str, list[str]]:
    """The requirements minus lines naming ``autokitteh`` (ours is installed instead)."""
    keep: list[str] = []
    skipped: list[str] = []
    for line in text.splitlines():
        (skipped if _SDK_LINE_RE.match(line) else keep).append(line)
    return "\n".join(keep) + "\n", skipped


def _wants_all(line: str) -> bool:
    """Whether a line naming the SDK asks for its ``all`` extra (``autokitteh[all]``)."""
    text = line.split("#", 1)[0].strip()
    try:
        return "all" in Requirement(text).extras
    except InvalidRequirement:
        return False


def all_extra() -> str:
    """The packages of AutoKitteh's ``autokitteh[all]`` extra, as a package list."""
    return resources.files("akcore").joinpath("python-requirements-all.txt").read_text()


def spec_for(requirements: bytes | None) -> Spec:
    """Raises RequirementsError when the package list holds a line that is not a package."""
    if requirements is None:
        source = str(config.python_requirements())
        text, skipped = _packages(default_requirements(), source)
        return Spec(config.default_venv(), text, "the default environment", tuple(skipped))
    text, skipped = _packages(requirements.decode(errors="replace"), REQUIREMENTS_FILE)
    # Named by the packages as parsed, sorted and once each: a comment, a blank line,
    # spacing or the lines' order made another environment, which a token limited to a
    # project could repeat until the disk was full (``VenvCache`` bounds them all).
    text = "".join(sorted(set(text.splitlines(keepends=True))))
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Spec(config.project_venvs() / key, text, f"{REQUIREMENTS_FILE} {key}", tuple(skipped))


def _packages(text: str, source: str) -> tuple[str, list[str]]:
    """What pip installs (the requirements as parsed, minus the SDK) and the lines naming
    the SDK, as written; the whole list is checked first, so errors name its lines."""
    try:
        check_requirements(text, source)
        kept, skipped = without_sdk(text)
        if any(_wants_all(line) for line in skipped):
            kept += all_extra()
        return check_requirements(kept, source), skipped
    except RequirementsRefused as e:
        raise RequirementsError(f"{e}. Fix it and deploy again") from None


def _marker(spec: Spec) -> dict[str, str]:
    """What the environment was last built with ({} if never finished). Read as root from
    a directory an installer owned: never through a link, never from a FIFO."""
    try:
        marker = json.loads(read_small(spec.path / MARKER))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def is_ready(spec: Spec) -> bool:
    return _marker(spec) == spec.wanted and spec.python.exists() and spec.base_file.is_file()


def _write_new(path: Path, text: str) -> None:
    """Writes ``path`` as root in a directory an installer owned: a link left there is
    replaced, never followed."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with open(fd, "w") as f:
        f.write(text)


# What one environment's installers may take: processes of the builder's user at once
# (a fork bomb in a package's build script), and lines of output kept for `ak deploy`.
BUILDER_PROCESSES = 512
MIB = 1024 * 1024
MEMORY_INTERVAL = 0.5  # seconds between looks at what a build's processes use
MAX_LINES = 5_000
MAX_LINE = 1_000  # characters of one line kept
PAGE_BYTES = 512 * 1024  # of output in one answer to `ak deploy` (it asks for the rest)
KEEP_FINISHED = 600.0  # seconds a finished build's output is kept for `ak deploy`
# characters of output finished builds keep together at most (the oldest forgotten first)
KEEP_OUTPUT = 64 * MIB
OUTPUT_GRACE = 2.0  # seconds output is still read after the tool ended (a process it left)


@dataclass
class Build:
    spec: Spec
    timeout: int = 1800  # seconds (AK_RUNNER__PACKAGES_TIMEOUT)
    memory_mb: int = 0  # its tools' processes together (AK_RUNNER__PACKAGES_MEMORY_MB); 0: none
    env_names: tuple[str, ...] = ()  # of the runner's environment, given too (``tool_env``)
    files: int = 0  # open files of each builder process (AK_RUNNER__WORKER_FILES); 0: the runner's
    lines: list[str] = field(default_factory=list)
    error: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None  # held here so the event loop cannot drop it
    token: str = field(default_factory=lambda: f"{time.time_ns():x}")
    last: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=15))
    deadline: float = 0.0
    finished: float = 0.0  # when it was done (time.monotonic)
    within: frozenset[str] = frozenset()  # the projects of the limited token that asked for it
    # whose turns it may be built in (``Turns``): the first to ask, then others that need it
    holders: list[frozenset[str]] = field(default_factory=list)
    min_free_mb: int = 0  # room kept free on ``disks`` (AK_RUNNER__PACKAGES_MIN_FREE_MB); 0: none
    disks: tuple[tuple[str, str], ...] = ()  # what its tools write to: (a name, a path on it)
    created: bool = False  # whether it made the venv (removed again when it fails)
    size: int = 0  # characters of ``lines``

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def say(self, line: str) -> None:
        line = line if len(line) <= MAX_LINE else line[:MAX_LINE] + " [cut]"
        self.last.append(line)
        if len(self.lines) < MAX_LINES:
            self.lines.append(line)
            self.size += len(line)
        elif len(self.lines) == MAX_LINES:
            self.lines.append(f"[more output not shown: only the first {MAX_LINES:,} lines]")

    def tail(self) -> str:
        """The last lines of output (for an error)."""
        return "\n".join(line for line in self.last if line.strip())


def _base_python() -> str:
    """The first ``python3`` or ``python`` on PATH, as AutoKitteh picks it."""
    for name in ("python3", "python"):
        if found := shutil.which(name):
            return found
    raise EnvError(
        "no python3 or python found in PATH to create the virtual environment: "
        "install Python 3.11+ or set AK_WORKER_PYTHON"
    )


# pip's own settings (an index or mirror the operator chose: PIP_INDEX_URL, ...).
PIP_ENV_PREFIX = "PIP_"


def tool_env(also: tuple[str, ...] = ()) -> dict[str, str]:
    """What pip and the packages' build scripts get of the runner's environment: what a
    worker gets (``config.worker_env``: PATH, HOME, TMPDIR, locale, certificates, proxies,
    and the names ``also`` lists, AK_RUNNER__WORKER_ENV) and pip's own settings (PIP_*),
    nothing else. A build script is anyone's code, and what it prints `ak deploy` shows:
    given the runner's whole environment, one printed the passwords and cloud keys the
    operator's shell held (PGPASSWORD, AWS_SECRET_ACCESS_KEY, a DSN) to the deployer."""
    environ = dict(os.environ)
    env = config.worker_env(environ, also)
    env.update((k, v) for k, v in environ.items() if k.startswith(PIP_ENV_PREFIX))
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


async def _run(
    build: Build, what: str, *argv: str, uid: int = -1, users: UserIds | None = None
) -> None:
    """Runs a tool (as user ``uid`` when one is given, with at most ``BUILDER_PROCESSES``
    processes; not seeing what ``users`` hide, in its control groups), adding its
    output to the build's lines; raises EnvError when it fails or is not done by the
    build's deadline (what the builder left running is then killed by ``_build``)."""
    env = tool_env(build.env_names)
    if uid >= 0:
        env["PIP_NO_CACHE_DIR"] = "1"  # the builder cannot write to HOME
        hidden, groups, temp = ("", "", "") if users is None else users.boxing
        box = (hidden, BUILDER_PROCESSES, groups, build.files, temp, build.memory_mb)
        argv = tuple(as_user(uid, list(argv), *box))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    async def output() -> None:
        while raw := await stdout.readline():
            build.say(raw.decode(errors="replace").rstrip())

    reading = asyncio.create_task(output())

    async def exited() -> int:
        # (Not proc.wait(): asyncio answers it only once the pipe is closed too, and a
        # process the tool left behind may hold it open.)
        while proc.returncode is None:
            await asyncio.sleep(0.05)
        return proc.returncode

    ended = asyncio.create_task(exited())
    over: list[int] = []  # what it used, once over the memory limit (it is killed then)
    held = uid >= 0 and users is not None and users.groups is not None  # by the kernel
    watching = asyncio.create_task(_watch_memory(build, proc.pid, uid, over, held))
    low: list[str] = []  # which disk ran low on room, once one did (it is killed then)
    watching_disks = asyncio.create_task(_watch_disks(build, proc.pid, uid, low))
    try:
        async with asyncio.timeout(max(1.0, build.deadline - time.monotonic())):
            # Until the tool ends, or its output fails (a line over the reader's limit).
            await asyncio.wait({reading, ended}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and reading.exception() is not None:
                raise EnvError(f"{what} failed: it wrote a line over 64 KiB\n{build.tail()}")
            code = await ended
        # What it wrote before it ended, not what a process it left holds open.
        await asyncio.wait({reading}, timeout=OUTPUT_GRACE)
    except (TimeoutError, EnvError) as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if isinstance(e, EnvError):
            raise
        raise EnvError(
            f"{what} was stopped: installing the packages took more than "
            f"{build.timeout} s ({ENV_PACKAGES_TIMEOUT}); give more time, or fewer or "
            f"prebuilt packages (wheels)\n{build.tail()}"
        ) from None
    finally:
        watching.cancel()
        watching_disks.cancel()
        if not reading.done():  # (a process it left holds the pipe: let it go)
            reading.cancel()
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(ended, 10)  # (killed: reaped at once)
    if low:
        raise EnvError(
            f"{what} was stopped: {low[0]}, less than the {build.min_free_mb} MiB kept free "
            f"for the services ({ENV_PACKAGES_MIN_FREE_MB}); free some room and deploy "
            f"again\n{build.tail()}"
        )
    if over:
        raise EnvError(
            f"{what} was stopped: installing the packages used {over[0] // MIB} MiB, more "
            f"than the {build.memory_mb} MiB allowed ({ENV_PACKAGES_MEMORY_MB}); give more, "
            f"or fewer or prebuilt packages (wheels)\n{build.tail()}"
        )
    if uid >= 0 and users is not None and users.stops(uid).over_since(Stops()):
        raise EnvError(
            f"{what} was stopped: installing the packages went over the {build.memory_mb} "
            f"MiB allowed ({ENV_PACKAGES_MEMORY_MB}), where the kernel stopped a process of "
            f"it; give more, or fewer or prebuilt packages (wheels)\n{build.tail()}"
        )
    if code != 0:
        raise EnvError(f"{what} failed (exit code {code})\n{build.tail()}")


async def _watch_memory(
    build: Build, pid: int, uid: int, over: list[int], held: bool = False
) -> None:
    """Kills the tool and what it started once they use more than the build's memory
    limit together (counted by their user, when they have one of their own, else by the
    session they were started in), saying what they used in ``over``. Looked at twice a
    second, as a worker's memory is: a build that grabs more than the machine has within
    half a second is for the kernel to stop. Not counted where the kernel ``held`` their
    user to the limit (a control group of its own): its count is exact where a sum of
    processes' sizes is not (``sandbox.MemoryWatch``)."""
    if build.memory_mb <= 0 or held:
        return
    limit = build.memory_mb * MIB
    while True:
        await asyncio.sleep(MEMORY_INTERVAL)
        if uid >= 0:
            used = (await asyncio.to_thread(resident_by_user, [uid])).get(uid, 0)
        else:
            used = await asyncio.to_thread(resident_of_session, pid)
        if used > limit:
            over.append(used)
            await asyncio.to_thread(_kill_tools, pid, uid)
            return


def _kill_tools(pid: int, uid: int) -> None:
    """Kills the tool started as ``pid`` and whatever it started: every process of its
    user ``uid`` (whatever group or session they moved to), or, without one (-1), of the
    session it was started in (whatever group they moved to)."""
    if uid >= 0:
        kill_user(uid)
    else:
        kill_session(pid)


async def _watch_disks(build: Build, pid: int, uid: int, low: list[str]) -> None:
    """Kills the tool and what it started once a disk they write to has less room left
    than the build keeps free (``diskroom.low``), saying which in ``low``; looked at as
    often as their memory."""
    if build.min_free_mb <= 0:
        return
    while True:
        await asyncio.sleep(MEMORY_INTERVAL)
        if found := await asyncio.to_thread(diskroom.low, build.disks, build.min_free_mb):
            low.append(found)
            await asyncio.to_thread(_kill_tools, pid, uid)
            return


LOCKS = "venv-locks"  # in the data home: the runner's user's alone


def lock_file(spec: Spec) -> Path:
    """The file runners lock while one of them builds ``spec``'s environment, in a directory
    of the runner's user alone (``config.private_dir``). It was a 0644 file beside the venv,
    on a path every worker reaches: a handler of any project opened it and held it
    (``flock`` takes a file opened only to read), and no runner could build that
    environment again (the default one, after an upgrade or a change of its list)."""
    return _lock_path(spec.path.name)


def _lock_path(name: str) -> Path:
    return config.private_dir(config.data_home() / LOCKS) / f"{name}.lock"


class VenvCache(DirCache):
    """The projects' environments (``config.project_venvs()``: a venv each, named by its
    package list), kept as unpacked builds are (``DirCache``): a session holds its
    environment from before its worker starts until its attempt ends, and the environments
    no session holds are removed when unused for ``idle`` seconds, then the least recently
    used while all of them take more than ``max_bytes``. One removed is built again when a
    session or a deploy needs it. Never removed: one being built (its build lock), and the
    default environment, which lives elsewhere. Before, every venv stayed for good: a token
    limited to one project could deploy one ``requirements.txt`` after another (a comment
    more was another venv) until the data home's disk was full."""

    what = "project environments"

    def _leftover(self, name: str) -> bool:
        return name.startswith(".removing-")  # (not ``.<name>.python``: ``Spec.base_file``)

    @contextlib.contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        fd = open_lock_file(_lock_path(name))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while a runner builds it
            yield
        finally:
            os.close(fd)  # (the lock file stays: a builder may wait on it)

    def _detach(self, name: str) -> None:
        (self.root / f".{name}.python").unlink(missing_ok=True)

    def _stamp(self, name: str) -> object | None:
        """Its marker, as the build that finished it wrote it (None: not whole, being
        built). Measured once, while a runner built it, a venv kept the size of its first
        files for as long as the runner that measured it ran: the runners of one data home
        measure each other's."""
        try:
            st = os.stat(self.root / name / MARKER, follow_symlinks=False)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns)

    def hold(self, name: str) -> Held | None:
        """As ``DirCache.hold``, and None too while the environment is not whole: removed
        and being built again by another runner (whose build has not written its marker
        yet), which this runner, having found it ready a moment before, would not see."""
        held = super().hold(name)
        if held is not None and (build := self._stamp(name)) is None:
            held.close()
            return None
        if held is not None:
            held.build = build  # (workers started on an earlier build are not this one's)
        return held


@contextlib.asynccontextmanager
async def _file_lock(path: Path, build: Build) -> AsyncIterator[None]:
    """``path`` locked for ``build``: a wait is said in its output and lasts no longer than
    a build may (another runner's build holds it at most that long)."""
    fd = open_lock_file(path)
    with open(fd, "r+b") as f:
        limit = build.timeout + 60
        give_up = time.monotonic() + limit
        said = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    said = True
                    build.say("waiting for another runner that is building this environment")
                if time.monotonic() > give_up:
                    raise EnvError(
                        f"another runner has held the lock of {build.spec.label} for over "
                        f"{limit} s ({ENV_PACKAGES_TIMEOUT}): is it stuck? Restart it and "
                        "deploy again"
                    ) from None
                await asyncio.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


async def _build(build: Build, users: UserIds | None) -> None:
    """Builds the environment; with ``users`` (the sandbox), packages are installed by a
    user id of their own, which owns the environment only while they install: what their
    installers run cannot touch anything else, and the workers cannot change it after."""
    spec = build.spec
    async with _file_lock(lock_file(spec), build):
        if is_ready(spec):  # another runner built it while we waited
            return
        build.deadline = time.monotonic() + build.timeout  # (not counting that wait)
        if low := await asyncio.to_thread(diskroom.low, build.disks, build.min_free_mb):
            raise EnvError(
                f"{spec.label} was not built: {low}, less than the {build.min_free_mb} MiB "
                f"kept free for the services ({ENV_PACKAGES_MIN_FREE_MB}); free some room "
                "and deploy again"
            )
        builder = -1
        if users is not None:
            builder = await users.take(max(0, build.memory_mb))
        failed = True
        try:
            await _install(build, spec, builder, users)
            failed = False
        finally:
            if users is not None:
                # What an installer left running dies first: it cannot change the venv
                # while root takes it back.
                await asyncio.to_thread(kill_user, builder)
                if spec.path.exists():
                    await asyncio.to_thread(chown_tree, spec.path, 0)
                await users.give_back(builder)
            if failed and build.created:  # (of no use; what a build script wrote there)
                await asyncio.to_thread(_remove_venv, spec)
        _write_new(spec.path / MARKER, json.dumps(spec.wanted))
        build.say(f"{spec.label} is ready: {spec.python}")


async def _install(build: Build, spec: Spec, builder: int, users: UserIds | None = None) -> None:
    """Creates the venv (with the base Python alone) and installs into it, as ``builder``
    of ``users`` (boxed in as workers are)."""
    if not spec.python.exists() or not spec.base_file.is_file():
        shutil.rmtree(spec.path, ignore_errors=True)
        _make_parent(spec)
        build.created = True
        base = _base_python()
        build.say(f"creating {spec.label} at {spec.path} with {base}")
        await _run(build, "python -m venv", base, "-m", "venv", str(spec.path))
        # Asked while root alone has written the venv: later, its files are not trusted.
        _write_new(spec.base_file, await _check_version(build, spec) + "\n")
    else:
        build.say(f"updating {spec.label} at {spec.path}")
    if builder >= 0:
        # (The recorded interpreter, never bin/python: an installer may have made it a link.)
        await asyncio.to_thread(open_way_to, Path(spec.base_python()))
        await asyncio.to_thread(chown_tree, spec.path, builder)
    marker = _marker(spec)
    wanted = spec.wanted
    py = str(spec.python)
    if marker.get("requirements") != wanted["requirements"]:
        for line in spec.skipped:
            build.say(f"skipping {line.strip()!r}: the SDK comes from this server")
        req = spec.path / "ak-requirements.txt"
        _write_new(req, spec.requirements)
        if any(
            ln.strip() and not ln.lstrip().startswith("#") for ln in spec.requirements.splitlines()
        ):
            build.say("installing packages (pip install -r requirements)")
            await _run(
                build,
                "pip install",
                py,
                *_PIP,
                "install",
                "--progress-bar",
                "off",
                "-r",
                str(req),
                uid=builder,
                users=users,
            )
    if marker.get("sdk") != wanted["sdk"] or marker.get("requirements") != wanted["requirements"]:
        build.say(f"installing the autokitteh SDK {sdkdist.version()}")
        # (Not in /tmp: the builder's is its own. Root's: no installer's process left
        # running can put a link where root writes the wheel.)
        wheels = config.data_home() / "runner"
        wheels.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sdk-wheel-", dir=wheels) as tmp:
            Path(tmp).chmod(0o755)  # for the builder
            wheel = sdkdist.build_wheel(Path(tmp))
            await _run(
                build,
                "installing the SDK",
                py,
                *_PIP,
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                "--force-reinstall",
                str(wheel),
                uid=builder,
                users=users,
            )


def _remove_venv(spec: Spec) -> None:
    """Removes a venv a failed build made, never following a link (``shutil.rmtree`` works
    relative to each directory it holds open): what the build's scripts wrote there took
    the data home's disk for good, one venv per requirements.txt."""
    shutil.rmtree(spec.path, ignore_errors=True)
    spec.base_file.unlink(missing_ok=True)


def _make_parent(spec: Spec) -> None:
    """Makes the directory of ``spec``'s venv; that of the projects' venvs workers may cross
    but not list (each reaches its own by its path): listed, it named every environment
    of every project, and which of their locks to hold."""
    parent = spec.path.parent
    parent.mkdir(parents=True, exist_ok=True)
    if parent == config.project_venvs():
        parent.chmod(0o711)


async def _check_version(build: Build, spec: Spec) -> str:
    """The venv's base interpreter (its real path), once its version is checked."""
    proc = await asyncio.create_subprocess_exec(
        str(spec.python),
        "-I",
        "-c",
        "import os, sys; print('%d.%d' % sys.version_info[:2]); "
        "print(os.path.realpath(sys._base_executable))",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    version, _, base = out.decode().strip().partition("\n")
    found = tuple(int(x) for x in version.split(".") if x.isdigit())
    if found < MIN_PYTHON:
        shutil.rmtree(spec.path, ignore_errors=True)
        need = ".".join(map(str, MIN_PYTHON))
        raise EnvError(
            f"the Python found in PATH is {version or 'unknown'}, workers need "
            f"{need}+: put a newer python3 first in PATH or set AK_WORKER_PYTHON"
        )
    return base


def _disks(users: UserIds | None) -> tuple[tuple[str, str], ...]:
    """The disks a build writes to (a name, a path on it): the data home's (the venv), and
    the machine's temporary directories an install does not get of its own."""
    own = users.temp.split(os.pathsep) if users is not None and users.temp else []
    temps = tuple((t, t) for t in TEMP_DIRS if os.path.realpath(t) not in own)
    return (("the data home", str(config.data_home())), *temps)


class PythonEnvs:
    """The runner's environments, by requirements; shared by all its sessions."""

    READY_SECONDS = 10.0

    def __init__(
        self,
        worker_python: str,
        sdk_copies: Path,
        users: UserIds | None = None,
        timeout: int = 1800,
        memory_mb: int = 0,
        env_names: tuple[str, ...] = (),
        files: int = 0,
        builds: int = 2,
        min_free_mb: int = 0,
        venvs: VenvCache | None = None,
    ) -> None:
        """``timeout``: seconds installing one environment may take
        (``AK_RUNNER__PACKAGES_TIMEOUT``); ``memory_mb``: what its processes may use
        together (``AK_RUNNER__PACKAGES_MEMORY_MB``, 0: no limit); ``env_names``: of the
        runner's environment, what its tools get besides a worker's minimum and pip's
        settings (``AK_RUNNER__WORKER_ENV``); ``files``: open files each process of a
        sandboxed install may have, as a worker's (``AK_RUNNER__WORKER_FILES``); ``builds``:
        environments installed at once (``AK_RUNNER__PACKAGES_BUILDS``), the others wait
        their turn; ``min_free_mb``: room installs leave on the disks they write to
        (``AK_RUNNER__PACKAGES_MIN_FREE_MB``, 0: not watched); ``venvs``: the projects'
        environments, pruned after each build (None: never)."""
        self.worker_python = worker_python
        self.sdk_copies = sdk_copies
        self.users = users  # the sandbox: packages are installed as a user of their own
        self.timeout, self.memory_mb = timeout, memory_mb
        self.env_names, self.files = env_names, files
        self.builds, self.min_free_mb = builds, min_free_mb
        self.venvs = venvs
        self._turns = Turns(builds)
        self._builds: dict[Path, Build] = {}
        self._ready: dict[bytes | None, tuple[float, tuple[str, dict[str, str], str]]] = {}

    def _start(self, spec: Spec, within: frozenset[str] = frozenset()) -> Build:
        running = self._builds.get(spec.path)
        if running is not None and not running.done.is_set():
            if within not in running.holders:  # (it may take this one's turn: ``Turns``)
                running.holders.append(within)
                self._turns.joined()
            return running
        self._forget_finished()
        build = Build(
            spec, self.timeout, self.memory_mb, env_names=self.env_names, files=self.files
        )
        build.within, build.min_free_mb = within, self.min_free_mb
        build.holders = [within]
        build.disks = _disks(self.users)
        self._builds[spec.path] = build

        async def go() -> None:
            try:
                async with self._turns.turn(build.holders, build.say):
                    await _build(build, self.users)
                if self.venvs is not None and spec.path.parent == self.venvs.root:
                    # (Measured again: the build wrote its marker anew, ``VenvCache._stamp``.)
                    await self.prune(keep=spec.path.name)  # (before its deploy is told)
            except EnvError as e:
                build.error = e.message
            except Exception as e:  # a bug or the disk: still one clear answer
                log.exception("building %s failed", spec.path)
                build.error = f"building {spec.label} failed: {e}"
            finally:
                build.finished = time.monotonic()
                build.done.set()

        build.task = asyncio.create_task(go())
        return build

    def _forget_finished(self) -> None:
        """Forgets the output of finished builds after ``KEEP_FINISHED``, and of the oldest
        first while all of it is over ``KEEP_OUTPUT``: each keeps up to 5 MB, and a build
        that prints that much and fails takes seconds, so one token kept starting them and
        the runner (every project's) grew by hundreds of megabytes for ten minutes."""
        now = time.monotonic()
        finished = sorted(
            (b for b in self._builds.values() if b.done.is_set()), key=lambda b: b.finished
        )
        kept = sum(b.size for b in finished)
        for old in finished:
            if now - old.finished <= KEEP_FINISHED and kept <= KEEP_OUTPUT:
                break
            kept -= old.size
            del self._builds[old.spec.path]

    def _one_at_a_time(self, within: frozenset[str], spec: Spec) -> None:
        """Refuses a new build for a token limited to the projects ``within`` while another
        of theirs is not done here: one such token cannot fill every turn, nor the line."""
        for other in self._builds.values():
            if other.within == within and not other.done.is_set() and other.spec != spec:
                raise ResourceExhausted(
                    f"{other.spec.label} is still being built on this runner for this API "
                    "token's projects, and they get one build at a time: let that deploy "
                    "end, then deploy again"
                )

    async def python_for(
        self, requirements: bytes | None, project_id: str = ""
    ) -> tuple[str, dict[str, str], str]:
        """The interpreter for a session's worker, what to add to its environment, and which
        kind of environment it is (``given``, ``default`` or ``project``). An environment
        found ready is not checked again for ``READY_SECONDS`` (nor until the next deploy).
        One that must be built is built in the turns of the session's project
        (``project_id``): one at a time for it."""
        now = time.monotonic()
        known = self._ready.get(requirements)
        if known is None or now - known[0] >= self.READY_SECONDS:
            found = await self._python_for(requirements, project_id)
            known = self._ready[requirements] = (now, found)
        python, extra_env, kind = known[1]
        return python, dict(extra_env), kind  # the caller adds to the environment

    async def hold_python_for(
        self, requirements: bytes | None, project_id: str = ""
    ) -> tuple[str, dict[str, str], str, Held | None]:
        """``python_for``, and a hold on the project environment it gives (None for another
        kind) that keeps it from being pruned until the session lets go of it
        (``Held.close``). One pruned meanwhile is built again."""
        for _ in range(3):
            try:
                python, extra_env, kind = await self.python_for(requirements, project_id)
            except FileNotFoundError:  # (its record, as it was found ready: pruned since)
                if self.venvs is None or requirements is None or self.worker_python:
                    raise
            else:
                if kind != "project" or self.venvs is None:
                    return python, extra_env, kind, None
                held = self.venvs.hold(Path(extra_env["VIRTUAL_ENV"]).name)  # (no thread)
                if held is not None:
                    return python, extra_env, kind, held
            self._ready.pop(requirements, None)  # removed since (by a prune): built again
        raise EnvError(
            f"{spec_for(requirements).label} keeps being removed from the runner's disk as "
            "soon as it is built: raise AK_RUNNER__VENVS_MB"
        )

    async def prune(self, keep: str = "") -> None:
        """Removes the project environments that ``VenvCache`` says no session needs."""
        if self.venvs is None:
            return
        try:
            removed = await asyncio.to_thread(self.venvs.prune, keep)
        except Exception as e:  # (the disk): the next prune tries again, the build stands
            log.warning("pruning project environments failed: %s", e)
            return
        if removed:
            self._ready.clear()

    async def _python_for(
        self, requirements: bytes | None, project_id: str
    ) -> tuple[str, dict[str, str], str]:
        if self.worker_python:
            copy = await asyncio.to_thread(sdkdist.write_copy, self.sdk_copies)
            return self.worker_python, {"PYTHONPATH": str(copy)}, "given"
        spec = await asyncio.to_thread(spec_for, requirements)
        if not is_ready(spec):
            log.info("building %s for a session", spec.path)
            build = self._start(spec, frozenset({project_id} if project_id else ()))
            await build.done.wait()
            if build.error:
                raise EnvError(build.error)
        bindir = str(spec.path / "bin")
        path = os.pathsep.join(p for p in (bindir, os.environ.get("PATH", "")) if p)
        kind = "default" if requirements is None else "project"
        # The sandbox starts workers (as root) with the interpreter the venv was made from,
        # never with a file of the venv: an installer could have replaced any of them.
        python = spec.base_python() if self.users is not None else str(spec.python)
        return python, {"VIRTUAL_ENV": str(spec.path), "PATH": path}, kind

    async def prepare(
        self,
        requirements: bytes | None,
        token: str,
        offset: int,
        within: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """For ``ak deploy``: starts the environment's build when needed and reports on it.
        ``within``: the projects of a token limited to them, which get one build at a time
        (ResourceExhausted while another of theirs is not done)."""
        self._ready.clear()  # the package lists may have changed: look again
        # Checked even when not installed: a list refused in production is refused here too.
        spec = await asyncio.to_thread(spec_for, requirements)
        if self.worker_python:
            return {"state": "ready", "python": self.worker_python, "worker_python": True}
        build = self._builds.get(spec.path)
        if build is None or build.token != token:
            if is_ready(spec) and (build is None or build.done.is_set()):
                return {"state": "ready", "python": str(spec.python), "path": str(spec.path)}
            if within and (build is None or build.done.is_set()):
                self._one_at_a_time(within, spec)
            build = self._start(spec, within)
            offset = 0
        state = "building" if not build.done.is_set() else "failed" if build.error else "ready"
        page: list[str] = []
        size = 0
        for line in build.lines[offset:]:  # (at least one line: each is short)
            size += len(line) + 8
            if page and size > PAGE_BYTES:
                state = "building"  # more to show: `ak deploy` asks again
                break
            page.append(line)
        return {
            "state": state,
            "token": build.token,
            "lines": page,
            "next": offset + len(page),
            "error": build.error,
            "python": str(spec.python),
            "path": str(spec.path),
        }
