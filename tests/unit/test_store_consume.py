"""How a store's consumer (``ak_store.service.consume``) goes on when a batch fails for a
reason that is neither the database's (away, read-only) nor surely one message's: a bug
of the store's on one record (an error of SQLAlchemy's own, an OSError, a PostgreSQL class
outside 22, 23 and 54). JetStream stands in as a puller that hands back what was not
acknowledged, all in one batch, as a busy stream does."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import ak_store.service as store_service
import pytest
from akcore import bus, subjects, wire
from sqlalchemy import create_engine
from sqlalchemy.exc import InvalidRequestError


class FakeMsg:
    def __init__(self, rec: wire.JournalRecord) -> None:
        self.rec = rec
        self.data = wire.encode(rec)
        self.subject = subjects.journal_subject(rec.session_id)
        self.headers: dict[str, str] = {}
        self.metadata = SimpleNamespace(num_delivered=1)
        self.outcome = ""

    async def ack(self) -> None:
        self.outcome = "ack"

    async def nak(self, delay: float | None = None) -> None:
        self.outcome = "nak"

    async def term(self) -> None:
        self.outcome = "term"


class FakePuller:
    """Hands every message not acknowledged yet back in one batch, ``rounds`` times."""

    def __init__(self, msgs: list[FakeMsg], stop: asyncio.Event, rounds: int) -> None:
        self.msgs, self.stop, self.rounds = msgs, stop, rounds

    async def take(self, n: int, timeout: float | None = None) -> list[FakeMsg]:
        pending = [m for m in self.msgs if m.outcome in ("", "nak")]
        if not pending:  # (all handed out: none more until some come back)
            if all(m.outcome in ("ack", "term") for m in self.msgs):
                self.stop.set()
            return []
        if not self.rounds:
            self.stop.set()
            return []
        self.rounds -= 1
        for m in pending:
            if m.outcome:
                m.metadata.num_delivered += 1
            m.outcome = "out"  # (not handed out again until acknowledged or handed back)
        return pending

    async def close(self) -> None:
        pass


async def _consume(
    monkeypatch: pytest.MonkeyPatch, recs: list[wire.JournalRecord], fails: Any, rounds: int
) -> tuple[list[FakeMsg], list[wire.JournalRecord], list[str]]:
    """Runs ``consume`` over ``recs``, applying each batch unless ``fails(batch)``;
    the messages, the records applied, and what was set aside."""
    monkeypatch.setattr(store_service, "OUTAGE_PAUSE", 0.001)
    monkeypatch.setattr(store_service, "OUTAGE_PAUSE_MAX", 0.001)
    stop = asyncio.Event()
    msgs = [FakeMsg(r) for r in recs]
    puller = FakePuller(msgs, stop, rounds)

    async def bind(nc: Any, durable: str) -> FakePuller:
        return puller

    monkeypatch.setattr(bus.Puller, "bind", bind)
    applied: list[wire.JournalRecord] = []
    aside: list[str] = []

    def apply(conn: Any, batch: list[wire.JournalRecord]) -> None:
        if fails(batch):
            raise InvalidRequestError("a bug of the store's")
        applied.extend(batch)

    async def sql(fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def set_aside(rec: wire.JournalRecord, error: str) -> None:
        aside.append(rec.session_id)

    engine = create_engine("sqlite://")
    await store_service.consume(
        None,  # type: ignore[arg-type]
        "store-journal",
        wire.JournalRecord,
        apply,
        engine,
        stop,
        sql,
        set_aside=set_aside,
    )
    return msgs, applied, aside


def _records(*sids: str) -> list[wire.JournalRecord]:
    return [wire.JournalRecord(s, 0, wire.CREATED, 1, {"project_id": "prj_1"}) for s in sids]


async def test_one_records_bug_holds_up_no_other_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch went back whole, each time (no other session's record reached SQL while
    the bad one came back with them); now the others are applied in the first round and
    the bad one alone waits (not set aside: its failure is not surely its own)."""
    recs = _records("ses_bad", "ses_a", "ses_b")
    msgs, applied, aside = await _consume(
        monkeypatch, recs, lambda batch: any(r.session_id == "ses_bad" for r in batch), rounds=1
    )
    assert [r.session_id for r in applied] == ["ses_a", "ses_b"]
    assert [m.outcome for m in msgs] == ["nak", "ack", "ack"]
    assert not aside


async def test_a_record_failing_alone_for_ever_is_set_aside_in_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record failing for no known reason while the others go through is not retried
    for ever (its session would never end): after MAX_UNKNOWN_ATTEMPTS deliveries it is
    set aside, as one failing by its own doing is after fewer."""
    recs = _records("ses_bad", "ses_a", "ses_b")
    rounds = store_service.MAX_UNKNOWN_ATTEMPTS + 5
    msgs, applied, aside = await _consume(
        monkeypatch,
        recs,
        lambda batch: any(r.session_id == "ses_bad" for r in batch),
        rounds=rounds,
    )
    assert [r.session_id for r in applied] == ["ses_a", "ses_b"]
    assert aside == ["ses_bad"]
    assert msgs[0].outcome == "term"
    assert msgs[0].metadata.num_delivered == store_service.MAX_UNKNOWN_ATTEMPTS


async def test_a_failure_of_every_record_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """When every record fails alike (a schema older than the code), none is set aside,
    however many rounds (more than a record failing alone is given)."""
    msgs, applied, aside = await _consume(
        monkeypatch,
        _records("ses_a", "ses_b"),
        lambda batch: True,
        rounds=store_service.MAX_UNKNOWN_ATTEMPTS + 5,
    )
    assert not applied and not aside
    assert [m.outcome for m in msgs] == ["nak", "nak"]
