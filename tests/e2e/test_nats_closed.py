"""A service whose NATS connection the server closes for good exits, and `ak up` restarts
it: a runner's session there resumes after the restart. The server closes it as it does a
client that announces a message over its limit (the runner's ``nats_closed`` fault)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.faultproject import EFFECT, Env, fault_env, fire, gone, runs

CODE = (
    EFFECT
    + """

def lost(event, session_id):
    print("worker", effect(session_id, "a1"))
    time.sleep(0.1)  # a durable sleep, step 2: the worker waits for its record
    effect(session_id, "a2")
    print("done")
"""
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    settings = {
        # The server closes the runner's connection as the sleep is asked for (its record
        # is written on the closed connection: not stored; nothing runs meanwhile).
        "AK_TEST__FAULTS": "nats_closed step step=2 entry=f.py:lost",
        "AK_JOBS__ACK_WAIT": "3",  # the job the runner held comes back after 3 s, not 15
    }
    yield from fault_env(tmp_path_factory, "closed", CODE, ["lost"], settings, ())


def test_a_runner_whose_connection_is_closed_for_good_is_restarted(env: Env) -> None:
    """Before, nats-py took the server's ``-ERR`` as the end of the connection (no
    reconnect) and the runner lived on without NATS: no session of any project ran again."""
    stack, paths, markers = env
    before = stack.pids("runner")
    sid = fire(stack, "closed", paths["lost"])
    session = stack.wait_session(sid, timeout=50)
    assert session["state"] == "COMPLETED", session
    out = stack.output()
    said = "closed for good (nats: maximum payload violation); exiting so that the supervisor"
    assert said in out
    assert "[ak] runner exited with code 1" in out
    after = stack.pids("runner")
    assert after and not set(after) & set(before)
    assert all(gone(pid) for pid in before)
    # The first attempt's worker ended with its runner; the recorded activity was replayed.
    first, *again = runs(markers, sid, "a1")
    assert not again and gone(first)
    assert len(runs(markers, sid, "a2")) == 1
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    assert prints == f"worker {first}\ndone\n"
