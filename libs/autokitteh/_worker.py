"""The worker process: loads the user's code and runs one handler for the runner.

Started by the runner as ``python -m autokitteh._worker IN_FD OUT_FD [UID]``, ahead of its
first session. Each ``start`` frame runs one session; the frames to the runner are described in
``autokitteh._frames`` (``print``, ``step``, ``activity``, ``syscall``, ``done``). After
``done`` the process puts itself back as it was before the session (user modules forgotten,
environment, ``print``, ``sys.path`` and cwd restored) and waits for the next ``start`` of the
same project; ``done`` says whether that worked (``reusable``). The runner decides whether to
send one.
"""

from __future__ import annotations

import _thread
import builtins
import ctypes
import functools
import importlib
import inspect
import io
import linecache
import os
import pickle
import queue
import resource
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FunctionType
from typing import Any, BinaryIO

from . import _hide, _runtime, _values
from ._channel import encode_frame, read_frame
from ._frames import MAX_ERROR_TYPE, cut_middle
from ._loader import UserCodeFinder, real_path
from .activities import ACTIVITY_ATTR
from .body import with_body
from .errors import AutoKittehError
from .event import Event

EXIT_PARENT_GONE = 70


def package_hint(e: ModuleNotFoundError, python_env: str) -> str:
    """How to make a missing module importable where this worker runs. ``python_env`` is
    what the runner chose: ``default`` (venv), ``project`` (its requirements.txt) or ``given``
    (AK_WORKER_PYTHON)."""
    module = (e.name or "?").split(".")[0]
    python = sys.executable
    lines = [f"Hint: no module {module!r} in the Python that runs this handler ({python})."]
    if python_env == "project":
        lines.append(
            "Add the package that provides it to the project's requirements.txt and deploy again."
        )
        return "\n".join(lines)
    lines.append(
        "List the package that provides it in a requirements.txt next to autokitteh.yaml and "
        "deploy again (the project then gets its own environment), or install it here:"
    )
    lines.append(f"    {python} -m pip install <package>")
    if python_env == "default":
        lines.append("(this is the default environment that `ak config where` shows).")
    elif python_env == "given":
        lines.append("(this Python was given by AK_WORKER_PYTHON).")
    return "\n".join(lines)


HOLD_BATCH = 64


class Channel:
    """The worker's end of the pipes. Sends are serialized so threads can print; replies
    to ``call`` arrive through a reader thread, which also ends the process when the runner
    goes away (its end of our input pipe closes)."""

    def __init__(self, fin: BinaryIO, fout: BinaryIO) -> None:
        self._in, self._out = fin, fout
        self._lock = threading.Lock()
        self._replies: queue.Queue[tuple[dict[str, Any], bytes] | None] = queue.Queue()
        self._held: list[bytes] = []  # frames that go with the next one (see ``hold``)
        self.idle = True  # between sessions: the runner closing our input is a normal end

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        self._put(encode_frame(header, blob), now=True)

    def hold(self, header: dict[str, Any]) -> None:
        """Queues a frame that needs no answer to go with the next frame sent (replayed
        steps, in order, ahead of anything that does something: one write for many). Every
        ``HOLD_BATCH`` of them go at once, so the runner checks them while the replay goes on."""
        self._put(encode_frame(header), now=False)

    def _put(self, frame: bytes, now: bool) -> None:
        with self._lock:
            self._held.append(frame)
            if now or len(self._held) >= HOLD_BATCH:
                self._out.write(b"".join(self._held))
                self._out.flush()
                self._held.clear()

    def receive(self) -> tuple[dict[str, Any], bytes] | None:
        return read_frame(self._in)

    def call(self, header: dict[str, Any], blob: bytes = b"") -> tuple[dict[str, Any], bytes]:
        self.send(header, blob)
        reply = self._replies.get()
        if reply is None:  # the runner went away; serve_replies is ending the process
            os._exit(EXIT_PARENT_GONE)
        return reply

    def next_start(self) -> tuple[dict[str, Any], bytes] | None:
        """Waits between sessions for the next frame; None when the runner closed the pipe."""
        return self._replies.get()

    def serve_replies(self) -> None:
        try:
            while (frame := self.receive()) is not None:
                self._replies.put(frame)
        except BaseException as e:  # not a frame: the worker cannot go on without its runner
            sys.stderr.write(f"worker: bad message from the runner: {e!r}\n")
            sys.stderr.flush()
            os._exit(EXIT_PARENT_GONE)
        self._replies.put(None)
        if not self.idle:  # mid-session: nobody is left to journal what the handler does
            os._exit(EXIT_PARENT_GONE)


def _capture_prints(rt: _runtime.Runtime) -> None:
    """Routes ``print`` to the session (``_Baseline.restore`` puts the original back)."""
    original = builtins.print

    def ak_print(
        *objects: Any,
        sep: str | None = " ",
        end: str | None = "\n",
        file: Any = None,
        flush: bool = False,
    ) -> None:
        if file is not None and file not in (sys.stdout, sys.stderr):
            original(*objects, sep=sep, end=end, file=file, flush=flush)
            return  # a print into the user's own file is not a session print
        buf = io.StringIO()
        original(*objects, sep=sep, end=end, file=buf)
        if rt.on_print(buf.getvalue()):  # replayed prints are neither journaled nor echoed
            original(*objects, sep=sep, end=end, file=file, flush=flush)

    builtins.print = ak_print


@functools.lru_cache(maxsize=256)
def module_name(path: str) -> str:
    """``simple.py`` -> ``simple``; ``pkg/mod.py`` -> ``pkg.mod``."""
    p = Path(path)
    return ".".join((*p.parent.parts, p.stem)) if p.parent != Path(".") else p.stem


def format_error(exc: BaseException, code_dir: str) -> tuple[str, str]:
    """Returns (``error: <repr>``, traceback text trimmed to frames in the user's code)."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [i for i, f in enumerate(frames) if f.filename.startswith(code_dir + os.sep)]
    kept = frames[user[0] :] if user else frames[-1:]
    tb = "Traceback (most recent call last):\n" + "".join(traceback.format_list(kept))
    tb += "".join(traceback.format_exception_only(type(exc), exc))
    return f"error: {exc!r}", tb


def _load(entrypoint: str, rt: _runtime.Runtime) -> Any:
    path, _, func = entrypoint.partition(":")
    rt.loading = True
    try:
        module = importlib.import_module(module_name(path))
    finally:
        rt.loading = False
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        raise LookupError(f"function {func!r} not found in {path}")
    return fn


def _takes_session_id(fn: Any) -> bool:
    """Whether the handler has a ``session_id`` parameter. A plain function's parameters are
    its code's (read directly: ``inspect.signature`` costs more than a trivial session)."""
    code = getattr(fn, "__code__", None)
    if type(fn) is FunctionType and code is not None and not hasattr(fn, "__wrapped__"):
        if "__signature__" not in fn.__dict__:
            n = code.co_argcount + code.co_kwonlyargcount
            return "session_id" in code.co_varnames[code.co_posonlyargcount : n]
    try:
        return "session_id" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _call(fn: Any, event: Event, session_id: str, rt: _runtime.Runtime) -> Any:
    kwargs = {"session_id": session_id} if _takes_session_id(fn) else {}
    if rt.durable and getattr(fn, ACTIVITY_ATTR, False) is True:
        result = rt.activity(fn, (event,), kwargs, f"{fn.__code__.co_filename}:{fn.__name__}")
    else:
        result = fn(event, **kwargs)
    if inspect.iscoroutine(result):
        import asyncio  # here: most handlers are not async, and it is slow to import

        result = asyncio.run(result)
    if isinstance(result, _runtime.Resolved):
        result = result.value
    return result


def _failed(
    ch: Channel, e: BaseException, code_dir: str, python_env: str, loading: bool
) -> dict[str, Any]:
    """The ``done`` header of a session in error. The system's own refusals (pickling,
    non-determinism), load failures and missing modules are also printed, so
    `ak session prints` shows what to do."""
    if isinstance(e, _runtime.Fatal):
        err, tb = cut_middle(str(e)), cut_middle(format_error(e, code_dir)[1])
        ch.send({"type": "print"}, err.encode("utf-8", "replace"))
    else:
        err, tb = (cut_middle(x) for x in format_error(e, code_dir))
        if loading or isinstance(e, ModuleNotFoundError):
            text = f"{err}\n\n{tb}"
            if isinstance(e, ModuleNotFoundError):
                text += "\n" + package_hint(e, python_env)
            ch.send({"type": "print"}, text.encode("utf-8", "replace"))
    return {
        "type": "done",
        "ok": False,
        "error": err,
        "traceback": tb,
        "error_type": cut_middle(type(e).__name__, MAX_ERROR_TYPE),
    }


class _Baseline:
    """The process as it was before a session, to put back afterwards so that the next
    session of the project finds it as a fresh worker would be (its modules imported anew).

    The environment is put back lazily: ``owed`` is what it should be between sessions, made
    true when the next session starts (with that session's variables on top), so variables
    that every session sets alike are not removed and set again each time."""

    owed: dict[bytes, bytes] | None = None

    def __init__(self) -> None:
        self.environ = _Baseline.owed if _Baseline.owed is not None else _environ_now()
        self.modules = set(sys.modules)
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.meta_path = list(sys.meta_path)
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self.print = builtins.print
        self.threads = set(threading.enumerate())
        self.thread_count = _thread._count()  # (also threads threading does not list)
        self.os_threads = _os_threads()

    def restore(self, code_dir: str) -> bool:
        """Undoes the session; False when something it left behind cannot be undone (a
        thread still running, a timer armed), in which case the worker must not take
        another session."""
        builtins.print = self.print
        _runtime.install(None)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        sys.meta_path[:] = self.meta_path
        sys.path[:] = self.path
        prefix = code_dir + os.sep
        for name in sys.modules.keys() - self.modules:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(prefix):
                del sys.modules[name]
        # Files the session wrote into its code directory must be importable by the next
        # one (the directory's finder caches its listing).
        invalidate = getattr(sys.path_importer_cache.get(code_dir), "invalidate_caches", None)
        if invalidate is not None:
            invalidate()
        linecache.clearcache()
        _Baseline.owed = self.environ
        try:
            os.chdir(self.cwd)
        except OSError:
            return False
        armed = any(signal.getitimer(t) != (0.0, 0.0) for t in _TIMERS)  # (`alarm` too)
        return not armed and not self._threads_left()

    def _threads_left(self) -> bool:
        """Whether a thread the session started still runs: one ``threading`` lists, or
        one started with ``_thread`` (which counts itself only once it first holds the
        interpreter: a process with more threads than before is given a moment to let
        such a one run; a library's threads of its own, not Python's, never count)."""
        if not set(threading.enumerate()) <= self.threads or _thread._count() > self.thread_count:
            return True
        if _os_threads() <= self.os_threads:
            return False
        deadline = time.monotonic() + 0.1  # (paid once by a session whose library made some)
        while time.monotonic() < deadline:
            time.sleep(0.001)
            if _thread._count() > self.thread_count:
                return True
        return False


# A timer the session armed would run its signal handler in a later session.
_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # (no /proc)
        return 0


def _environ_now() -> dict[bytes, bytes]:
    """The environment as the OS has it. CPython keeps it encoded beside ``os.environ``:
    copying that is cheap, where copying ``os.environ`` decodes every variable."""
    return dict(os.environ._data)  # type: ignore[attr-defined]


def _put_environ(saved: dict[bytes, bytes]) -> None:
    """Makes the environment ``saved`` again, touching only the variables that differ."""
    now = _environ_now()
    if now == saved:
        return
    for key in now.keys() - saved.keys():
        del os.environ[os.fsdecode(key)]
    for key, value in saved.items():
        if now.get(key) != value:
            os.environ[os.fsdecode(key)] = os.fsdecode(value)


def become_user(uid: int) -> None:
    """Drops every privilege for user ``uid`` (group ``uid``, no other groups), for good;
    files it creates are its own alone, and nothing it runs can gain privileges again
    (``PR_SET_NO_NEW_PRIVS``: a setuid program stays the user's). The process also becomes
    its descendants' reaper (``PR_SET_CHILD_SUBREAPER``): what a handler starts stays among
    its children even when it double-forks, so that the runner can tell from the worker's
    children alone whether a session left anything running (it then kills every process of
    the user). And it may not connect to the abstract Unix sockets of this host's other
    processes (``_scope_abstract_sockets``)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    os.umask(0o077)
    _prctl(38)  # PR_SET_NO_NEW_PRIVS
    global _reaper
    _reaper = _prctl(36)  # PR_SET_CHILD_SUBREAPER
    _scope_abstract_sockets()


# Landlock (Linux 6.12, ABI 6): system calls, and the scope that keeps a process from
# connecting to abstract Unix sockets made outside its domain.
_LANDLOCK_CREATE_RULESET, _LANDLOCK_RESTRICT_SELF = 444, 446
_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def _scope_abstract_sockets() -> bool:
    """Keeps this process and its descendants from connecting to abstract Unix sockets
    (``@name``: no file, so no permission guards them) that processes outside them made:
    another user's service listening on one is out of a handler's reach. Files, the network
    and sockets of its own are not restricted. Whether it could (a kernel before 6.12, or
    without Landlock, cannot: the fence then is file permissions alone)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        attr = _RulesetAttr(0, 0, _LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET)
        fd = libc.syscall(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
        if fd < 0:
            return False
        try:
            return bool(libc.syscall(_LANDLOCK_RESTRICT_SELF, fd, 0) == 0)
        finally:
            os.close(fd)
    except (OSError, AttributeError):  # not Linux
        return False


_reaper = False  # whether this process is its descendants' reaper (a worker of its own user)


def _prctl(option: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux: the user id alone
        return False


def reap_children() -> None:
    """Reaps the children that ended, in a worker that is its descendants' reaper: they
    stay zombies until this process waits for them (what its sessions started and did not
    wait for, and their orphans). Only between sessions: while a handler runs, its own
    ``subprocess`` objects wait for their processes, and must get their exit codes."""
    while _reaper:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# This worker's own temporary directories (``sandboxed``), in memory: emptied between
# sessions.
_private_temps: list[str] = []


def clear_private_temps() -> None:
    """Empties this worker's own temporary directories: what a session left there is its
    worker's memory, which the project's next sessions in this worker would otherwise
    inherit and pile up, until one of them ran over the memory limit for it."""
    for folder in _private_temps:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def sandboxed(
    uid: int,
    venv: str,
    memory_mb: int,
    processes: int,
    hidden: str = "",
    groups: str = "",
    files: int = 0,
    temp: str = "",
) -> None:
    """What a worker started by a root runner does before anything of its environment
    runs: it stops seeing ``hidden`` (see ``hide``), joins its user id's control group
    (``join_groups``), becomes its user, takes its limits, then opens its packages."""
    if hidden:  # (a fork server hid it once, for all its workers: it passes none)
        _hide.hide(hidden)
    if temp:  # (a namespace of its own: not its fork server's, which its siblings share)
        _hide.private_temp(temp.split(os.pathsep), memory_mb)
        _private_temps[:] = temp.split(os.pathsep)
    if groups:
        join_groups(groups, uid)
    become_user(uid)
    confine({"memory_mb": memory_mb, "processes": processes, "files": files})
    open_packages(venv)


def join_groups(parents: str, uid: int) -> None:
    """Moves this process into the control groups the runner made for user ``uid``
    (``u<uid>`` under each of ``parents``, ``os.pathsep`` between them: the memory
    controller's, and the cpu controller's where there is one), while it is still root:
    what it runs and starts from then on is held there to the kernel's memory limit and
    shares one scheduling group, whatever session it makes, and cannot leave (the groups
    are root's). OSError when a group is missing: a worker must not run outside the limits
    it was given."""
    for parent in parents.split(os.pathsep):
        fd = os.open(os.path.join(parent, f"u{uid}", "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)


def open_packages(venv: str) -> None:
    """A worker started isolated by a root runner (``-I -S``, the SDK from the runner's own
    copy), once it is its user: the packages of its environment go on the path after the
    standard library, and their ``.pth`` files and ``sitecustomize`` run, as this user.
    ``venv``: the virtual environment, or "-" for the interpreter's own packages (a venv's
    too when the interpreter is one)."""
    import site

    if venv == "-":
        home = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
        venv = home if os.path.exists(os.path.join(home, "pyvenv.cfg")) else ""
    if venv:
        sys.prefix = sys.exec_prefix = venv
        sys.executable = os.path.join(venv, "bin", "python")
    for packages in site.getsitepackages([sys.prefix]):
        site.addsitedir(packages)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:0] = extra  # as a plain start would (-I ignored it while root)
    site.setquit()  # exit(), quit(), help(), copyright() ... as a plain start has them
    site.setcopyright()
    site.sethelper()
    site.execsitecustomize()


def reopen_packages() -> None:
    """Opens the directories of the path that were missing when this process first looked
    (Python remembers one as missing for good) and are there now: a spare worker can start
    while its project environment is away (removed by a prune as the runner refilled its
    spares, and built again for the session that gets it), and imported none of its
    packages. Those of the environment's packages get their ``.pth`` files read, as at a
    start (``open_packages``)."""
    back = [
        path
        for path, finder in list(sys.path_importer_cache.items())
        if finder is None and os.path.isdir(path)
    ]
    if not back:
        return
    import site

    for path in back:
        del sys.path_importer_cache[path]
    for packages in site.getsitepackages([sys.prefix]):
        if packages in back:
            site.addsitedir(packages)


def confine(limits: dict[str, Any]) -> None:
    """Sets the limits the runner asked for (``memory_mb``: address space; ``processes``:
    of this user; ``files``: open files of each process) as hard limits, which the handler
    cannot raise again. One lower already (set by the system) stays."""
    for which, value in (
        (resource.RLIMIT_AS, int(limits.get("memory_mb") or 0) * 1024 * 1024),
        (resource.RLIMIT_NPROC, int(limits.get("processes") or 0)),
        (resource.RLIMIT_NOFILE, int(limits.get("files") or 0)),
    ):
        if value > 0:
            hard = resource.getrlimit(which)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))


def run(ch: Channel, start: dict[str, Any], payload: bytes) -> bool:
    """Runs one session and sends its ``done``; True when the process can take another."""
    grants = _runtime.same_clock(start.get("clock"))  # (first: read as soon as it came)
    confine(start.get("limits") or {})
    reap_children()  # what the runner killed after the last session
    reopen_packages()
    baseline = _Baseline()
    code_dir = real_path(start["code_dir"])
    ch.idle = False
    try:
        done, blob = _session(ch, start, payload, code_dir, baseline.environ, grants)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    reusable = baseline.restore(code_dir)
    if reusable:  # (no thread of the handler's is left to wait for its own processes)
        reap_children()  # what the session started and did not wait for, ended: not left
        clear_private_temps()
    ch.idle = True
    ch.send({**done, "reusable": reusable}, blob)
    return reusable


def _session(
    ch: Channel,
    start: dict[str, Any],
    payload: bytes,
    code_dir: str,
    environ: dict[bytes, bytes],
    grants: bool,
) -> tuple[dict[str, Any], bytes]:
    # ``environ`` is the worker's environment between sessions (the baseline's); the
    # session's own variables come on top (the baseline puts it back afterwards).
    wanted = dict(environ)
    wanted.update((os.fsencode(k), os.fsencode(v)) for k, v in (start.get("env") or {}).items())
    _put_environ(wanted)
    _Baseline.owed = None
    os.chdir(code_dir)
    python_env = str(start.get("python_env", ""))
    sys.path.insert(0, code_dir)
    sys.dont_write_bytecode = True
    init = pickle.loads(payload)  # made by the runner
    durable = bool(start.get("is_durable", True))
    finder = UserCodeFinder(code_dir, _runtime.GATES)

    def is_user(fn: Any) -> bool:
        target = getattr(fn, "__func__", fn)
        code = getattr(target, "__code__", None)
        if code is not None:
            return str(code.co_filename).startswith(finder.code_dir)
        return getattr(target, "__module__", None) in finder.modules

    rt = _runtime.Runtime(
        ch, int(start.get("prints") or 0), is_user, durable, init.get("replay"), grants
    )
    _runtime.install(rt)
    _capture_prints(rt)
    if durable:
        finder.install()
    try:
        event = _event(init, start["session_id"])
        fn = _load(start["entrypoint"], rt)
    except BaseException as e:
        return _failed(ch, e, code_dir, python_env, loading=True), b""
    try:
        result = _call(fn, event, start["session_id"], rt)
    except BaseException as e:
        return _failed(ch, e, code_dir, python_env, loading=False), b""
    return {"type": "done", "ok": True}, _result(ch, result, bool(start.get("child")))


def _event(init: dict[str, Any], session_id: str) -> Event:
    """The handler's event. Inputs of a session not started by an event (a child's, or
    given by hand) are values: decoded here, as data."""
    data = init["data"] or {}
    if not init.get("event_id"):
        data = _values.from_data(data, "the session's inputs")
    return Event(
        data=with_body(data),
        event_type=init.get("event_type"),
        event_id=init.get("event_id"),
        session_id=session_id,
    )


def _result(ch: Channel, result: Any, child: bool) -> bytes:
    """The handler's return value, encoded for its parent; a child whose return value is not
    a value says so in its prints (its parent gets None)."""
    try:
        return _values.dumps(result, "the handler's return value")
    except AutoKittehError as e:  # not a value, or over the size limit
        if child:
            ch.send({"type": "print"}, f"{e}: the parent session gets None".encode())
        return b""


def close_other_fds(keep: set[int]) -> None:
    """Closes every descriptor above stderr but ``keep``: a process started or forked by
    the runner may hold copies of others it was never meant to have (uvloop's spawn leaves
    the runner's stdout and stderr, which are ``ak up``'s and maybe an operator's terminal,
    open in the child), and a handler would write to them, or read the terminal."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return max(int(x) for x in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):  # not Linux
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str]) -> None:
    """``IN_FD OUT_FD [UID VENV MEMORY_MB PROCESSES HIDDEN GROUPS FILES TEMP]``: with a user
    id, the process (started as root, isolated) hides ``HIDDEN`` ("-": nothing), gets the
    temporary directories ``TEMP`` of its own ("-": none; ``_hide.private_temp``), joins its
    control group under ``GROUPS`` ("-": none; ``join_groups``), becomes that user, takes
    its limits (``FILES``: open files of each process), then opens its environment's
    packages (``open_packages``)."""
    close_other_fds({int(argv[0]), int(argv[1])})
    if len(argv) > 5:
        hidden, groups = [a if a != "-" else "" for a in (argv[6:8] + ["-", "-"])[:2]]
        files = int(argv[8]) if len(argv) > 8 else 0
        temp = argv[9] if len(argv) > 9 and argv[9] != "-" else ""
        sandboxed(int(argv[2]), argv[3], int(argv[4]), int(argv[5]), hidden, groups, files, temp)
    os.dup2(2, 1)  # what a handler writes to stdout is not the runner's: see its stderr
    fin = os.fdopen(int(argv[0]), "rb", buffering=0)
    fout = os.fdopen(int(argv[1]), "wb", buffering=0)
    ch = Channel(fin, fout)
    threading.Thread(target=ch.serve_replies, daemon=True).start()
    while (frame := ch.next_start()) is not None and frame[0].get("type") == "start":
        if not run(ch, frame[0], frame[1]):
            break
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
