"""A service's heap once it is up (``akcore.service.settle_heap``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def test_settle_heap_hides_what_was_made_at_start_and_still_collects_what_comes_after() -> None:
    # In a process of its own: freezing pytest's heap would outlive the test.
    script = textwrap.dedent(
        """
        import gc, weakref
        from akcore import service

        class Node:
            pass

        assert gc.get_freeze_count() == 0
        service.settle_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 1000, frozen  # the modules imported so far, at least
        # What the service makes later is still the collector's: a cycle left behind goes.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        print("ok", frozen)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")


def test_the_event_loop_setting_is_read_as_it_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings`` takes AK_EVENT_LOOP in any case (``ASYNCIO``, `` asyncio``); the
    services then ran uvloop all the same, as for any value but ``asyncio`` itself."""
    from akcore.config import Settings
    from akcore.service import loop_factory

    for value in ("ASYNCIO", " asyncio ", "Asyncio"):
        monkeypatch.setenv("AK_EVENT_LOOP", value)
        Settings.from_env()  # taken
        assert loop_factory() is None, value


def test_nats_not_answering_ends_a_service_in_one_line() -> None:
    """A NATS request that times out as a service starts (a NATS node frozen meanwhile: the
    store's secrets key check) ends it with exit code 1, for its supervisor to start it
    again, in one line; it was a traceback of 60 lines."""
    script = textwrap.dedent(
        """
        import nats.errors
        from akcore import service

        async def run(settings, stop):
            raise nats.errors.TimeoutError

        service.main("store", run)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        "stopped: NATS or the store did not answer (TimeoutError: nats: timeout); exiting so "
        "that the supervisor starts this service again"
    ), lines


def test_a_programming_error_of_nats_py_keeps_its_traceback() -> None:
    """Not every error of nats-py's passes: one saying the code is wrong must show where."""
    script = textwrap.dedent(
        """
        import nats.errors
        from akcore import service

        async def run(settings, stop):
            raise nats.errors.Error("nats: must use coroutine for subscriptions")

        service.main("store", run)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "must use coroutine" in out.stderr
