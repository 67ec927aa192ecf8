"""Handlers boxed in: a handler cannot read the data home, the runner's environment or
another build; it gets no setting of the system's; memory, time and the processes it
leaves behind are bounded; its output goes to its session, not to the service log."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from akcore.cgroups import WorkerGroups
from autokitteh import _hide

from tests.helpers import Stack, start_stack, wait_until, write_project

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the worker sandbox needs the runner to run as root"
)

MANIFEST = """\
version: v1
project:
  name: boxed
"""

CODE = """\
import os
import subprocess
import sys
import time


def _try(what, fn):
    try:
        fn()
        print(what, "allowed")
    except PermissionError:
        print(what, "denied")
    except FileNotFoundError:
        print(what, "hidden")


def probe(event):
    home = event.data["data_home"]
    _try("key", lambda: open(os.path.join(home, "secrets.key"), "rb").read(1))
    _try("database", lambda: open(os.path.join(home, "autokitteh.sqlite"), "rb").read(1))
    _try("nats", lambda: os.listdir(os.path.join(home, "nats")))
    _try("builds", lambda: os.listdir(os.path.join(home, "runner", "builds")))
    _try("environ", lambda: open(f"/proc/{event.data['runner']}/environ", "rb").read(1))
    leaks = sorted(
        k for k, v in os.environ.items()
        if k.startswith(("AK_", "OTEL_")) or "nats://" in v or "sqlite:" in v or "postgres" in v
    )
    print("leaks", leaks)
    print("root", os.getuid() == 0)


def hog(event):
    big = bytearray(1536 * 1024 * 1024)
    return len(big)


def hogs(event):
    # Three processes of 300 MiB each: each alone is under the 512 MiB limit.
    code = "import time; data = b'x' * (300 << 20); print('filled', flush=True); time.sleep(1000)"
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    for child in children:
        child.wait()


def shm_file(event):
    # 800 MiB in a file of /dev/shm: memory no process of it holds, over the 512 MiB limit.
    with open(f"/dev/shm/ak-fill-{os.getpid()}", "wb") as f:
        for _ in range(800):
            f.write(b"x" * (1 << 20))
    print("all written")


def peek_groups(event):
    # The other workers' control groups (a spare's at least): what runs there, which /proc
    # hides from this user, and how much memory it holds.
    mine = next(line.split(":", 2)[2] for line in open("/proc/self/cgroup")
                if "memory" in line.split(":")[1].split(","))
    parent, own = os.path.split("/sys/fs/cgroup/memory" + mine.strip())
    others = [n for n in os.listdir(parent) if n.startswith("u") and n != own]
    print("others", bool(others))
    for name in others:
        for what in ("cgroup.procs", "memory.stat", "memory.limit_in_bytes"):
            try:
                open(os.path.join(parent, name, what)).read()
                print("read", name, what)
            except PermissionError:
                pass
        try:
            open(os.path.join(parent, name, "cgroup.procs"), "w").write(str(os.getpid()))
            print("moved into", name)
        except PermissionError:
            pass


def spin(event):
    while True:
        time.sleep(0.05)


def litter(event):
    mark = event.data["mark"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(1000)", mark]
    subprocess.Popen(sleeper)
    # Double-forked into a session of its own: out of the worker's process group.
    subprocess.Popen(["sh", "-c", 'setsid "$@" &', "sh", *sleeper]).wait()
    print("littered")
    time.sleep(1000)


def litter_and_return(event):
    sleeper = [sys.executable, "-c", "import time; time.sleep(1000)", event.data["mark"]]
    subprocess.Popen(["sh", "-c", 'setsid "$@" &', "sh", *sleeper]).wait()
    print("left one behind")


def litter_leaderless(event):
    # A process whose main thread exits while another runs: /proc says "State: Z" of it.
    # Its other thread says "x" once the main thread is gone (joined: glibc lets it).
    code = chr(10).join([
        "import ctypes, os, threading, time",
        "libc = ctypes.CDLL(None)",
        "libc.pthread_self.restype = ctypes.c_ulong",
        "main = ctypes.c_ulong(libc.pthread_self())",
        "def watch():",
        "    libc.pthread_join(main, None)",
        "    os.write(1, b'x')",
        "    time.sleep(1000)",
        "threading.Thread(target=watch).start()",
        "libc.syscall(60, 0)",  # x86_64 exit: the main thread alone
    ])
    argv = [sys.executable, "-c", code, event.data["mark"]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    print("left a leaderless one behind", proc.stdout.read(1) == b"x")


def litter_as_sibling(event):
    # A process made its worker's parent's child (clone with CLONE_PARENT): no child of
    # the worker, and of the worker's user.
    import ctypes, signal
    sleeper = [sys.executable, "-c", "import time; time.sleep(1000)", event.data["mark"]]
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.syscall(56, 0x00008000 | signal.SIGCHLD, 0, 0, 0, 0)  # x86_64 clone
    if pid == 0:
        os.execv(sleeper[0], sleeper)
    print("left a sibling behind", pid > 0)


def fds(event):
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            print(fd, os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # (the listing's own descriptor, closed meanwhile)


def abstract(event):
    import socket
    for name in (event.data["theirs"], "ak-own-" + event.data["theirs"]):
        if name.startswith("ak-own-"):  # a socket of the handler's own: its to use
            mine = socket.socket(socket.AF_UNIX)
            mine.bind("\\0" + name)
            mine.listen()
        client = socket.socket(socket.AF_UNIX)
        try:
            client.connect("\\0" + name)
            print(name[:7], "connected")
        except OSError as e:
            print(name[:7], "refused", e.errno)


def pathsock(event):
    import socket
    for path in event.data["paths"]:
        client = socket.socket(socket.AF_UNIX)
        try:
            client.connect(path)
            print(path, "connected")
        except OSError as e:
            print(path, "refused", e.errno)
    print("run holds", sorted(os.listdir("/run")))
    print("hosts", socket.getaddrinfo("localhost", 80)[0][4][1])


def procs(event):
    pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    print("self", os.getpid() in pids)
    print("init", 1 in pids)
    print("runner", event.data["runner"] in pids)
    try:
        open(f"/proc/{event.data['runner']}/cmdline", "rb").read()
        print("runner's command line read")
    except OSError:
        print("runner's command line refused")


def chatty(event):
    mark = event.data["mark"]
    print("print", mark)
    sys.stderr.write(f"stderr {mark}\\n")
    os.write(1, f"fd1 {mark}\\n".encode())
    return 1
"""


@pytest.fixture(scope="module", params=["1", "0"], ids=["forked", "started"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A stack whose workers are forked by a fork server, or each started anew."""
    # Not under pytest's own directory: a pytest starting meanwhile makes that 0700 again,
    # and the workers' users could no longer reach their builds.
    home = Path(tempfile.mkdtemp(prefix="ak-sandbox-"))
    s = start_stack(
        home,
        {
            "AK_RUNNER__WORKER_MEMORY_MB": "512",
            "AK_RUNNER__SESSION_TIMEOUT": "10",
            "AK_RUNNER__FORK_WORKERS": request.param,
        },
    )
    s.deploy(write_project(home / "boxed", {"autokitteh.yaml": MANIFEST, "box.py": CODE}))
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


def _start(stack: Stack, function: str, **inputs: object) -> str:
    args = [f"{k}={json.dumps(v)}" for k, v in inputs.items()]
    flags = [x for a in args for x in ("-I", a)]
    res = stack.ak("session", "start", "-o", "boxed", "-p", f"box.py:{function}", *flags)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().removeprefix("session_id: ")


def _prints(stack: Stack, sid: str) -> list[str]:
    return stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()


def _data_home(stack: Stack) -> Path:
    return Path(stack.env["XDG_DATA_HOME"]) / "autokitteh"


def test_the_banner_says_how_handlers_are_boxed_in(stack: Stack) -> None:
    assert "[ak] Sandbox:   workers run as user ids 820000-829999" in stack.output()
    if _kernel_holds_memory():
        assert "; limits: memory 512 MiB (held by the kernel), session timeout" in stack.output()
    else:
        assert "; limits: memory 512 MiB (counted twice a second: " in stack.output()
    assert "; this host's Unix sockets in /run hidden; network: " in stack.output()


def test_a_handler_cannot_read_the_data_home_or_the_runners_environment(stack: Stack) -> None:
    home = _data_home(stack)
    runner = stack.pids("runner")[0]
    for secret in (home / "secrets.key", home / "autokitteh.sqlite"):
        assert secret.is_file()  # there to be read, by the services alone
    sid = _start(stack, "probe", data_home=str(home), runner=runner)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert _prints(stack, sid) == [
        "key denied",
        "database denied",
        "nats denied",
        "builds denied",
        "environ hidden" if _hide.own_proc() else "environ denied",  # (/proc with hidepid)
        "leaks []",
        "root False",
    ]


def test_a_handler_over_the_memory_limit_ends_in_error_naming_it(stack: Stack) -> None:
    session = stack.wait_session(_start(stack, "hog"))
    assert session["error"] == (
        "session ended: over its memory limit of 512 MiB (AK_RUNNER__WORKER_MEMORY_MB)"
    ), session
    assert session["state"] == "ERROR"


def _kernel_holds_memory() -> bool:
    """Whether the runners of this machine get control groups for their workers (as the
    banner says: ``test_the_banner_says_how_handlers_are_boxed_in``)."""
    from akcore.cgroups import WorkerGroups

    return WorkerGroups.find()[0] is not None


OVER_512 = "session ended: over its memory limit of 512 MiB (AK_RUNNER__WORKER_MEMORY_MB): "


def test_a_handlers_processes_are_held_to_the_memory_limit_together(stack: Stack) -> None:
    session = stack.wait_session(_start(stack, "hogs"))
    assert session["state"] == "ERROR", session
    # Not the 10 s time limit: the memory of the worker's processes, summed; where the
    # kernel holds them to it, the third process's allocation is where they stop.
    if _kernel_holds_memory():
        assert session["error"] == OVER_512 + "the kernel stopped a process of it there"
    else:
        assert session["error"].startswith(OVER_512 + "its processes and System V memory used ")
        assert session["error"].endswith(" MiB together"), session


@pytest.mark.skipif(not _kernel_holds_memory(), reason="needs cgroup v1's memory controller")
def test_a_handler_neither_reads_nor_joins_another_workers_group(stack: Stack) -> None:
    """A worker's group is root's alone: its processes (which /proc hides from the other
    workers' users) and their memory are not shown to another worker, which cannot move
    into it either."""
    sid = _start(stack, "peek_groups")
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert _prints(stack, sid) == ["others True"]  # (the spare workers' groups at least)


@pytest.mark.skipif(not _kernel_holds_memory(), reason="needs cgroup v1's memory controller")
def test_memory_no_process_holds_counts_against_the_limit(stack: Stack) -> None:
    """A file in /dev/shm is memory of the machine's that no process of the handler's
    holds (the twice-a-second count misses it): the kernel charges it to the worker's group
    and stops the writer at the limit; the file goes with the worker's user id."""
    sid = _start(stack, "shm_file")
    session = stack.wait_session(sid)
    assert (session["state"], session["error"]) == (
        "ERROR",
        OVER_512 + "the kernel stopped a process of it there",
    ), session
    assert "all written" not in _prints(stack, sid)
    wait_until(lambda: not list(Path("/dev/shm").glob("ak-fill-*")), "the file removed", 30)


def test_a_handler_over_the_session_timeout_ends_in_error_naming_it(stack: Stack) -> None:
    t0 = time.monotonic()
    session = stack.wait_session(_start(stack, "spin"), timeout=40)
    assert session["state"] == "ERROR"
    assert session["error"] == (
        "session ended: over its time limit of 10 s (AK_RUNNER__SESSION_TIMEOUT)"
    )
    assert time.monotonic() - t0 >= 10


def _marked(mark: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_stopping_a_session_kills_what_its_handler_left_running(stack: Stack) -> None:
    mark = f"ak-litter-{os.getpid()}-{time.monotonic_ns()}"
    sid = _start(stack, "litter", mark=mark)
    stack.wait_output("littered", "session", "prints", sid)
    left = _marked(mark)
    assert len(left) == 2  # a child, and a grandchild in a session of its own
    assert len({os.getsid(pid) for pid in left}) == 2
    stack.ak("session", "stop", sid, check=True)
    assert stack.wait_session(sid)["state"] == "STOPPED"
    assert _marked(mark) == []  # killed before the session's end was written


def test_what_a_finished_session_left_running_is_killed(stack: Stack) -> None:
    mark = f"ak-leftover-{os.getpid()}-{time.monotonic_ns()}"
    sid = _start(stack, "litter_and_return", mark=mark)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    # Its worker waits for the project's next session; what the session started does not
    # live on with it (not even a daemon in a session of its own).
    wait_until(lambda: not _marked(mark), "a finished session's processes gone", 10)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the exit syscall's number")
def test_a_process_whose_main_thread_exited_is_killed_with_its_session(stack: Stack) -> None:
    """It looks like a zombie in /proc/<pid>/status (State: Z) while its other thread runs as
    the worker's user: it is killed as any other (it outlived its session before)."""
    mark = f"ak-leaderless-{os.getpid()}-{time.monotonic_ns()}"
    sid = _start(stack, "litter_leaderless", mark=mark)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert _prints(stack, sid) == ["left a leaderless one behind True"]
    wait_until(lambda: not _threads_marked(mark), "the leftover gone", 10)


def _threads_marked(mark: str) -> list[str]:
    """The threads whose command line has ``mark`` (a process whose main thread exited
    shows none for its pid: its other threads do)."""
    found = []
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*"):
        try:
            if mark.encode() in (task / "cmdline").read_bytes().split(b"\0"):
                found.append(task.name)
        except OSError:
            continue
    return found


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the clone syscall's number")
def test_what_a_finished_session_left_as_its_workers_sibling_is_killed(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    """A handler's process made the fork server's child is no child of the worker: the
    runner finds it in the worker's control group, or (without groups) sees the fork
    server has a child it did not fork, and kills what the worker's user left. (Without
    groups, a worker started as a process of its own would leave it to the runner, whose
    children are not looked at: docs/security.md.)"""
    if request.node.callspec.params["stack"] == "0" and WorkerGroups.find()[0] is None:
        pytest.skip("workers started as processes of their own, without groups: the known gap")
    mark = f"ak-sibling-{os.getpid()}-{time.monotonic_ns()}"
    sid = _start(stack, "litter_as_sibling", mark=mark)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert _prints(stack, sid) == ["left a sibling behind True"]
    wait_until(lambda: not _marked(mark), "a finished session's sibling process gone", 10)


def test_handler_output_goes_to_its_session_not_to_the_service_log(stack: Stack) -> None:
    mark = f"ak-chatty-{time.monotonic_ns()}"
    sid = _start(stack, "chatty", mark=mark)
    session = stack.wait_session(sid)
    assert session["state"] == "COMPLETED", session
    assert _prints(stack, sid) == [f"print {mark}"]
    assert mark not in stack.output()


def test_a_handler_holds_none_of_ak_ups_output(stack: Stack) -> None:
    """uvloop's spawn left copies of the runner's stdout and stderr (``ak up``'s: a log file
    here, an operator's terminal when run by hand) open in the fork server and so in every
    worker: a handler wrote forged ``[ak]`` lines there, and could read the terminal."""
    sid = _start(stack, "fds")
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    held = _prints(stack, sid)
    assert held and not any(stack.log.name in x for x in held), held
    assert len(held) <= 8, held  # stdio, the frame pipes, a few of the interpreter's


def test_a_handler_cannot_connect_to_another_users_abstract_unix_socket(stack: Stack) -> None:
    """An abstract socket (``@name``) has no file and so no permissions: a service of this
    host listening on one is kept from handlers by Landlock's scope (Linux 6.12)."""
    import errno
    import socket

    name = f"ak-theirs-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX) as theirs:
        theirs.bind("\0" + name)
        theirs.listen()
        sid = _start(stack, "abstract", theirs=name)
        session = stack.wait_session(sid)
        assert session["state"] == "COMPLETED", session
        assert _prints(stack, sid) == [f"ak-thei refused {errno.EPERM}", "ak-own- connected"]
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.accept()  # nobody came through


def test_a_handler_does_not_see_the_unix_sockets_of_this_hosts_services(stack: Stack) -> None:
    """A service's socket under /run that lets every local user in (PostgreSQL with ``local
    all all trust`` and a 0777 socket) is not there for handlers: they see an empty,
    read-only /run. A socket elsewhere is left to its permissions."""
    import errno
    import socket

    folder = Path(tempfile.mkdtemp(prefix="ak-theirs-", dir="/run"))
    folder.chmod(0o755)
    elsewhere = Path(tempfile.mkdtemp(prefix="ak-theirs-"))  # /tmp: not hidden
    elsewhere.chmod(0o755)
    try:
        listening = []
        for where in (folder, elsewhere):
            theirs = socket.socket(socket.AF_UNIX)
            theirs.bind(str(where / "service.sock"))
            os.chmod(where / "service.sock", 0o777)
            theirs.listen()
            listening.append(theirs)
        paths = [str(folder / "service.sock"), str(elsewhere / "service.sock")]
        sid = _start(stack, "pathsock", paths=paths)
        session = stack.wait_session(sid)
        assert session["state"] == "COMPLETED", session
        assert _prints(stack, sid) == [
            f"{paths[0]} refused {errno.ENOENT}",
            f"{paths[1]} connected",
            "run holds []",
            "hosts 80",  # (names still resolve)
        ]
        listening[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            listening[0].accept()  # nobody came through
        assert folder.is_dir()  # the host's /run as it was
    finally:
        for sock in listening:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)


# What outlives a handler's processes, left by one project and looked for by the next given
# the same user id; and System V memory over the limit.
IPC_CODE = """\
import ctypes
import os
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_CREAT = 0o1000
FAILED = (None, ctypes.c_void_p(-1).value)


def leave(event):
    key, lock = event.data["key"], event.data["lock"]
    shm = libc.shmget(key, 4096, IPC_CREAT | 0o600)
    addr = libc.shmat(shm, None, 0)
    ctypes.memmove(addr, b"alpha's token", 13)
    libc.shmdt(ctypes.c_void_p(addr))
    sem, msg = libc.semget(key, 1, IPC_CREAT | 0o600), libc.msgget(key, IPC_CREAT | 0o600)
    with open(lock, "w") as f:
        f.write("alpha's token")
    print("left", shm >= 0 and addr not in FAILED and sem >= 0 and msg >= 0)


def look(event):
    key, lock = event.data["key"], event.data["lock"]
    print("shm", libc.shmget(key, 0, 0) >= 0)
    print("sem", libc.semget(key, 0, 0) >= 0)
    print("msg", libc.msgget(key, 0, 0) >= 0)
    print("lock", os.path.exists(lock))


def shm_hog(event):
    # Four segments of 256 MiB, filled and detached: no process holds them.
    for _ in range(4):
        shm = libc.shmget(0, 256 << 20, IPC_CREAT | 0o600)
        addr = libc.shmat(shm, None, 0)
        ctypes.memset(addr, 1, 256 << 20)
        libc.shmdt(ctypes.c_void_p(addr))
    print("made")
    time.sleep(1000)
"""

ONE_UID = 779990  # outside the default range: no other stack's worker can hold it
LOCKS = Path("/run/autokitteh/worker-uids")  # where the runners of a machine hold ids


def test_a_handler_sees_its_own_processes_alone(stack: Stack) -> None:
    """/proc is mounted again for workers with ``hidepid=2``: not the host's processes,
    the runner's, or other workers' (on Linux 5.8 and later); the host's /proc is as it was."""
    runner = stack.pids("runner")[0]
    sid = _start(stack, "procs", runner=runner)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert _prints(stack, sid) == [
        "self True",
        "init False",
        "runner False",
        "runner's command line refused",
    ]
    assert Path("/proc/1").exists() and Path(f"/proc/{runner}").exists()  # the host's


@pytest.fixture(scope="module")
def one_uid_stack() -> Iterator[Stack]:
    """A stack with one worker user id free to it (a range has two at least: this process
    holds the other as another runner would), each worker running one session: every
    session gets the same id, in turn, whatever its project."""
    LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
    other = os.open(LOCKS / str(ONE_UID + 1), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    home = Path(tempfile.mkdtemp(prefix="ak-sandbox-ipc-"))
    s = start_stack(
        home,
        {
            "AK_RUNNER__WORKER_UIDS": f"{ONE_UID}-{ONE_UID + 1}",
            "AK_RUNNER__WORKER_SESSIONS": "1",
            "AK_RUNNER__WARM_WORKERS": "0",
            "AK_RUNNER__WORKER_MEMORY_MB": "512",
            "AK_RUNNER__SESSION_TIMEOUT": "30",
        },
    )
    for name in ("alpha", "beta"):
        manifest = MANIFEST.replace("name: boxed", f"name: {name}")
        s.deploy(write_project(home / name, {"autokitteh.yaml": manifest, "ipc.py": IPC_CODE}))
    yield s
    s.stop()
    os.close(other)
    shutil.rmtree(home, ignore_errors=True)


def _run(stack: Stack, project: str, function: str, **inputs: object) -> dict[str, str]:
    args = [x for k, v in inputs.items() for x in ("-I", f"{k}={json.dumps(v)}")]
    res = stack.ak("session", "start", "-o", project, "-p", f"ipc.py:{function}", *args)
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().removeprefix("session_id: ")
    session = stack.wait_session(sid)
    session["prints"] = "\n".join(_prints(stack, sid))
    return session


def _uid_free() -> bool:
    """Whether no runner holds ONE_UID (its worker gone and the id cleared)."""
    fd = os.open(LOCKS / str(ONE_UID), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _sysv_of(uid: int) -> list[str]:
    from ak_runner.sandbox import sysv_objects_of

    return [kind for kind, _ in sysv_objects_of(uid)]


def test_the_next_project_given_a_user_id_finds_nothing_the_last_left(
    one_uid_stack: Stack,
) -> None:
    """System V IPC objects and lock files outlive the handler that made them: when its
    worker's id goes to another project, they are gone."""
    key, lock = 0x5EEDAC00 + os.getpid() % 0xFF, f"/dev/shm/ak-alpha-{os.getpid()}"
    alpha = _run(one_uid_stack, "alpha", "leave", key=key, lock=lock)
    assert (alpha["state"], alpha["prints"]) == ("COMPLETED", "left True"), alpha
    wait_until(_uid_free, "alpha's worker gone and its user id freed", 30)
    assert _sysv_of(ONE_UID) == [] and not os.path.exists(lock)
    beta = _run(one_uid_stack, "beta", "look", key=key, lock=lock)
    assert beta["state"] == "COMPLETED", beta
    assert beta["prints"] == "shm False\nsem False\nmsg False\nlock False"


def test_system_v_shared_memory_counts_against_the_memory_limit(one_uid_stack: Stack) -> None:
    """Segments a handler made and detached are held by no process, yet by the machine
    until removed: they count against its worker's limit, and go with its user id."""
    wait_until(_uid_free, "the last worker's user id freed", 30)
    session = _run(one_uid_stack, "alpha", "shm_hog")
    assert session["state"] == "ERROR", session  # not the 30 s timeout
    assert session["error"].startswith(
        "session ended: over its memory limit of 512 MiB (AK_RUNNER__WORKER_MEMORY_MB)"
    ), session
    wait_until(_uid_free, "the worker's user id freed", 30)
    assert _sysv_of(ONE_UID) == []
