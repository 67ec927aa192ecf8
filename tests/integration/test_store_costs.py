"""What one request may cost the store, which answers one at a time on SQLite (four on
PostgreSQL) for every project: a token limited to one project filled its own project with
big rows (events of 1 MiB, builds of 5 MiB, sessions with 4 MiB inputs, prints of 256 KiB)
and repeated a list or an export; each took the store seconds, and another project's
webhooks waited 7 to 18 s for their handlers (repro/store_slow.py). Here: what each of
those reads of the database, counted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ak_store.api import LIST_READ_BYTES, LIST_READ_ROWS, RECORDS_READ, StoreApi
from ak_store.materialize import apply_events, apply_records
from ak_store.models import Build, Session, SessionRecord
from akcore import journal, wire
from sqlalchemy import Engine, text
from sqlalchemy import event as sa_event

from .helpers import KEYS, call

MANIFEST = """\
version: v1
project:
  name: evil
  triggers:
    - name: hook
      call: h.py:on_event
      webhook: {}
"""


@pytest.fixture
def statements(store: tuple[StoreApi, Engine]) -> Iterator[list[str]]:
    """The SQL statements the store runs from now on."""
    _, engine = store
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    sa_event.listen(engine, "before_cursor_execute", record)
    yield seen
    sa_event.remove(engine, "before_cursor_execute", record)


def test_a_list_of_events_does_not_read_their_data(
    store: tuple[StoreApi, Engine], statements: list[str]
) -> None:
    """`ak event list` read each of its 1,000 events' data (up to 8 MiB each) to show
    their ids, types and memos: 1.3 s a list for events of 1 MiB."""
    api, engine = store
    pid = call(api, "manifest.apply", {"text": MANIFEST})["project_id"]
    blob = "y" * (1 << 20)
    events = [
        wire.Event(f"evt_{i:026d}", pid, "trg_x", "post", {"body": blob}, {"m": str(i)}, i)
        for i in range(3)
    ]
    with engine.begin() as conn:
        apply_events(conn, events, KEYS)
    statements.clear()
    listed = call(api, "event.list", {"project": "evil"})
    assert [e["memo"] for e in listed] == [{"m": "2"}, {"m": "1"}, {"m": "0"}]
    assert [e["event_type"] for e in listed] == ["post"] * 3
    reads = [s for s in statements if "FROM events" in s]
    assert reads and not any("events.data" in s for s in reads), reads


def loaded(table: type) -> list[Any]:
    """The rows of ``table`` the store makes objects of from now on (each one it read)."""
    seen: list[Any] = []
    sa_event.listen(table, "load", lambda target, _ctx: seen.append(target))
    return seen


def test_a_page_of_records_reads_no_more_records_than_it_holds(
    store: tuple[StoreApi, Engine],
) -> None:
    """`ak session log` read a page's 1,000 records before keeping the first 1 MiB of
    them: 190 prints of 256 KiB (a session's 50 MiB journal) for 5 of them."""
    api, engine = store
    sid = "ses_01m8cpgk96e6wakscbfn3064d1"
    created = {"project_id": "prj_x", "entrypoint": "h.py:chatty"}
    line = "x" * (256 * 1024 - 1)
    recs = [wire.JournalRecord(sid, 0, wire.CREATED, 1_000, created)]
    recs += [
        wire.JournalRecord(sid, i, wire.PRINT, 1_000 + i, {"text": line, "n": i})
        for i in range(1, 41)
    ]
    with engine.begin() as conn:
        apply_records(conn, [journal.seal(r, KEYS) for r in recs], KEYS)
    seen = loaded(SessionRecord)
    page = call(api, "session.records", {"session": sid})
    assert 1 < len(page["records"]) < 10 and page["more"]
    assert len(seen) <= len(page["records"]) + RECORDS_READ, len(seen)
    got, skip = [], 0
    while True:  # and paging through still gives every record, once
        page = call(api, "session.records", {"session": sid, "skip": skip})
        got += [r["seq"] for r in page["records"]]
        skip += len(page["records"])
        if not page["more"]:
            break
    assert got == list(range(41))
    assert call(api, "session.records", {"session": sid, "limit": 3})["more"]
    assert not call(api, "session.records", {"session": sid, "skip": 39, "limit": 2})["more"]


def test_an_export_reads_the_newest_build_only(store: tuple[StoreApi, Engine]) -> None:
    """`ak project export` sorted the project's builds with their files (200 of 5 MiB:
    2 to 5 s of the store each) to take the newest."""
    api, _ = store
    call(api, "manifest.apply", {"text": MANIFEST})
    for i in range(5):
        call(api, "build.create", {"project": "evil", "files": {"h.py": f"# {i}\n".encode()}})
    seen = loaded(Build)
    assert call(api, "project.export", {"project": "evil"})["files"] == {"h.py": b"# 4\n"}
    assert len(seen) == 1


def test_the_newest_sessions_and_builds_of_a_project_come_off_an_index(
    store: tuple[StoreApi, Engine],
) -> None:
    """SQLite sorted every session of a project, inputs and all, for each page of them."""
    _, engine = store
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plans")
    queries = (
        "SELECT * FROM session WHERE project_id = 'p' "
        "ORDER BY created_us DESC, session_id DESC LIMIT 51",
        "SELECT build_id FROM build WHERE project_id = 'p' "
        "ORDER BY created_us DESC, build_id DESC LIMIT 1",
    )
    with engine.connect() as conn:
        for q in queries:
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + q)))
            assert "newest" in plan and "TEMP B-TREE" not in plan, plan


def test_a_page_of_sessions_ends_once_it_has_read_its_share_of_inputs(
    store: tuple[StoreApi, Engine],
) -> None:
    """A page of sessions read all of its sessions (up to 1,000) and opened their inputs
    (up to 8 MiB each, sealed with the memo it shows): 60 sessions with 4 MiB inputs took
    the store 2 s a page. A page now ends once it has read LIST_READ_BYTES of inputs, and
    the next page goes on after it."""
    api, engine = store
    pid = call(api, "manifest.apply", {"text": MANIFEST})["project_id"]
    blob = "z" * (3 << 20)
    sids = [f"ses_01m8cpgk96e6wakscbfn30{i:04d}" for i in range(12)]
    for i, sid in enumerate(sids):
        created = {
            "project_id": pid,
            "entrypoint": "h.py:nothing",
            "inputs": {"blob": blob},
            "memo": {"i": str(i)},
        }
        rec = wire.JournalRecord(sid, 0, wire.CREATED, 1_000 + i, created)
        with engine.begin() as conn:
            apply_records(conn, [journal.seal(rec, KEYS)], KEYS)
    seen = loaded(Session)
    page = call(api, "session.list", {"project": "evil", "page_size": 1000})
    assert 1 <= len(page["sessions"]) <= 1 + LIST_READ_BYTES // len(blob)
    assert page["next_page_token"]
    assert len(seen) <= len(page["sessions"]) + 1 + LIST_READ_ROWS < len(sids), len(seen)
    assert page["sessions"][0]["memo"] == {"i": "11"}
    got = [s["session_id"] for s in page["sessions"]]
    while page["next_page_token"]:
        args = {"project": "evil", "page_size": 1000, "page_token": page["next_page_token"]}
        page = call(api, "session.list", args)
        got += [s["session_id"] for s in page["sessions"]]
    assert got == sids[::-1]
    small = call(api, "session.list", {"project": "evil", "page_size": 2})
    assert len(small["sessions"]) == 2 and small["next_page_token"]
