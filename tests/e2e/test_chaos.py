"""A short chaos soak (bench/chaos.py): webhooks at a steady rate on two of each service,
PostgreSQL and a 3-node NATS cluster, while random services are killed and one runner is
frozen past the ack wait. No accepted webhook may be lost or run twice as a session, every
session must end, and no activity the journal holds may run again."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Config, run
from bench.chaos_faults import DB, FREEZE, KILL, SERVICES, Fault, plan
from tests.pg import fresh_database

ACK_WAIT = 5  # seconds: the frozen runner's jobs go to the other runner while it is stopped


@pytest.mark.timeout(420)
def test_chaos_soak_loses_nothing_and_runs_no_finished_activity_twice(tmp_path: Path) -> None:
    duration = 30.0
    faults = plan(seed=7, duration=duration, every=4.0, mode="kill", targets=SERVICES)
    faults.append(Fault(at=8.0, action=FREEZE, target="runner"))
    with fresh_database() as dsn:
        t = run(
            Config(
                rate=4,
                duration=duration,
                sleep=1.0,
                freeze=ACK_WAIT + 4,
                drain=150,
                faults=faults,
                dsn=dsn,
                root=tmp_path,
                env={"AK_JOBS__ACK_WAIT": str(ACK_WAIT)},
            )
        )
    table = t.table()
    assert t.faults[(FREEZE, "runner")] == 1, table
    assert sum(t.faults.values()) >= len(faults) // 2, table  # the faults did happen
    assert t.states["COMPLETED"] > 0, table
    assert t.drained, table
    assert {k: n for k, n in t.failures().items() if n} == {}, table


@pytest.mark.timeout(480)
def test_chaos_soak_with_the_database_killed_and_frozen(tmp_path: Path) -> None:
    """The same soak on a PostgreSQL of the harness's own, killed (SIGKILL of every one of
    its processes, then started again: a crash recovery) and frozen past the services'
    request timeouts, with a runner killed while it is down (its sessions resume on the
    next runner meanwhile: they must wait for the database, not end in ERROR "could not
    prepare the session's code: build.get failed with OperationalError") and stores
    killed. Nothing is lost, listed twice or left unlisted (a session whose records the
    store set aside), and every session completes."""
    faults = [
        Fault(at=4.0, action=KILL, target=DB),
        Fault(at=6.0, action=KILL, target="runner"),
        Fault(at=10.0, action=KILL, target="store"),
        Fault(at=20.0, action=FREEZE, target=DB),
        Fault(at=24.0, action=KILL, target="store"),
    ]
    t = run(
        Config(
            rate=4,
            duration=30.0,
            sleep=1.0,
            freeze=12.0,
            db_down=12.0,
            drain=200,
            faults=faults,
            targets=(*SERVICES, DB),
            root=tmp_path,
            env={"AK_JOBS__ACK_WAIT": str(ACK_WAIT)},
        )
    )
    table = t.table()
    assert t.faults[(KILL, DB)] == 1 and t.faults[(FREEZE, DB)] == 1, table
    assert t.drained, table
    assert {k: n for k, n in t.failures().items() if n} == {}, table
    assert set(t.states) == {"COMPLETED"}, table
