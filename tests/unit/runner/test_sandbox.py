"""The worker sandbox's parts: the environment workers get, user ids, killing a user's
processes, the data home closed to workers."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from ak_runner import sandbox
from ak_runner.sandbox import (
    UserIds,
    as_user,
    children,
    chown_tree,
    has_children,
    has_strangers,
    kill_user,
    open_way_to,
    seal_data_home,
)
from akcore.config import worker_env

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


@pytest.fixture
def python_for_all() -> None:
    """Other users reach this Python, as the runner sees to for its workers' and builders'."""
    open_way_to(Path(sys.executable).resolve())


def test_workers_get_a_minimal_environment() -> None:
    runner = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "HOME": "/root",
        "AK_NATS_URL": "nats://127.0.0.1:4222",
        "AK_DB__DSN": "postgresql://ak:pw@db/ak",
        "DATABASE_URL": "postgresql://ak:pw@db/ak",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=x",
        "MARKER_DIR": "/tmp/m",
    }
    assert worker_env(runner, ("MARKER_DIR", "ABSENT", "AK_DB__DSN")) == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "HOME": "/root",
        "MARKER_DIR": "/tmp/m",
    }


def test_runners_sharing_a_lock_directory_never_share_a_user_id(tmp_path: Path) -> None:
    a, b = UserIds(5000, 5001, tmp_path), UserIds(5000, 5001, tmp_path)
    first, second = a._lock_one(), b._lock_one()
    assert {first, second} == {5000, 5001}
    with pytest.raises(OSError, match="all 2 worker user ids are in use"):
        a._lock_one()


async def test_a_taker_cancelled_while_an_id_is_locked_leaves_none_held(tmp_path: Path) -> None:
    """A session stopped while its worker's user id was being locked (in a thread): the id
    it would have got is freed, not held (with its lock file open) for the runner's life."""
    ids = UserIds(5000, 5000, tmp_path)  # one id: a leaked one would block the next take
    started, go_on, locked = threading.Event(), threading.Event(), threading.Event()
    lock_one = ids._lock_one

    def held_up() -> int:  # the thread is locking when its taker is cancelled
        started.set()
        go_on.wait(10)
        try:
            return lock_one()
        finally:
            locked.set()

    ids._lock_one = held_up  # type: ignore[method-assign]
    taking = asyncio.create_task(ids.take())
    assert await asyncio.to_thread(started.wait, 10)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    go_on.set()
    assert await asyncio.to_thread(locked.wait, 10)  # it got the id, for no one
    other = UserIds(5000, 5000, tmp_path)  # another runner of the machine can have it
    deadline = time.monotonic() + 10
    while True:
        try:
            assert other._lock_one() == 5000
            break
        except OSError:  # the abandoned lock is freed once its thread is done
            assert time.monotonic() < deadline, "the cancelled take kept the id"
            await asyncio.sleep(0.02)
    assert not ids._held


async def test_an_id_is_not_handed_out_while_a_cancelled_take_still_clears_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clear (killing the id's processes, removing its files) goes on in its thread after
    its taker is cancelled: the id stays held until it is done, or a worker given it
    meanwhile would be killed by it."""
    ids = UserIds(5000, 5000, tmp_path)
    clearing, finish = threading.Event(), threading.Event()

    def held_up(uid: int) -> None:
        clearing.set()
        finish.wait(10)

    monkeypatch.setattr(sandbox, "_clear", held_up)
    taking = asyncio.create_task(ids.take())
    assert await asyncio.to_thread(clearing.wait, 10)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    other = UserIds(5000, 5000, tmp_path)  # another runner of the machine
    with pytest.raises(OSError, match="all 1 worker user ids are in use"):
        other._lock_one()
    finish.set()
    deadline = time.monotonic() + 10
    while ids._held:  # freed once the clear is over
        assert time.monotonic() < deadline, "the id stayed held after its clear"
        await asyncio.sleep(0.02)
    assert other._lock_one() == 5000


async def test_a_giver_cancelled_while_an_id_is_cleared_leaves_none_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session stopped just as its worker ended (the memory watch and the worker's exit
    at once) cancels the worker's close while its user id is cleared: the id is freed once
    the clear is over, not held for the runner's life (with one id, no session could run)."""
    ids = UserIds(5000, 5000, tmp_path)
    uid = await ids.take()
    clearing, finish = threading.Event(), threading.Event()

    def held_up(uid: int) -> bool:
        clearing.set()
        finish.wait(10)
        return True

    monkeypatch.setattr(sandbox, "_clear", held_up)
    giving = asyncio.create_task(ids.give_back(uid))
    assert await asyncio.to_thread(clearing.wait, 10)
    giving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await giving
    assert ids._held  # still being cleared: not handed out meanwhile
    finish.set()
    deadline = time.monotonic() + 10
    while ids._held:
        assert time.monotonic() < deadline, "the cancelled give_back kept the id"
        await asyncio.sleep(0.02)
    assert UserIds(5000, 5000, tmp_path)._lock_one() == 5000  # another runner may have it


@root_only
@pytest.mark.usefixtures("python_for_all")
def test_killing_a_user_kills_what_left_its_process_group_and_session() -> None:
    uid = 779989
    mark = f"ak-kill-user-{os.getpid()}"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)' {mark}"
    script = f"{sleeper} & setsid {sleeper} &"  # a child, and one in a session of its own
    subprocess.run(["sh", "-c", script], user=uid, group=uid, extra_groups=[], check=True)
    deadline = time.monotonic() + 10
    while len(_marked(mark)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert kill_user(uid) >= 2
    deadline = time.monotonic() + 5
    while _marked(mark):
        assert time.monotonic() < deadline, "a process of the user survived"
        time.sleep(0.05)


_REAPER = """
import subprocess, sys
from autokitteh import _worker
_worker.become_user(int(sys.argv[1]))
print("started", flush=True)
sys.stdin.readline()  # the test looks: no children
subprocess.Popen(["sh", "-c", 'setsid "$@" &', "sh", *sys.argv[2:]]).wait()
print("littered", flush=True)
sys.stdin.readline()  # the test kills what it left
_worker.reap_children()
print("reaped", flush=True)
sys.stdin.readline()
"""


@root_only
def test_a_worker_of_its_own_user_keeps_what_it_double_forked_among_its_children(
    python_for_all: None,
) -> None:
    uid = 779988
    mark = f"ak-reaper-{os.getpid()}"
    proc = _as_worker(_REAPER, uid, mark)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "started\n"
        assert not has_children(proc.pid)
        _go_on(proc)
        assert proc.stdout.readline() == "littered\n"
        # The daemon's parent ended: it was handed to the worker, not to init. (It may
        # still be between setsid and its exec, briefly without its command line: looked
        # for until it shows, on a busy machine.)
        deadline = time.monotonic() + 5
        while not (daemons := [pid for pid in _marked(mark) if pid != proc.pid]):
            assert time.monotonic() < deadline, "the daemon did not show"
            time.sleep(0.05)
        assert len(daemons) == 1
        assert has_children(proc.pid)
        for pid in daemons:  # (killed: the worker, its reaper, waits for it)
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while [pid for pid in _marked(mark) if pid != proc.pid]:
            assert time.monotonic() < deadline, "a process of the user survived"
            time.sleep(0.05)
        _go_on(proc)
        assert proc.stdout.readline() == "reaped\n"
        assert not has_children(proc.pid)
    finally:
        proc.kill()
        proc.communicate()


_CLONE_PARENT = """
import ctypes, os, signal, sys
from autokitteh import _worker
_worker.become_user(int(sys.argv[1]))
sys.stdin.readline()
libc = ctypes.CDLL(None, use_errno=True)
CLONE_PARENT = 0x00008000
pid = libc.syscall(56, CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)  # x86_64 clone
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
print("littered", pid, flush=True)
sys.stdin.readline()
"""


@root_only
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the clone syscall's number")
def test_a_process_cloned_as_the_workers_sibling_is_seen_as_left_over(
    python_for_all: None,
) -> None:
    """A handler's process made its worker's sibling (``clone(CLONE_PARENT)``) is no child
    of the worker, yet a child of the worker's parent that the parent did not fork:
    ``has_strangers`` finds it (services/runner/worker.py then kills what the user left)."""
    uid = 779987
    mark = f"ak-sibling-{os.getpid()}"
    proc = _as_worker(_CLONE_PARENT, uid, mark)
    assert proc.stdin is not None and proc.stdout is not None
    forks = children(os.getpid())  # what this process forked, the worker among them
    try:
        assert proc.pid in forks and not has_strangers(proc.pid, forks)
        _go_on(proc)  # clone now
        assert proc.stdout.readline().startswith("littered")
        deadline = time.monotonic() + 10
        while not (left := [pid for pid in _marked(mark) if pid != proc.pid]):
            assert time.monotonic() < deadline, "the clone did not start its program"
            time.sleep(0.05)
        assert len(left) == 1  # alive, of the worker's user, and a child of the test's
        assert not has_children(proc.pid)  # not the worker's child...
        assert has_strangers(proc.pid, forks), "the runner would not look for it: it lives on"
    finally:
        kill_user(uid)  # (the worker too)
        proc.kill()
        proc.communicate()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # the sibling was this process's child
                pass
        except ChildProcessError:
            pass


def _as_worker(script: str, uid: int, mark: str) -> subprocess.Popen[str]:
    """``script`` as a worker runs: this process's child, taking user ``uid`` itself, told
    to go on through its stdin; its programs are sleepers carrying ``mark``."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", mark]
    return subprocess.Popen(
        [sys.executable, "-c", script, str(uid), *sleeper],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3] / "libs")},
    )


def _go_on(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def test_a_process_that_cannot_be_read_counts_as_having_children() -> None:
    pid = subprocess.Popen([sys.executable, "-c", "pass"])
    pid.wait()
    assert has_children(pid.pid)  # gone: the caller scans /proc instead


def _marked(mark: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                if "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]:
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_the_data_home_is_closed_but_for_what_workers_read(tmp_path: Path) -> None:
    data = tmp_path / "autokitteh"
    (data / "nats").mkdir(parents=True)
    (data / "venv").mkdir(mode=0o700)
    (data / "venvs").mkdir(mode=0o755)
    (data / "autokitteh.sqlite").write_bytes(b"")
    (data / "autokitteh.sqlite").chmod(0o644)
    seal_data_home(data)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(data) == 0o711  # crossed, not listed
    assert mode(data / "autokitteh.sqlite") == 0o600
    assert mode(data / "nats") & 0o077 == 0
    assert mode(data / "venv") == 0o755
    assert mode(data / "venvs") == 0o711  # each worker reaches its own venv by its path
    assert mode(data / "runner") == mode(data / "runner" / "builds") == 0o711
    assert mode(tmp_path) & 0o001  # the way to it is open


@root_only
@pytest.mark.usefixtures("python_for_all")
def test_a_build_tool_runs_as_its_user_and_writes_files_others_read(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    open_way_to(tmp_path)  # (the test before it opened it, run alone it was not)
    out = tmp_path / "out"
    script = f"import os; print(os.getuid(), os.getgid(), os.getgroups()); open('{out}', 'w')"
    res = subprocess.run(
        as_user(779988, [sys.executable, "-c", script]), capture_output=True, text=True
    )
    assert res.stdout == "779988 779988 []\n" and res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and out.stat().st_uid == 779988
    chown_tree(tmp_path, 0)
    assert out.stat().st_uid == 0


@root_only
@pytest.mark.usefixtures("python_for_all")
def test_a_build_tools_processes_are_bounded() -> None:
    """A fork bomb in a package's build script stops at the builder's process limit."""
    script = (
        "import os, time\n"
        "made = 0\n"
        "try:\n"
        "    for _ in range(50):\n"
        "        if os.fork() == 0:\n"
        "            os.close(1); os.close(2); time.sleep(30); os._exit(0)\n"
        "        made += 1\n"
        "except BlockingIOError:\n"
        "    print('refused after', made)\n"
    )
    try:
        res = subprocess.run(
            as_user(779988, [sys.executable, "-c", script], processes=8),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.stdout == "refused after 7\n", res.stderr
    finally:
        kill_user(779988)


@root_only
@pytest.mark.usefixtures("python_for_all")
def test_a_build_tool_gains_no_privilege_and_holds_nothing_of_the_runners() -> None:
    """A package's build script is anyone's code: as a worker, it keeps no descriptor of
    the runner's (its stdout, maybe a terminal), cannot gain privileges from a setuid
    program, and cannot connect to another user's abstract Unix socket (Linux 6.12)."""
    script = (
        "import os, socket\n"
        "status = open('/proc/self/status').read()\n"
        "print(status.split('NoNewPrivs:')[1].split()[0])\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(b'\\0' + os.environb[b'THEIRS'])\n"
        "    print('connected')\n"
        "except PermissionError:\n"
        "    print('refused')\n"
        "print(os.path.exists('/proc/self/fd/' + os.environ['HELD']))\n"
    )
    name = f"ak-theirs-{os.getpid()}"
    held = os.open("/dev/null", os.O_RDONLY)  # (stands for the runner's stdout)
    os.set_inheritable(held, True)
    try:
        with socket.socket(socket.AF_UNIX) as theirs:
            theirs.bind("\0" + name)
            theirs.listen()
            res = subprocess.run(
                as_user(779988, [sys.executable, "-c", script]),
                capture_output=True,
                text=True,
                close_fds=False,
                env={"THEIRS": name, "HELD": str(held)},
            )
    finally:
        os.close(held)
    assert res.stdout.splitlines() == ["1", "refused", "False"], res.stderr


@root_only
@pytest.mark.usefixtures("python_for_all")
def test_a_build_tool_does_not_see_the_hidden_directory(tmp_path: Path) -> None:
    """Package installs run anyone's build code: as workers, they do not see /run (this
    host's services' Unix sockets)."""
    script = "import os; print(os.listdir('/run'), os.access('/run', os.W_OK))"
    res = subprocess.run(
        as_user(779988, [sys.executable, "-c", script], "/run"), capture_output=True, text=True
    )
    assert res.stdout == "[] False\n", res.stderr
    assert os.listdir("/run")  # the runner's own view is the host's


@root_only
def test_hiding_keeps_the_file_resolv_conf_points_to() -> None:
    """With systemd-resolved or NetworkManager, /etc/resolv.conf leads into /run: names
    must still resolve, through links there too, whatever the runner's umask, and a new
    file renamed over the old one (as they write it) is seen by workers already started."""
    tmp_path = Path(tempfile.mkdtemp(prefix="ak-hide-"))  # (pytest's own is 0700)
    tmp_path.chmod(0o755)
    folder = tmp_path / "run"
    (folder / "resolve").mkdir(parents=True)
    (folder / "resolve" / "stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (folder / "resolve" / "resolv.conf").symlink_to("stub-resolv.conf")
    (folder / "resolv.conf").symlink_to(folder / "resolve" / "resolv.conf")
    (folder / "service.sock").write_text("")
    link = tmp_path / "resolv.conf"
    link.symlink_to(folder / "resolv.conf")  # a chain of two links in there, then the file
    script = (
        "import os, sys\n"
        "from autokitteh import _hide\n"
        "os.umask(0o077)\n"
        "_hide.hide(sys.argv[1], sys.argv[2])\n"
        "os.setresuid(65534, 65534, 65534)\n"  # (a worker reads it as its user)
        "print(sorted(os.listdir(sys.argv[1])), open(sys.argv[2]).read().strip(), flush=True)\n"
        "try:\n"
        "    open(os.path.join(sys.argv[1], 'new'), 'w')\n"
        "except OSError as e:\n"
        "    print(e.errno, flush=True)\n"
        "sys.stdin.readline()\n"
        "print(open(sys.argv[2]).read().strip(), flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(folder), str(link)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        first = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
        assert first == [
            "['resolv.conf', 'resolve'] nameserver 127.0.0.53",
            str(errno.EROFS),
        ], proc.stderr.read() if proc.stderr else ""
        new = folder / "resolve" / ".stub-resolv.conf.new"
        new.write_text("nameserver 10.0.0.2\n")
        new.rename(folder / "resolve" / "stub-resolv.conf")  # (as resolved writes it)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "nameserver 10.0.0.2"
        assert (folder / "service.sock").exists()  # only that process's view changed
    finally:
        proc.kill()
        proc.communicate()  # (and its pipes closed)
        shutil.rmtree(tmp_path)


def _poisoned_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose packages shadow a standard module (``queue.py``) and run a ``.pth``
    file, each leaving ``marker``; and a package of its own, ``theirs``."""
    import venv

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    (site_dir,) = env_dir.glob("lib/python*/site-packages")
    marker = tmp_path / "pwned"
    (site_dir / "queue.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (site_dir / "evil.pth").write_text(f"import os; open({str(marker)!r}, 'a').close()\n")
    (site_dir / "theirs.py").write_text("")
    return env_dir, marker


def test_a_root_start_runs_nothing_of_the_environment(tmp_path: Path) -> None:
    """How a root runner starts a fork server or a worker: the base interpreter isolated,
    the SDK from the runner's copy; no module, ``.pth`` file or package of the venv."""
    from ak_runner.worker import _ISOLATED

    env_dir, marker = _poisoned_venv(tmp_path)
    sdk = tmp_path / "sdk"
    sdk.mkdir()
    (sdk / "probe.py").write_text(
        "import importlib.util, queue\n"
        "print(queue.__file__, importlib.util.find_spec('theirs') is None)\n"
    )
    base = os.path.realpath(sys._base_executable)
    res = subprocess.run(
        [base, "-I", "-S", "-c", _ISOLATED.format("probe"), str(sdk)],
        capture_output=True,
        text=True,
        check=True,
        env={"VIRTUAL_ENV": str(env_dir), "PYTHONPATH": str(env_dir)},
    )
    assert not marker.exists(), res.stdout
    queue_file, no_theirs = res.stdout.split()
    assert queue_file.startswith(sys.base_prefix) and no_theirs == "True", res.stdout


def test_a_worker_opens_its_environment_after_the_standard_library(tmp_path: Path) -> None:
    """Once it is its user, a worker puts the venv's packages on its path after the
    standard library and runs their ``.pth`` files (as that user)."""
    import autokitteh

    env_dir, marker = _poisoned_venv(tmp_path)
    libs = os.path.dirname(os.path.dirname(autokitteh.__file__))
    code = (
        f"import sys; sys.path.append({libs!r}); "
        "from autokitteh._worker import open_packages; "
        f"open_packages({str(env_dir)!r}); "
        "import builtins, queue, theirs; print(queue.__file__, sys.prefix, sys.executable, "
        "all(hasattr(builtins, n) for n in ('exit', 'quit', 'help', 'copyright')))"
    )
    base = os.path.realpath(sys._base_executable)
    res = subprocess.run([base, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    queue_file, prefix, executable, site_builtins = res.stdout.split()
    assert queue_file.startswith(sys.base_prefix), res.stdout  # the standard one
    assert site_builtins == "True"  # exit(), quit(), help() as a plain start has them
    assert prefix == str(env_dir) and executable == str(env_dir / "bin" / "python")
    assert marker.exists()  # its .pth ran (here, as the test's user)


@root_only
def test_giving_a_venv_back_to_root_follows_no_link_and_closes_what_an_installer_opened(
    tmp_path: Path,
) -> None:
    """What an installer (the builder user) can leave in a venv: directories and files
    writable by everyone, set-id bits, a FIFO, links out of the venv. Root takes the venv
    back without touching anything outside it, and leaves nothing open to other users."""
    outside = tmp_path / "outside"
    outside.write_text("root's own file")
    os.chown(outside, 0, 0)
    outside.chmod(0o600)
    venv = tmp_path / "venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "lib").chmod(0o777)
    (venv / "bin").mkdir()
    tool = venv / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4777)
    os.mkfifo(venv / ".ak-env.json")
    (venv / "lib" / "escape").symlink_to(outside)
    (venv / "lib" / "up").symlink_to(tmp_path, target_is_directory=True)
    chown_tree(venv, 779989)  # to the builder: nothing outside changes hands
    assert outside.stat().st_uid == 0 and tool.stat().st_uid == 779989
    chown_tree(venv, 0)
    assert outside.stat().st_uid == 0 and stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert stat.S_IMODE((venv / "lib").stat().st_mode) == 0o755
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755  # no set-uid, not writable by others
    assert not (venv / ".ak-env.json").exists()  # the FIFO is gone
    assert (venv / "lib" / "escape").is_symlink() and (venv / "lib" / "escape").lstat().st_uid == 0


def test_a_marker_that_is_not_a_regular_file_reads_as_none(tmp_path: Path) -> None:
    from ak_runner import pyenv

    spec = pyenv.Spec(tmp_path / "venv", "", "test")
    spec.path.mkdir()
    os.mkfifo(spec.path / pyenv.MARKER)  # read as root, it would block the runner for good
    assert pyenv._marker(spec) == {}
    (spec.path / pyenv.MARKER).unlink()
    (spec.path / pyenv.MARKER).symlink_to("/dev/zero")
    assert pyenv._marker(spec) == {}


# Run as its own user in a fresh interpreter (a fork of pytest would share pytest's pages):
# touches 100 MiB, forks three children that hold the pages, says so, waits for stdin.
_SHARER = """
import os, sys
data = bytearray(100 << 20)
data[::4096] = b"\\x01" * len(data[::4096])
r, w = os.pipe()
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    kids.append(pid)
print("ready", flush=True)
sys.stdin.read(1)
os.write(w, b"xxx")
for pid in kids:
    os.waitpid(pid, 0)
"""


def _python_as(uid: int, script: str, *args: str) -> subprocess.Popen[bytes]:
    """``script`` run by an isolated Python as user ``uid``, its stdin and stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", script, *args],
        user=uid,
        group=uid,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd="/",
    )


@root_only
def test_pages_forked_children_share_count_once() -> None:
    """A handler that touches 100 MiB and forks three children uses about 100 MiB, not 400:
    the memory watch must not stop a legitimate multiprocessing handler."""
    from ak_runner.sandbox import resident_by_user

    uid = 779996  # outside the workers' range: no stack's worker can hold it meanwhile
    proc = _python_as(uid, _SHARER)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        used = resident_by_user([uid])[uid]
    finally:
        proc.communicate(b"x", timeout=30)
    assert 90 << 20 < used < 200 << 20, f"{used >> 20} MiB counted for about 100 MiB"


@root_only
def test_a_freed_user_id_keeps_nothing_of_its_last_worker(tmp_path: Path) -> None:
    """Files a worker left in the shared temporary directories go when its id is freed:
    the next worker given the id may be another project's."""
    from ak_runner.sandbox import remove_files_of

    uid, other = 829995, 829994
    shared = tmp_path / "tmp"
    shared.mkdir()
    mine = shared / "secret.txt"
    mine.write_text("project A's token")
    nested = shared / "cache"
    (nested / "deep").mkdir(parents=True)
    (nested / "deep" / "f").write_text("x")
    theirs = shared / "theirs.txt"
    theirs.write_text("another user's")
    outside = tmp_path / "outside"
    outside.write_text("root's")
    (nested / "link").symlink_to(outside)
    chown_tree(nested, uid)
    os.chown(mine, uid, uid)
    os.chown(theirs, other, other)
    assert remove_files_of(uid, (shared,)) == 2
    assert sorted(p.name for p in shared.iterdir()) == ["theirs.txt"]
    assert outside.read_text() == "root's"  # the link was removed, not followed


# Run as a worker's user: leaves what outlives a process where the next worker given the id
# would find it (a System V shared memory segment, semaphore set and message queue, a POSIX
# message queue, a file in the lock directory and one in another's world-writable
# directory), says so, and waits for stdin with the segment attached.
_LITTER_IPC = """
import ctypes, ctypes.util, os, sys
key, name, shared = int(sys.argv[1], 0), sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_CREAT = 0o1000

def check(what, got):
    if got == -1 or got is None:
        sys.exit(f"{what}: {os.strerror(ctypes.get_errno())}")
    return got

shm = check("shmget", libc.shmget(key, 1 << 20, IPC_CREAT | 0o600))
addr = libc.shmat(shm, None, 0)
check("shmat", -1 if addr in (None, ctypes.c_void_p(-1).value) else 0)
ctypes.memmove(addr, b"project A's token", 17)
check("semget", libc.semget(key, 1, IPC_CREAT | 0o600))
msg = check("msgget", libc.msgget(key, IPC_CREAT | 0o600))
buf = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + 17)
ctypes.c_long.from_buffer(buf).value = 1
buf[ctypes.sizeof(ctypes.c_long):] = b"project A's token"
check("msgsnd", libc.msgsnd(msg, buf, 17, 0))
try:
    mq_open = libc.mq_open
except AttributeError:  # glibc before 2.34
    mq_open = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True).mq_open
check("mq_open", mq_open(f"/{name}".encode(), os.O_CREAT | os.O_RDWR, 0o600, None))
for where in ("/run/lock", shared):
    with open(os.path.join(where, name), "w") as f:
        f.write("project A's token")
print("left", flush=True)
sys.stdin.read(1)
"""


def _ipc_of(uid: int) -> list[tuple[str, dict[str, int]]]:
    from ak_runner.sandbox import sysv_objects_of

    return sysv_objects_of(uid)


@root_only
def test_a_freed_user_id_keeps_no_ipc_object_or_lock_file_of_its_last_worker() -> None:
    """What a worker leaves that outlives its processes (System V IPC objects, POSIX
    message queues, files in /run/lock and in a world-writable directory of another user
    in /tmp) goes when its id is cleared: the next worker given the id, maybe another
    project's, could otherwise attach to the segment or read the queue by its key."""
    from ak_runner.sandbox import _clear, mqueue_dir

    uid = 779995  # outside the workers' range: no stack's worker can hold it meanwhile
    name = f"ak-ipc-{os.getpid()}"
    shared = Path(tempfile.mkdtemp(prefix="ak-shared-", dir="/tmp"))  # like /tmp/.X11-unix
    shared.chmod(0o1777)
    key = hex(0x5EED0000 + os.getpid() % 0xFFFF)
    proc = _python_as(uid, _LITTER_IPC, key, name, str(shared))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"left"
        assert sorted(kind for kind, _ in _ipc_of(uid)) == ["msg", "sem", "shm"]
        queues = mqueue_dir()
        assert queues is not None and (queues / name).exists()
        _clear(uid)  # as a freed id is, its worker gone or not
        assert proc.wait(timeout=30) == -9
        assert _ipc_of(uid) == []
        assert not (queues / name).exists()
        assert not (Path("/run/lock") / name).exists()
        assert not (shared / name).exists() and shared.is_dir()  # another's, kept
    finally:
        proc.kill()
        proc.communicate()
        sandbox.remove_ipc_of(uid)
        (Path("/run/lock") / name).unlink(missing_ok=True)
        if (queues := mqueue_dir()) is not None:
            (queues / name).unlink(missing_ok=True)
        shutil.rmtree(shared, ignore_errors=True)


# Run as a worker's user: makes a 64 MiB System V segment, fills it, detaches and ends; the
# memory stays held by no process.
_SHM_HOG = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0, 64 << 20, 0o1000 | 0o600)  # IPC_PRIVATE: only its id reaches it
addr = libc.shmat(shm, None, 0)
if shm == -1 or addr in (None, ctypes.c_void_p(-1).value):
    sys.exit("no segment")
ctypes.memset(addr, 1, 64 << 20)
libc.shmdt(ctypes.c_void_p(addr))
"""


@root_only
async def test_system_v_shared_memory_a_user_made_counts_against_its_memory_limit() -> None:
    """Segments outlive the processes that made them (12 of 256 MiB, detached, held 3 GB
    past a worker's 1 GiB limit): the memory watch counts those its user made."""
    from ak_runner.sandbox import MemoryWatch, remove_ipc_of, resident_by_user

    uid = 779994
    try:
        made = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-I", "-S", "-c", _SHM_HOG],
            user=uid,
            group=uid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
        )
        assert made.returncode == 0, made.stderr
        assert [kind for kind, _ in _ipc_of(uid)] == ["shm"]  # no process of it runs
        assert resident_by_user([uid])[uid] >= 64 << 20
        watch, reported = MemoryWatch(), asyncio.Event()
        said: list[str] = []
        watch.watch(uid, 32 << 20, lambda what: (said.append(what), reported.set()))
        try:
            await asyncio.wait_for(reported.wait(), 30)
        finally:
            await watch.close()
        what = re.fullmatch(r"its processes and System V memory used (\d+) MiB together", said[0])
        assert what and int(what[1]) >= 64, said
        assert remove_ipc_of(uid) == 1
        assert resident_by_user([uid])[uid] == 0
    finally:
        remove_ipc_of(uid)


# Maps a file and reads every page of it once it has been moved into its group.
_FILE_READER = """
import mmap, sys
sys.stdin.readline()
pages = mmap.mmap(int(sys.argv[1]), 0, prot=mmap.PROT_READ)
sum(pages[i] for i in range(0, len(pages), 4096))
print("read", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or sandbox.WorkerGroups.find()[0] is None,
    reason="needs root and cgroup v1's memory controller",
)
async def test_with_control_groups_pages_charged_to_another_group_do_not_count(
    tmp_path: Path, python_for_all: None
) -> None:
    """Where the kernel holds a user id to its limit, its count is the one that counts: a
    file whose pages another group brought in (as a shared library's are) shows in the
    worker's proportional size, but its group is not charged for them. Summing the sizes
    ended sessions over a limit their group never reached."""
    groups = sandbox.WorkerGroups.find()[0]
    assert groups is not None
    users = UserIds(779980, 779981, tmp_path / "locks", groups=groups)
    (tmp_path / "locks").mkdir()
    data = tmp_path / "pages"
    data.write_bytes(os.urandom(100 << 20))  # cached, charged to this process's group
    uid = await users.take(64)
    opened = os.open(data, os.O_RDONLY)
    reader = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _FILE_READER, str(opened)],
        pass_fds=[opened],
        user=uid,
        group=uid,
        extra_groups=[],
        cwd="/",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdin is not None and reader.stdout is not None
    watch = sandbox.MemoryWatch(users)
    try:
        group = groups.parent / f"u{uid}"
        (group / "cgroup.procs").write_text(str(reader.pid))
        reader.stdin.write("go\n")
        reader.stdin.flush()
        assert await asyncio.to_thread(reader.stdout.readline) == "read\n"
        assert sandbox.resident_by_user([uid])[uid] > 64 << 20  # what a sum would say
        assert int((group / "memory.usage_in_bytes").read_text()) < 64 << 20
        said: list[str] = []
        watch.watch(uid, 64 << 20, said.append)
        assert watch._look(dict(watch._watched)) == {}
        # Without control groups the same processes are counted, and over.
        (what,) = sandbox.MemoryWatch()._look(dict(watch._watched)).values()
        used = re.fullmatch(r"its processes and System V memory used (\d+) MiB together", what)
        assert used and int(used[1]) > 64, what
    finally:
        await watch.close()
        reader.kill()
        reader.communicate()
        os.close(opened)
        await users.give_back(uid)


# A segment anyone may attach (made by the first user, attached by the second until told).
_SHM_SHARED = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
if sys.argv[1] == "make":
    shm = libc.shmget(0, 1 << 20, 0o1000 | 0o666)
    print(shm, flush=True)
    sys.exit(0 if shm != -1 else 1)
addr = libc.shmat(int(sys.argv[2]), None, 0)
print("attached" if addr not in (None, ctypes.c_void_p(-1).value) else "no", flush=True)
sys.stdin.read(1)
"""


@root_only
async def test_an_id_whose_segment_another_user_holds_is_not_handed_out(
    tmp_path: Path,
) -> None:
    """A segment removed while another user's process has it attached lives on, its
    maker's: the id that made it is not handed out until it is gone (its next worker,
    maybe another project's, could attach it again by its id and be charged with it)."""
    from ak_runner.sandbox import UserIds

    maker, holder = 779993, 779992  # outside the workers' range
    made = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _SHM_SHARED, "make"],
        user=maker,
        group=maker,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        check=True,
    )
    shmid = made.stdout.decode().strip()
    proc = _python_as(holder, _SHM_SHARED, "attach", shmid)
    ids = UserIds(maker, maker, tmp_path)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"attached"
        with pytest.raises(OSError, match="worker user ids are in use"):
            await ids.take()  # removed (marked), but attached: not handed out
        assert [kind for kind, _ in _ipc_of(maker)] == ["shm"]
    finally:
        proc.communicate(b"x", timeout=30)
    assert _ipc_of(maker) == []  # detached: gone
    assert await ids.take() == maker
    await ids.give_back(maker)


@root_only
async def test_a_starting_runner_kills_what_ids_no_runner_holds_left_running(
    tmp_path: Path,
) -> None:
    """A runner that died left its handlers' processes running (a runner SIGKILLed, or
    with `ak up`): the next one kills them as it starts, before a replay of their session
    runs the same work beside them; a live runner's workers (their id's lock held) stay."""
    from ak_runner.sandbox import _real_uid

    orphan, held = 779983, 779982  # outside the workers' range
    live = UserIds(held, held, tmp_path)
    assert await live.take() == held  # a live runner's worker holds it
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    procs = [
        subprocess.Popen(as_user(uid, sleeper), start_new_session=True) for uid in (orphan, held)
    ]
    try:
        for p, uid in zip(procs, (orphan, held), strict=True):  # (each has become its user)
            for _ in range(200):
                if _real_uid(p.pid) == uid:
                    break
                await asyncio.sleep(0.02)
        mine = UserIds(held, orphan, tmp_path)
        assert await asyncio.to_thread(mine.sweep) == [orphan]
        assert procs[0].wait(timeout=10) == -signal.SIGKILL
        assert procs[1].poll() is None
    finally:
        for uid in (orphan, held):
            kill_user(uid)
        for p in procs:
            p.wait(timeout=10)


def test_worker_groups_where_cpu_and_memory_are_mounted_together(tmp_path: Path) -> None:
    """Where cgroup v1's cpu and memory controllers share a hierarchy (``-o cpu,memory``),
    the runner's memory and cpu parents are one directory: a user id's group was made twice
    there, and the second ``mkdir`` (FileExistsError) failed every worker's start."""
    from akcore.cgroups import WorkerGroups

    groups = WorkerGroups(tmp_path / "autokitteh-workers", cpu=tmp_path / "autokitteh-workers")
    groups.make(4242, 0)
    assert (tmp_path / "autokitteh-workers" / "u4242").is_dir()
    assert groups.arg == str(tmp_path / "autokitteh-workers")
    groups.remove(4242)
    assert not (tmp_path / "autokitteh-workers" / "u4242").exists()


def test_a_temporary_directory_holding_a_link_workers_run_stays_the_hosts() -> None:
    """A venv's interpreter is a link to the system's (``/tmp/venv/bin/python`` ->
    ``/usr/bin/python3.11``): looked at by where the link leads only, a worker python (or
    the runner's own) in a venv under /tmp was taken for nothing of /tmp, which workers then
    got of their own, empty: the venv's packages and ``sys.executable`` were gone for them."""
    real = os.path.realpath(sys.executable)
    if real.startswith(("/tmp/", "/var/tmp/")):
        pytest.skip("this interpreter is in a temporary directory already")
    venv = Path(tempfile.mkdtemp(prefix="ak-venv-", dir="/tmp"))
    try:
        (venv / "bin").mkdir()
        (venv / "bin" / "python").symlink_to(real)
        found, why = sandbox.private_temps(
            {"the workers' interpreter": str(venv / "bin" / "python")}
        )
        assert os.path.realpath("/tmp") not in found, found
        assert "the workers' interpreter" in why, why
    finally:
        shutil.rmtree(venv)
