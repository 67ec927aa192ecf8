"""The worker process seen from the runner's side of the pipes (no NATS involved)."""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from ak_runner.worker import (
    EXIT_UNKNOWN,
    STDERR_LINE,
    STDERR_TAIL,
    ForkedProcess,
    ForkServer,
    WorkerPool,
    WorkerProcess,
)
from autokitteh._frames import MAX_ERROR
from autokitteh._values import loads
from autokitteh._worker import EXIT_PARENT_GONE

HANDLERS = """\
import sys
print("loading", 1, sep="=")


def printer(event, session_id):
    print("a", "b", sep=", ", end="")
    print("two trailing\\n")
    print("err", file=sys.stderr)
    with open("own.txt", "w") as f:
        print("not captured", file=f)
    print(session_id, event.event_type, event.data.body.json["n"])
    return {"answer": 42}


async def coro(event):
    return "async"


def fails(event):
    raise KeyError("k")
"""


async def _run(
    tmp_path: Path, entry: str, data: dict[str, Any] | None = None
) -> list[tuple[dict[str, Any], bytes]]:
    (tmp_path / "h.py").write_text(HANDLERS)
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    event = {"data": data or {}, "event_type": "post", "event_id": "evt_1"}
    await w.send(
        {
            "type": "start",
            "code_dir": str(tmp_path),
            "entrypoint": entry,
            "session_id": "ses_1",
            "is_durable": True,
        },
        pickle.dumps(event),
    )
    frames = await _until_done(w)
    assert await w.close() == 0
    return frames


async def _until_done(w: WorkerProcess) -> list[tuple[dict[str, Any], bytes]]:
    frames = []
    async for header, blob in w.frames():
        frames.append((header, blob))
        if header["type"] == "done":
            break
    return frames


async def test_prints_are_captured_exactly(tmp_path: Path) -> None:
    body = {"bytes": b'{"n": 3}', "text": '{"n": 3}', "json": {"n": 3}, "form": None}
    frames = await _run(tmp_path, "h.py:printer", {"body": body})
    texts = [b.decode() for h, b in frames if h["type"] == "print"]
    assert texts == ["loading=1\n", "a, b", "two trailing\n\n", "err\n", "ses_1 post 3\n"]
    done, blob = frames[-1]
    assert done == {"type": "done", "ok": True, "reusable": True}
    assert loads(blob) == {"answer": 42}
    assert (tmp_path / "own.txt").read_text() == "not captured\n"


async def test_async_handler(tmp_path: Path) -> None:
    done, blob = (await _run(tmp_path, "h.py:coro"))[-1]
    assert done["ok"] and loads(blob) == "async"


async def test_error_is_trimmed_to_user_frames(tmp_path: Path) -> None:
    done, _ = (await _run(tmp_path, "h.py:fails"))[-1]
    assert done["ok"] is False
    assert done["error"] == "error: KeyError('k')"
    assert done["traceback"].startswith("Traceback (most recent call last):\n  File ")
    assert "h.py" in done["traceback"] and "_worker.py" not in done["traceback"]


async def test_missing_function(tmp_path: Path) -> None:
    frames = await _run(tmp_path, "h.py:nope")
    assert frames[-1][0]["error"] == "error: LookupError(\"function 'nope' not found in h.py\")"


REUSED = """\
import os
import threading
import time

import helper

COUNT = 0


def count(event):
    global COUNT
    COUNT += 1
    helper.CALLS.append(1)
    os.environ["LEFT_BEHIND"] = "yes"
    print(COUNT, len(helper.CALLS), os.environ.get("VAR"), os.environ.get("LEFT_BEHIND_BEFORE"))
    os.environ["LEFT_BEHIND_BEFORE"] = "yes"


def writes_module(event):
    with open("made.py", "w") as f:
        f.write("VALUE = 7\\n")


def imports_written(event):
    import made

    print("made", made.VALUE)


def leaves_a_thread(event):
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()


def leaves_a_raw_thread(event):
    import _thread  # (a thread threading.enumerate() does not list)

    running = _thread.allocate_lock()
    running.acquire()

    def run():
        running.release()
        time.sleep(5)

    _thread.start_new_thread(run, ())
    running.acquire()


def leaves_a_timer(event):
    import signal

    signal.signal(signal.SIGALRM, lambda *_: os.system("true"))
    signal.setitimer(signal.ITIMER_REAL, 5)
"""


async def _session(
    w: WorkerProcess, code_dir: Path, entry: str, env: dict[str, str], durable: bool = True
) -> list[tuple[dict[str, Any], bytes]]:
    event = {"data": {}, "event_type": "post", "event_id": "evt_1"}
    start = {
        "type": "start",
        "code_dir": str(code_dir),
        "entrypoint": entry,
        "session_id": "ses_1",
        "is_durable": durable,
        "env": env,
    }
    await w.send(start, pickle.dumps(event))
    return await _until_done(w)


async def test_a_reused_worker_starts_each_session_afresh(tmp_path: Path) -> None:
    """Module globals, user modules and the environment are those of a new process."""
    builds = []
    for n in (1, 2):  # two builds of the project: the second one changed helper.py
        d = tmp_path / f"bld_{n}"
        d.mkdir()
        (d / "h.py").write_text(REUSED)
        (d / "helper.py").write_text(f"CALLS = {[0] * (n - 1)}\n")
        builds.append(d)
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    texts = []
    # The start frame carries the session's variables (on top of the worker's environment):
    # a variable deleted before the third session must be gone from it.
    runs = [(builds[0], {"VAR": "v0"}), (builds[0], {"VAR": "v1"}), (builds[1], {})]
    for code_dir, variables in runs:
        frames = await _session(w, code_dir, "h.py:count", variables)
        texts += [b.decode() for h, b in frames if h["type"] == "print"]
        assert frames[-1][0] == {"type": "done", "ok": True, "reusable": True}
    assert texts == ["1 1 v0 None\n", "1 1 v1 None\n", "1 2 None None\n"]
    assert await w.close() == 0


async def test_a_module_one_session_wrote_is_importable_in_the_next(tmp_path: Path) -> None:
    (tmp_path / "h.py").write_text(REUSED)
    (tmp_path / "helper.py").write_text("CALLS = []\n")
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    await _session(w, tmp_path, "h.py:count", {})  # the directory's listing is cached now
    await _session(w, tmp_path, "h.py:writes_module", {}, durable=False)  # no activity
    frames = await _session(w, tmp_path, "h.py:imports_written", {})
    assert [b.decode() if h["type"] == "print" else None for h, b in frames] == [
        "made 7\n",
        None,
    ], frames
    assert await w.close() == 0


SIGNATURES = """\
import functools


def plain(event, session_id):
    print("plain", session_id)


def keyword_only(event, *, session_id="none"):
    print("keyword", session_id)


def without(event, **kwargs):
    print("without", kwargs)


def _wrapper(f):
    @functools.wraps(f)
    def inner(*args, **kwargs):
        return f(*args, **kwargs)
    return inner


wrapped = _wrapper(plain)


class Callable:
    def __call__(self, event, session_id):
        print("callable", session_id)


instance = Callable()
"""


async def test_handlers_get_the_session_id_when_they_name_it(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SIGNATURES)
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    texts = []
    for entry in ("plain", "keyword_only", "without", "wrapped", "instance"):
        frames = await _session(w, tmp_path, f"s.py:{entry}", {}, durable=False)
        assert frames[-1][0]["ok"] is True, frames
        texts += [b.decode() for h, b in frames if h["type"] == "print"]
    assert texts == [
        "plain ses_1\n",
        "keyword ses_1\n",
        "without {}\n",
        "plain ses_1\n",
        "callable ses_1\n",
    ]
    assert await w.close() == 0


@pytest.mark.parametrize(
    "handler",
    ["leaves_a_thread", "leaves_a_raw_thread", "leaves_a_timer"],
)
async def test_a_session_that_leaves_a_thread_running_ends_its_worker(
    tmp_path: Path, handler: str
) -> None:
    """What would act in the project's next session in the same process (a thread, one
    started with `_thread` too, a timer whose handler would run then) ends the worker."""
    (tmp_path / "h.py").write_text(REUSED)
    (tmp_path / "helper.py").write_text("CALLS = []\n")
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    frames = await _session(w, tmp_path, f"h.py:{handler}", {}, durable=False)
    assert frames[-1][0] == {"type": "done", "ok": True, "reusable": False}
    assert await w.close() == 0  # it exits on its own: it takes no other session


async def test_pool_reuses_a_worker_only_for_the_same_project(tmp_path: Path) -> None:
    (tmp_path / "h.py").write_text(REUSED)
    (tmp_path / "helper.py").write_text("CALLS = []\n")
    env = {"PATH": "/usr/bin:/bin"}
    pool = WorkerPool(0, tmp_path, reuse=2)
    try:
        first = await pool.take(sys.executable, env, "prj_a")
        await _session(first, tmp_path, "h.py:count", {})
        first.reusable = True
        await pool.give_back(first, sys.executable, env, "prj_a")
        other = await pool.take(sys.executable, env, "prj_b")
        again = await pool.take(sys.executable, env, "prj_a")
        assert again is first and other is not first
        await _session(again, tmp_path, "h.py:count", {})
        await pool.give_back(again, sys.executable, env, "prj_a")  # its 2nd session: the last
        assert again.proc.returncode is not None
        fresh = await pool.take(sys.executable, env, "prj_a")
        assert fresh is not first
        await fresh.close()
        await other.close()
    finally:
        await pool.close()


async def test_warmed_spares_are_ready_before_the_first_session(tmp_path: Path) -> None:
    """A runner starts spares as it starts: a dead runner's sessions, taken over right
    after, do not wait for Python to start."""
    env = {"PATH": "/usr/bin:/bin"}
    pool = WorkerPool(2, tmp_path)
    try:
        await pool.warm(sys.executable, env)
        spares = list(pool._idle[(sys.executable, frozenset(env.items()))])
        assert len(spares) == 2 and all(w.proc.returncode is None for w in spares)
        taken = await pool.take(sys.executable, env, "prj_a")
        assert taken in spares
        await taken.close()
    finally:
        await pool.close()


@pytest.mark.skipif(not ForkServer.SUPPORTED, reason="the fork server needs Linux (pidfd)")
async def test_forked_workers_run_sessions_and_report_their_end(tmp_path: Path) -> None:
    (tmp_path / "h.py").write_text(REUSED)
    (tmp_path / "helper.py").write_text("CALLS = []\n")
    env = {"PATH": "/usr/bin:/bin"}
    server = await ForkServer.start(sys.executable, tmp_path, env)
    try:
        first = await WorkerProcess.fork(server, tmp_path)
        second = await WorkerProcess.fork(server, tmp_path)
        assert first.proc.pid != second.proc.pid != server.proc.pid
        for expected in ("1 1 v None\n", "1 1 v None\n"):  # a fresh start each session
            frames = await _session(first, tmp_path, "h.py:count", {"VAR": "v"})
            texts = [b.decode() if h["type"] == "print" else None for h, b in frames]
            assert texts == [expected, None]
            assert frames[-1][0] == {"type": "done", "ok": True, "reusable": True}
        assert await first.close() == 0
        second.proc.kill()
        assert await second.close() == -9
    finally:
        await server.close()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


@pytest.mark.skipif(not ForkServer.SUPPORTED, reason="the fork server needs Linux (pidfd)")
async def test_forks_given_up_on_are_killed_and_close_nothing_twice(tmp_path: Path) -> None:
    """Sessions cancelled while their worker was being forked (a stop, a runner shutting
    down): the server still forks, the workers no one waits for are killed, and every pipe
    end is closed once (a second close by number would close whatever reused it)."""
    (tmp_path / "h.py").write_text(REUSED)
    (tmp_path / "helper.py").write_text("CALLS = []\n")
    env = {"PATH": "/usr/bin:/bin"}
    server = await ForkServer.start(sys.executable, tmp_path, env)
    try:
        fds_before = len(os.listdir("/proc/self/fd"))
        asks = [asyncio.create_task(WorkerProcess.fork(server, tmp_path)) for _ in range(20)]
        await asyncio.sleep(0)  # one turn of the loop: each has sent its request, none has a reply
        for ask in asks:
            ask.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
        assert server.alive
        worker = await asyncio.wait_for(WorkerProcess.fork(server, tmp_path), 20)  # it forks
        frames = await _session(worker, tmp_path, "h.py:count", {})
        assert frames[-1][0]["ok"] is True
        deadline = asyncio.get_running_loop().time() + 20
        while _children(server.proc.pid) != {worker.proc.pid}:  # the abandoned ones killed
            assert asyncio.get_running_loop().time() < deadline, _children(server.proc.pid)
            await asyncio.sleep(0.05)
        assert await worker.close() == 0
        assert len(os.listdir("/proc/self/fd")) <= fds_before  # none left open
    finally:
        await server.close()


@pytest.mark.skipif(not ForkServer.SUPPORTED, reason="the fork server needs Linux (pidfd)")
async def test_pool_forks_workers_and_survives_its_fork_server(tmp_path: Path) -> None:
    (tmp_path / "h.py").write_text(REUSED)
    (tmp_path / "helper.py").write_text("CALLS = []\n")
    env = {"PATH": "/usr/bin:/bin"}
    pool = WorkerPool(0, tmp_path, fork=True)
    try:
        worker = await pool.take(sys.executable, env, "prj_a")
        [server] = pool._servers.values()
        assert isinstance(worker.proc, ForkedProcess)
        server.proc.kill()  # the fork server dies: the worker it forked goes on
        await server.proc.wait()
        frames = await _session(worker, tmp_path, "h.py:count", {})
        assert frames[-1][0]["ok"] is True
        assert await worker.close() == EXIT_UNKNOWN  # its parent was not there to say
        again = await pool.take(sys.executable, env, "prj_a")  # a new fork server
        assert isinstance(again.proc, ForkedProcess) and pool._servers[server_key(env)].alive
        frames = await _session(again, tmp_path, "h.py:count", {})
        assert frames[-1][0]["ok"] is True
        await again.close()
    finally:
        await pool.close()


def server_key(env: dict[str, str]) -> Any:
    return (sys.executable, frozenset(env.items()))


async def test_a_worker_exits_when_its_runner_sends_it_garbage(tmp_path: Path) -> None:
    """Its reader thread cannot go on: the process ends (a runner waiting on it would wait
    forever otherwise) with the code of a worker that lost its runner."""
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    w._writer.write(struct.pack(">II", 100 * 1024 * 1024, 0))  # over the frame limit
    assert await asyncio.wait_for(w.proc.wait(), 10) == EXIT_PARENT_GONE
    await w.close()  # (its stderr read to the end)
    assert "bad message from the runner" in "".join(w.stderr_tail)


async def test_a_system_call_with_arguments_too_large_fails_in_the_handler(tmp_path: Path) -> None:
    """Not sent: the runner would refuse the frame; the handler gets AutoKittehError."""
    (tmp_path / "big.py").write_text(
        "import autokitteh\n"
        "def run(event):\n"
        "    try:\n"
        "        autokitteh.start('big.py:run', {'x': 'y' * 2_000_000})\n"
        "    except autokitteh.AutoKittehError as e:\n"
        "        print(str(e)[:40])\n"
    )
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    start = {
        "type": "start",
        "code_dir": str(tmp_path),
        "entrypoint": "big.py:run",
        "session_id": "ses_1",
        "is_durable": True,
    }
    await w.send(start, pickle.dumps({"data": {}, "event_type": "post", "event_id": "e"}))
    frames = await _until_done(w)
    await w.close()
    assert [b.decode() for h, b in frames if h["type"] == "print"] == [
        "start: its arguments are too large: 2000\n"
    ]
    assert frames[-1][0]["ok"] is True


async def test_a_worker_that_talks_after_its_session_ended_is_not_reused(tmp_path: Path) -> None:
    """Its handler forged the end of its session and went on talking: the pool does not
    give it the project's next session (which would read those frames as its own)."""
    (tmp_path / "h.py").write_text(
        "import autokitteh._runtime as r\n"
        "def forge(event):\n"
        "    r._runtime.channel.send({'type': 'done', 'ok': True, 'reusable': True})\n"
        "    r._runtime.channel.send({'type': 'print'}, b'late')\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    pool = WorkerPool(0, tmp_path, reuse=10)
    try:
        worker = await pool.take(sys.executable, env, "prj_a")
        frames = await _session(worker, tmp_path, "h.py:forge", {}, durable=False)  # forged end
        assert frames == [({"type": "done", "ok": True, "reusable": True}, b"")]
        worker.reusable = True
        await pool.give_back(worker, sys.executable, env, "prj_a")
        async with asyncio.timeout(10):
            while worker.quiet():  # the frames it sent after come in
                await asyncio.sleep(0.01)
        again = await pool.take(sys.executable, env, "prj_a")
        assert again is not worker and worker.proc.returncode is not None
        await again.close()
    finally:
        await pool.close()


async def test_a_killed_worker_is_never_reused(tmp_path: Path) -> None:
    """Its session said it was reusable, then its attempt was stopped and killed it: given
    back before its end is seen, it must not go to the project's next session (which would
    find it dead: 'worker process exited with code -9')."""
    (tmp_path / "h.py").write_text(REUSED)
    (tmp_path / "helper.py").write_text("CALLS = []\n")
    env = {"PATH": "/usr/bin:/bin"}
    pool = WorkerPool(0, tmp_path, reuse=10)
    try:
        worker = await pool.take(sys.executable, env, "prj_a")
        await _session(worker, tmp_path, "h.py:count", {})
        worker.reusable = True  # (its `done` said so)
        worker.kill()  # the attempt lost its job as it wrote the end
        await pool.give_back(worker, sys.executable, env, "prj_a")
        again = await pool.take(sys.executable, env, "prj_a")
        assert again is not worker
        await again.close()
    finally:
        await pool.close()


LOUD = """\
import os


def floods(event):
    for i in range(30):
        os.write(2, b"line %d " % i + b"y" * (1 << 20) + b"\\n")
    os.write(2, b"the last words\\n")


def writes_an_endless_line(event):
    os.write(2, b"z" * (65 << 20))  # longer than any reader's limit, and no newline
    os.write(2, b" and its end\\nafter it\\n")
    print("still running")


def fails_at_length(event):
    raise ValueError("boom " * (2 << 20))
"""


@asynccontextmanager
async def _loud_worker(how: str, tmp_path: Path) -> AsyncIterator[WorkerProcess]:
    """A worker (spawned, or forked by a fork server of its own) for LOUD's handlers."""
    (tmp_path / "loud.py").write_text(LOUD)
    env = {"PATH": "/usr/bin:/bin"}
    if how == "spawned":
        yield await WorkerProcess.spawn(sys.executable, tmp_path, env)
        return
    server = await ForkServer.start(sys.executable, tmp_path, env)
    try:
        yield await WorkerProcess.fork(server, tmp_path)
    finally:
        await server.close()


WORKERS = pytest.mark.parametrize(
    "how",
    [
        "spawned",
        pytest.param(
            "forked",
            marks=pytest.mark.skipif(not ForkServer.SUPPORTED, reason="fork server: Linux only"),
        ),
    ],
)


@WORKERS
async def test_what_the_runner_keeps_of_a_workers_stderr_is_bounded(
    how: str, tmp_path: Path
) -> None:
    """Its last lines, each cut to its start with a note of its length: a handler writing
    huge lines to its stderr does not grow the runner (which serves every project)."""
    async with _loud_worker(how, tmp_path) as w:
        frames = await asyncio.wait_for(
            _session(w, tmp_path, "loud.py:floods", {}, durable=False), 60
        )
        assert frames[-1][0]["ok"] is True
        assert await w.close() == 0  # (its stderr read to the end)
    tail = list(w.stderr_tail)
    assert len(tail) == STDERR_TAIL and tail[-1] == "the last words\n"
    cut = f" [... cut: a line of {(1 << 20) + 8:,} bytes, its first {STDERR_LINE:,} kept]\n"
    assert tail[-2] == "line 29 " + "y" * (STDERR_LINE - 8) + cut
    assert sum(map(len, tail)) < STDERR_TAIL * (STDERR_LINE + 100)


@WORKERS
async def test_a_stderr_line_longer_than_any_limit_does_not_stop_the_worker(
    how: str, tmp_path: Path
) -> None:
    """The runner goes on reading the pipe (a reader that gave up would leave the worker
    blocked writing to it, its session hung), and goes on keeping what follows."""
    async with _loud_worker(how, tmp_path) as w:
        session = _session(w, tmp_path, "loud.py:writes_an_endless_line", {}, durable=False)
        frames = await asyncio.wait_for(session, 60)
        assert [b for h, b in frames if h["type"] == "print"] == [b"still running\n"]
        assert frames[-1][0]["ok"] is True
        assert await w.close() == 0
    cut = f" [... cut: a line of {(65 << 20) + 12:,} bytes, its first {STDERR_LINE:,} kept]\n"
    assert list(w.stderr_tail) == ["z" * STDERR_LINE + cut, "after it\n", "still running\n"]


async def test_an_exception_with_a_huge_message_ends_its_session_with_it_cut(
    tmp_path: Path,
) -> None:
    """Its message (and its traceback) are cut in the middle to fit the frame that ends the
    session: the session still says what it raised, not that its worker crashed."""
    (tmp_path / "loud.py").write_text(LOUD)
    done, _ = (await _session_of(tmp_path, "loud.py:fails_at_length"))[-1]
    assert done["ok"] is False and done["error_type"] == "ValueError"
    error, tb = done["error"], done["traceback"]
    size = len("error: ValueError('')") + 5 * (2 << 20)
    assert error.startswith("error: ValueError('boom boom ") and error.endswith(" boom ')")
    assert f"\n[... cut: {size - MAX_ERROR:,} of {size:,} characters ...]\n" in error
    assert len(error) < MAX_ERROR + 100 and len(tb) < MAX_ERROR + 100
    assert tb.startswith("Traceback (most recent call last):\n") and 'loud.py", line' in tb
    assert tb.endswith(" boom boom \n") and "\n[... cut: " in tb


async def _session_of(tmp_path: Path, entry: str) -> list[tuple[dict[str, Any], bytes]]:
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    try:
        return await asyncio.wait_for(_session(w, tmp_path, entry, {}, durable=False), 60)
    finally:
        await w.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a worker of its own user")
async def test_a_worker_started_while_its_environment_was_away_imports_its_packages(
    tmp_path: Path,
) -> None:
    """A spare worker can start while its project environment is away: a prune removed it
    as the pool refilled its spares after a session of it, and it is built again for the
    next. That session gets the spare (the same interpreter and environment), and imports
    its packages. Python had remembered the venv's packages' directory as missing and never
    looked again: every session it ran failed with ModuleNotFoundError."""
    import site

    from ak_runner.sandbox import open_way_to
    from akcore import sdkdist

    venv = tmp_path / "venvs" / "v_pruned"
    code = tmp_path / "code"
    code.mkdir()
    (code / "h.py").write_text("def f(event):\n    import tabmod\n    return tabmod.X\n")
    sdk = sdkdist.write_copy(tmp_path / "sdk")
    for path in (Path(sys.executable), code / "h.py", sdk / "autokitteh" / "__init__.py"):
        open_way_to(path)
    uid = 779_990
    env = {"PATH": "/usr/bin:/bin", "VIRTUAL_ENV": str(venv)}
    w = await WorkerProcess.spawn(sys.executable, code, env, uid, str(sdk))
    try:
        await _started(w.proc.pid, uid)
        # The environment, built again.
        (packages,) = site.getsitepackages([str(venv)])
        Path(packages).mkdir(parents=True)
        Path(packages, "tabmod.py").write_text("X = 'found'\n")
        for made in [venv, *Path(packages).relative_to(venv).parents, Path(packages)]:
            (venv / made).chmod(0o755)
        await w.send(
            {"type": "start", "code_dir": str(code), "entrypoint": "h.py:f", "session_id": "s"},
            pickle.dumps({"data": {}, "event_type": "post", "event_id": "evt_1"}),
        )
        done, blob = (await _until_done(w))[-1]
        assert done["ok"], done.get("error")
        assert loads(blob) == "found"
    finally:
        w.kill()
        await w.close()


async def _started(pid: int, uid: int) -> None:
    """Until the worker ``pid`` is its user ``uid`` and waits for its first session (its
    main thread waits on its channel), its packages opened."""
    for _ in range(200):
        try:
            with open(f"/proc/{pid}/status") as f:
                uids = [line.split()[1] for line in f if line.startswith("Uid:")]
            with open(f"/proc/{pid}/syscall") as f:
                call = f.read().split()[0]
        except OSError:
            call, uids = "", []
        if uids == [str(uid)] and call in ("0", "202"):  # read(2), futex(2)
            await asyncio.sleep(0.3)  # (still waiting: not a file read for an import)
            with open(f"/proc/{pid}/syscall") as f:
                if f.read().split()[0] == call:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("the worker did not start")


@pytest.mark.parametrize(
    "fork",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(not ForkServer.SUPPORTED, reason="the fork server: Linux"),
        ),
    ],
)
async def test_workers_of_an_environment_built_again_are_not_handed_out(
    tmp_path: Path, fork: bool
) -> None:
    """A project environment pruned and built again (same packages, same path) for a
    session: the workers and the fork server that started on the build before read its
    packages' ``.pth`` files as they were then. Handed to the session, a package the new
    build installed through a ``.pth`` file was not found."""
    import site
    import subprocess

    from akcore import sdkdist

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (packages,) = site.getsitepackages([str(venv)])
    code = tmp_path / "code"
    code.mkdir()
    (code / "h.py").write_text("def f(event):\n    import pthmod\n    return pthmod.X\n")
    python = str(venv / "bin" / "python")
    env = {
        "PATH": "/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "PYTHONPATH": str(sdkdist.write_copy(tmp_path / "sdk")),
    }
    pool = WorkerPool(1, tmp_path, reuse=2, fork=fork)
    try:
        first = await pool.take(python, env, "prj_a", build="build 1")
        await asyncio.gather(*pool._filling)  # a spare of the first build, started
        [spare] = pool._idle[(python, frozenset(env.items()))]
        first.reusable = True
        await pool.give_back(first, python, env, "prj_a")
        # Built again: this build's package comes in through a .pth file.
        (tmp_path / "extra").mkdir()
        (tmp_path / "extra" / "pthmod.py").write_text("X = 'found'\n")
        Path(packages, "extra.pth").write_text(f"{tmp_path / 'extra'}\n")
        worker = await pool.take(python, env, "prj_a", build="build 2")
        try:
            assert worker is not first and worker is not spare
            assert first.proc.returncode is not None and spare.proc.returncode is not None
            frames = await asyncio.wait_for(_session(worker, code, "h.py:f", {}), 60)
            done, blob = frames[-1]
            assert done["ok"], done.get("error")
            assert loads(blob) == "found"
        finally:
            await worker.close()
    finally:
        await pool.close()


async def test_a_worker_of_the_build_before_is_not_kept(tmp_path: Path) -> None:
    """A session of the build before ends after a session of the new build took a worker:
    its worker is stopped, not kept for the project's next session."""
    env = {"PATH": "/usr/bin:/bin"}
    pool = WorkerPool(0, tmp_path, reuse=10)
    try:
        old = await pool.take(sys.executable, env, "prj_a", build="build 1")
        new = await pool.take(sys.executable, env, "prj_a", build="build 2")
        old.reusable = new.reusable = True
        await pool.give_back(old, sys.executable, env, "prj_a")
        assert old.proc.returncode is not None
        await pool.give_back(new, sys.executable, env, "prj_a")
        assert await pool.take(sys.executable, env, "prj_a", build="build 2") is new
        await new.close()
    finally:
        await pool.close()


async def test_the_workers_of_a_removed_environment_are_stopped(tmp_path: Path) -> None:
    """Spares and fork servers of a project environment the runner pruned (or another
    runner of its data home did) do not live until the runner stops."""
    venv = tmp_path / "venv"
    venv.mkdir()
    env = {"PATH": "/usr/bin:/bin", "VIRTUAL_ENV": str(venv)}
    pool = WorkerPool(2, tmp_path)
    try:
        taken = await pool.take(sys.executable, env, "prj_a", build="build 1")
        await asyncio.gather(*pool._filling)
        spares = list(pool._idle[(sys.executable, frozenset(env.items()))])
        assert len(spares) == 2
        await pool.reap()
        assert all(w.proc.returncode is None for w in spares)  # (still there)
        venv.rmdir()
        await pool.reap()
        assert all(w.proc.returncode is not None for w in spares)
        await taken.close()
    finally:
        await pool.close()
