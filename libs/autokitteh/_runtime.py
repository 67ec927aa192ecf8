"""The worker's durable runtime: every durable step of handler code goes through the runner.

Before each step (activity, durable sleep, system call) the worker asks the runner with a
``step`` frame: a step the journal already has comes back recorded and is not done again
(replay); a live activity runs only once the runner says go (so a worker whose runner is
frozen or gone starts nothing new), and its outcome is journaled before the handler sees
it. The go may come in advance, with the reply that ended the step before (``go_until``):
the worker then starts the activity at once, telling the runner without waiting, if it is
still before that deadline (the runner makes it end before its hold on the job could). The
replay rules themselves live in the runner (``akcore.journal``).

One session per worker process, so the runtime is a module-level singleton that the
instrumented code reaches through ``_ak_call`` / ``_ak_async_call``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import activities
from ._channel import FrameTooLarge
from ._frames import MAX_ERROR_TYPE, cut_middle, cut_print
from ._gate import Decision, decide, short_name
from .errors import AutoKittehError

MAX_PAYLOAD = 1024 * 1024
_real_sleep = time.sleep
_monotonic = time.monotonic  # (the handler may patch time's functions: a grant needs the real)
# How far past the runner's clock in the start frame this process's may read and still be
# taken for the same clock (``same_clock``).
CLOCK_SLACK = 1.0

PICKLE_HINT = (
    "Activity arguments and results travel through pickle. Move the code that creates or "
    "uses this value into one function decorated with @autokitteh.activity, so that only "
    "picklable values cross the activity boundary."
)


class Fatal(BaseException):
    """Ends the session in ERROR whatever the handler catches."""


class Channel(Protocol):
    def call(self, header: dict[str, Any], blob: bytes = b"") -> tuple[dict[str, Any], bytes]: ...
    def send(self, header: dict[str, Any], blob: bytes = b"") -> None: ...
    def hold(self, header: dict[str, Any]) -> None: ...


class Resolved:
    """An already finished awaitable: what an async activity's caller gets when it did not
    await the call directly."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # pragma: no cover  (makes this a generator)


def _where(depth: int) -> str:
    frame = sys._getframe(depth)
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A digest of the arguments; arguments that cannot be pickled are described by type."""
    try:
        data = pickle.dumps((args, kwargs))
    except Exception:
        data = repr([type(a).__qualname__ for a in args] + sorted(kwargs)).encode()
    return hashlib.sha256(data).hexdigest()[:16]


class Runtime:
    def __init__(
        self,
        channel: Channel,
        replayed_prints: int,
        is_user: Callable[[Any], bool],
        durable: bool,
        replay: dict[int, tuple[str, str, dict[str, Any], bytes]] | None = None,
        grants: bool = False,
    ) -> None:
        """``grants``: whether go-aheads in advance may be used (``same_clock``)."""
        self.channel, self.replayed_prints = channel, replayed_prints
        # The journal's recorded steps, as (kind, function, the runner's answer, its blob).
        self.replay = replay or {}
        self.is_user, self.durable = is_user, durable
        self.loading = False
        self.step = 0
        self.prints = 0
        self.grants = grants
        self.go_until = 0.0  # the go-ahead in advance for the next step (time.monotonic())
        self._local = threading.local()
        self._lock = threading.RLock()  # one activity (or durable step) at a time

    # --- state

    @property
    def in_activity(self) -> bool:
        return bool(getattr(self._local, "in_activity", False))

    def decision(self, fn: Any) -> Decision:
        if not self.durable:
            return Decision.DIRECT
        return decide(
            fn,
            in_activity=self.in_activity,
            loading=self.loading,
            inhibited=activities.inhibited() > 0,
            is_user=self.is_user,
        )

    # --- prints

    def on_print(self, text: str) -> bool:
        """Sends a print to the runner; False when it is a replayed print not to be repeated."""
        if _runtime is not self:  # a forked child's: printed plainly (to its stderr)
            return True
        body = text.removesuffix("\n")  # the end print() adds is not the user's text
        kept, cut = cut_print(body)
        blob = (kept + text[len(body) :]).encode("utf-8", "replace")  # (lone surrogates)
        header: dict[str, Any] = {"type": "print"}
        if cut:
            header["cut"] = cut
        if self.in_activity:
            self.channel.send({**header, "activity": True}, blob)
            return True
        self.prints += 1
        if self.prints <= self.replayed_prints:
            return False
        self.channel.send({**header, "n": self.prints}, blob)
        return True

    # --- durable steps

    def _ask(
        self, kind: str, name: str, where: str, blob: bytes = b"", **extra: Any
    ) -> tuple[int, dict[str, Any], bytes]:
        """Asks the runner for the next step: recorded (replayed) or live. A recorded step
        whose answer the start frame held is sent ahead and not waited for (the runner
        checks it against the journal and ends the session if the code took another path)."""
        self.step += 1
        header = {"type": "step", "step": self.step, "kind": kind, "function": name}
        header.update(where=where, **extra)
        known = self.replay.pop(self.step, None)
        if known is not None and (known[0], known[1]) == (kind, name):
            self.channel.hold({**header, "ahead": True, "args": {}})
            return self.step, known[2], known[3]
        until, self.go_until = self.go_until, 0.0  # for this step only, used or not
        # Live, or the code asks for something else than the journal has here: the runner
        # decides (and ends the session if the code took another path).
        try:
            if kind == "activity" and _monotonic() < until:  # go-ahead given: not waited for
                self.channel.send({**header, "granted": True}, blob)
                return self.step, {}, b""
            reply, rblob = self.channel.call(header, blob)
        except FrameTooLarge as e:  # not sent: the step did not happen
            self.step -= 1
            raise AutoKittehError(f"{name}: its arguments are too large: {e}") from None
        self._take_grant(reply)
        return self.step, reply, rblob

    def _take_grant(self, reply: dict[str, Any]) -> None:
        """Keeps the go-ahead in advance a reply carries, if any, for the next step."""
        until = reply.get("go_until")
        self.go_until = 0.0
        if self.grants and isinstance(until, (int, float)) and not isinstance(until, bool):
            self.go_until = float(until)

    def sleep(self, seconds: float, where: str) -> None:
        """A durable sleep: its deadline is journaled, so a replay waits only what remains."""
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            _real_sleep(seconds)  # (time.sleep's own error: no frame carries such a number)
        with self._lock:
            _, reply, _ = self._ask("sleep", "sleep", where, seconds=seconds)
        remaining = reply["deadline_us"] / 1e6 - time.time()
        if remaining > 0:
            _real_sleep(remaining)

    def _record(
        self,
        step: int,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ok: bool,
        value: Any,
        t0: int,
    ) -> None:
        """Pickles and journals an outcome (write-ahead). The caller gets the very value or
        exception the activity produced; the journal keeps what a replay can restore."""
        name = short_name(fn)
        if ok:
            try:
                blob = pickle.dumps(value)
            except Exception as e:
                raise Fatal(
                    f"error: activity {name!r} returned a value that cannot be pickled: "
                    f"{type(e).__name__}({str(e)!r})\n{PICKLE_HINT}"
                ) from None
            try:
                pickle.loads(blob)  # a replay must be able to restore it
            except Exception as e:
                raise Fatal(
                    f"error: activity {name!r} returned a value that pickles but cannot be "
                    f"restored from pickle (a replay would fail): "
                    f"{type(e).__name__}({str(e)!r})\n{PICKLE_HINT}"
                ) from None
        else:
            try:
                blob = pickle.dumps(value)
                pickle.loads(blob)
            except Exception:  # a replay raises this stand-in, naming the original
                blob = pickle.dumps(AutoKittehError(f"{_type_name(value)}: {_text(value)}"))
        if len(blob) > MAX_PAYLOAD:
            raise Fatal(
                f"error: the result of activity {name!r} is {len(blob)} bytes, larger "
                f"than the {MAX_PAYLOAD} byte limit; return less data (store big data "
                "elsewhere and return a reference)"
            )
        header = {
            "type": "activity",
            "step": step,
            "function": name,
            "ok": ok,
            "digest": digest(args, kwargs),
            "t0_ns": t0,  # when it started and ended, for the runner's trace span
            "t1_ns": time.time_ns(),
        }
        if not ok:
            header["error"] = cut_middle(_describe(value))
            header["error_type"] = cut_middle(type(value).__name__, MAX_ERROR_TYPE)
        reply, _ = self.channel.call(header, blob)  # write-ahead: acked before it is used
        self._take_grant(reply)

    @staticmethod
    def _outcome(reply: dict[str, Any], blob: bytes, name: str) -> Any:
        try:
            value = pickle.loads(blob)
        except Exception as e:
            raise AutoKittehError(f"cannot restore the result of {name}: {e!r}") from None
        if not reply.get("ok"):
            raise value
        return value

    def activity(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> Any:
        with self._lock:
            name = short_name(fn)
            step, reply, blob = self._ask("activity", name, where)
            if reply.get("replayed"):
                value = self._outcome(reply, blob, name)
                return Resolved(value) if inspect.iscoroutinefunction(fn) else value
            self._local.in_activity = True
            t0 = time.time_ns()
            try:
                value, ok = fn(*args, **kwargs), True
                if inspect.iscoroutine(value):
                    value = _run_coroutine(value)
            except Fatal:
                raise
            except BaseException as e:
                value, ok = e, False
            finally:
                self._local.in_activity = False
            if _runtime is not self:  # (the child of an os.fork() this activity made)
                if not ok:
                    raise value
                return value
            self._record(step, fn, args, kwargs, ok, value, t0)
        if not ok:
            raise value
        return Resolved(value) if inspect.iscoroutinefunction(fn) else value

    def syscall(self, name: str, args: dict[str, Any], blob: bytes = b"", where: str = "") -> Any:
        """Asks the runner to do ``name``; durable (journaled, replayed) in handler code."""
        if self.in_activity or not self.durable:
            header = {"type": "syscall", "name": name, "args": args}
            try:
                reply, rblob = self.channel.call(header, blob)
            except FrameTooLarge as e:
                raise AutoKittehError(f"{name}: its arguments are too large: {e}") from None
            return _syscall_result(name, reply, rblob)
        with self._lock:
            _, reply, rblob = self._ask(name, name, where, blob, args=args)
        return _syscall_result(name, reply, rblob)

    async def async_activity(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], where: str
    ) -> Any:
        with self._lock:
            name = short_name(fn)
            step, reply, blob = self._ask("activity", name, where)
            if reply.get("replayed"):
                return self._outcome(reply, blob, name)
            self._local.in_activity = True
            t0 = time.time_ns()
            try:
                value, ok = await fn(*args, **kwargs), True
            except Fatal:
                raise
            except BaseException as e:
                value, ok = e, False
            finally:
                self._local.in_activity = False
            if _runtime is not self:  # (the child of an os.fork() this activity made)
                if not ok:
                    raise value
                return value
            self._record(step, fn, args, kwargs, ok, value, t0)
        if not ok:
            raise value
        return value


def same_clock(runner_clock: Any) -> bool:
    """Whether this process reads the runner's monotonic clock (the one go-ahead deadlines
    are in), its reading ``runner_clock`` having been taken just before: not behind it, and
    not more than CLOCK_SLACK ahead. A process in another time namespace fails this; one
    that read it late only goes without go-aheads in advance."""
    if not isinstance(runner_clock, (int, float)) or isinstance(runner_clock, bool):
        return False
    return 0.0 <= _monotonic() - runner_clock <= CLOCK_SLACK


def _type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<its str() failed>"


def _describe(exc: BaseException) -> str:
    """``repr(exc)``, or its type and arguments when its own ``repr`` fails."""
    try:
        return repr(exc)
    except Exception:
        try:
            return f"{type(exc).__name__}{exc.args!r}"
        except Exception:
            return f"{type(exc).__name__}(<its repr() failed>)"


def _syscall_result(name: str, header: dict[str, Any], blob: bytes) -> Any:
    if header.get("error"):
        raise AutoKittehError(f"{name}: {header['error']}")
    return pickle.loads(blob) if blob else None  # made by the runner from plain data


def _run_coroutine(coro: Any) -> Any:
    """Runs a coroutine to completion, also from inside a running event loop."""
    import asyncio  # here: most sessions never need it, and it is slow to import

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


_runtime: Runtime | None = None
forked = False  # this process was forked from a session's worker (``_after_fork_in_child``)


def _after_fork_in_child() -> None:
    """A process forked from a session's worker (``os.fork``, ``multiprocessing``) runs
    outside the session: its calls run plainly, its prints go to its stderr, and system
    calls say they cannot (the worker's pipes are the worker's: a step of the child's
    would be a second answer to the worker's, and end the session as a malformed one)."""
    global _runtime, forked
    if _runtime is not None:
        _runtime, forked = None, True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def install(rt: Runtime | None) -> None:
    global _runtime
    _runtime = rt


def ak_call(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """The gate every instrumented call goes through."""
    rt = _runtime
    if rt is None:
        return fn(*args, **kwargs)
    d = rt.decision(fn)
    if d is Decision.DIRECT:
        return fn(*args, **kwargs)
    if d is Decision.SLEEP:
        if len(args) != 1 or kwargs:
            return fn(*args, **kwargs)  # let time.sleep raise its own TypeError
        return rt.sleep(float(args[0]), _where(2))
    return rt.activity(fn, args, kwargs, _where(2))


async def ak_async_call(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """The gate of ``await f(...)`` in instrumented code."""
    rt = _runtime
    d = rt.decision(fn) if rt is not None else Decision.DIRECT
    if rt is None or d is Decision.DIRECT:
        return await fn(*args, **kwargs)
    if d is Decision.SLEEP:
        return rt.sleep(float(args[0]), _where(2))
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__func__", None)
    ):
        return await rt.async_activity(fn, args, kwargs, _where(2))
    result = rt.activity(fn, args, kwargs, _where(2))
    return await result if inspect.isawaitable(result) else result


GATES = {"_ak_call": ak_call, "_ak_async_call": ak_async_call}
