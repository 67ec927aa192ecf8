"""Store service: request/reply operations and journal materialization over real NATS."""

from __future__ import annotations

import pytest
from ak_store.api import MAX_SPANS, StoreApi
from ak_store.db import open_engine
from ak_store.materialize import apply_events, apply_records, apply_spans
from ak_store.service import run as run_store
from akcore import bus, cel, eventdata, journal, subjects, wire
from akcore.config import Settings
from akcore.datakey import SealError
from akcore.errors import InvalidArgument, NotFound
from akcore.secrets import load_keyring
from sqlalchemy import Engine, text

from .conftest import running
from .helpers import KEYS, MANIFEST, call, deploy, eventually


def sealed(*recs: wire.JournalRecord) -> list[wire.JournalRecord]:
    """Records as a runner writes them (sealed with the data key)."""
    return [journal.seal(r, KEYS) for r in recs]


async def test_manifest_and_deployments(settings: Settings) -> None:
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        slug_lookup = {"slug": "nope"}
        with pytest.raises(NotFound):
            await bus.store_call(nc, "webhook.lookup", slug_lookup)
        res = await bus.store_call(nc, "manifest.apply", {"text": MANIFEST.format(name="p1")})
        trig = await bus.store_call(nc, "trigger.get", {"trigger": "events", "project": "p1"})
        slug = trig["webhook_slug"]
        # No active deployment yet: the webhook is not served.
        with pytest.raises(NotFound, match="no active deployment"):
            await bus.store_call(nc, "webhook.lookup", {"slug": slug})
        ids = await deploy(nc, "p1", {"a.py": b"def f(e): pass\n"})
        assert ids["project_id"] == res["project_id"]
        found = await bus.store_call(nc, "webhook.lookup", {"slug": slug})
        assert found["project_id"] == res["project_id"]
        second = await deploy(nc, "p1", {"a.py": b"def f(e): return 1\n"})
        deps = await bus.store_call(nc, "deployment.list", {"project": "p1"})
        assert [(d["deployment_id"], d["state"]) for d in deps] == [
            (second["deployment_id"], "ACTIVE"),
            (ids["deployment_id"], "INACTIVE"),
        ]
        with pytest.raises(InvalidArgument, match="invalid YAML semantics"):
            await bus.store_call(
                nc, "manifest.apply", {"text": "version: v1\nproject:\n  name: p2\n  nope: 1\n"}
            )
        assert [p["name"] for p in await bus.store_call(nc, "project.list", {})] == ["p1"]
        await nc.close()


def test_a_filter_too_big_is_refused_and_not_kept(store: tuple[StoreApi, Engine]) -> None:
    api, _ = store
    wide = "size([" + ",".join(["0"] * 30_000) + "]) > 0"  # the review's: ~6 s and 370 MB each
    text = (
        "version: v1\nproject:\n  name: p1\n  triggers:\n"
        f"    - name: t\n      webhook: {{}}\n      filter: '{wide}'\n"
    )
    problem = (
        "invalid filter: it is 60011 characters long, over the limit of 4096: "
        "filter on a few fields and check the rest in the handler"
    )
    for op in ("manifest.plan", "manifest.apply"):
        with pytest.raises(InvalidArgument) as e:
            call(api, op, {"text": text})
        assert f"project.triggers[0].filter: {problem}" in e.value.message
    call(api, "manifest.apply", {"text": "version: v1\nproject:\n  name: p1\n"})
    spec = {"name": "t", "type": "webhook", "filter": wide}
    with pytest.raises(InvalidArgument, match="over the limit of 4096"):
        call(api, "trigger.create", {"project": "p1", "trigger": spec})
    # A filter that is saved is checked, not kept compiled: only evaluators run filters.
    kept = len(cel.PROGRAMS)
    spec["filter"] = "data.method == 'POST'"
    call(api, "trigger.create", {"project": "p1", "trigger": spec})
    assert len(cel.PROGRAMS) == kept


async def test_journal_is_materialized_once(settings: Settings) -> None:
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        ids = await deploy(nc, "p", {"simple.py": b""})
        sid = "ses_01m8cpgk96e6wakscbfn3064cx"
        # A malformed message must not stop the consumer.
        await js.publish(subjects.journal_subject("ses_garbage"), b"\xc1 not msgpack")
        records = [
            wire.JournalRecord(
                sid,
                0,
                wire.CREATED,
                1_000,
                {
                    "project_id": ids["project_id"],
                    "entrypoint": "simple.py:greet",
                    "event_id": "evt_1",
                },
            ),
            wire.JournalRecord(sid, 1, wire.STARTED, 2_000, {"runner": "r", "attempt": 1}),
            wire.JournalRecord(sid, 2, wire.PRINT, 3_000, {"text": "hello"}),
            wire.JournalRecord(sid, 2, wire.PRINT, 3_000, {"text": "hello"}),  # redelivered copy
            wire.JournalRecord(
                sid, 3, wire.ENDED, 4_000, {"state": "COMPLETED", "result": b"\x80"}
            ),
        ]
        keys = load_keyring()  # the store's (the same data home)
        for r in records:
            await js.publish(subjects.journal_subject(sid), wire.encode(journal.seal(r, keys)))

        async def done() -> dict | None:  # type: ignore[type-arg]
            try:
                s = await bus.store_call(nc, "session.get", {"session": "p"})
            except NotFound:
                return None
            return s if s["state"] == "COMPLETED" else None

        s = await eventually(done)
        assert s["session_id"] == sid and s["entrypoint"] == "simple.py:greet"
        recs = (await bus.store_call(nc, "session.records", {"session": sid}))["records"]
        assert [r["kind"] for r in recs] == ["created", "started", "print", "ended"]
        prints = (
            await bus.store_call(nc, "session.records", {"session": sid, "kinds": ["print"]})
        )["records"]
        assert [p["data"]["text"] for p in prints] == ["hello"]
        await nc.close()


def test_records_applied_out_of_order_give_the_same_session(db_dsn: str) -> None:
    """Two stores share the journal: a session's end may be applied before its creation,
    and a batch may come again. The session still ends up as its journal says, once."""
    from ak_store.materialize import apply_records
    from ak_store.models import Session, SessionRecord
    from ak_store.sealed import open_session
    from sqlmodel import Session as DB
    from sqlmodel import select

    engine = open_engine(db_dsn)
    sid = "ses_01m8cpgk96e6wakscbfn3064cy"
    created = wire.JournalRecord(sid, 0, wire.CREATED, 1_000, {"project_id": "prj_x"})
    started = wire.JournalRecord(sid, 1, wire.STARTED, 2_000, {"runner": "r", "attempt": 1})
    printed = wire.JournalRecord(sid, 2, wire.PRINT, 3_000, {"text": "hi"})
    ended = wire.JournalRecord(sid, 3, wire.ENDED, 4_000, {"state": "ERROR", "error": "boom"})
    for batch in ([ended, printed], [created, started, ended], [started]):
        with engine.begin() as conn:
            apply_records(conn, sealed(*batch), KEYS)
    with DB(engine) as db:
        s = db.get(Session, sid)
        assert s is not None and (s.state, s.updated_us) == ("ERROR", 4_000)
        assert "boom" not in s.error and open_session(s.model_dump(), KEYS)["error"] == "boom"
        seqs = db.exec(select(SessionRecord.seq).where(SessionRecord.session_id == sid)).all()
        assert sorted(seqs) == [0, 1, 2, 3]
    engine.dispose()


def test_session_list_pages(store: tuple[StoreApi, Engine]) -> None:
    """Sessions come newest first a page at a time; the pages' token walks all of them once
    (sessions created in the same microsecond included), and filters narrow every page."""
    api, engine = store
    call(api, "manifest.apply", {"text": MANIFEST.format(name="p1")})
    project = call(api, "project.get", {"project": "p1"})["project_id"]
    sids = [f"ses_01m8cpgk96e6wakscbfn3064{c}" for c in "abcdefg"]
    with engine.begin() as conn:
        for i, sid in enumerate(sids):
            created = {"project_id": project, "event_id": f"evt_{i}", "inputs": {"big": "x" * 99}}
            records = [wire.JournalRecord(sid, 0, wire.CREATED, 1_000 + i // 2, created)]
            if i % 3 == 0:
                end = {"state": "COMPLETED"}
                records.append(wire.JournalRecord(sid, 1, wire.ENDED, 5_000, end))
            apply_records(conn, sealed(*records), KEYS)
    newest_first = sorted(sids, key=lambda s: (1_000 + sids.index(s) // 2, s), reverse=True)

    def walk(**args: object) -> list[list[str]]:
        pages, token = [], ""
        while True:
            page = call(api, "session.list", {"project": "p1", **args, "page_token": token})
            pages.append([s["session_id"] for s in page["sessions"]])
            assert all("inputs" not in s for s in page["sessions"])
            token = page["next_page_token"]
            if not token:
                return pages

    assert walk(page_size=3) == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    assert walk() == [newest_first]  # 50 by default
    assert walk(page_size=7) == [newest_first]  # a full last page has no token
    assert walk(page_size=2, state="COMPLETED") == [[sids[6], sids[3]], [sids[0]]]
    assert walk(event_id="evt_4") == [[sids[4]]]
    assert walk(event_ids=["evt_1", "evt_5", "evt_none"]) == [[sids[5], sids[1]]]
    assert walk(page_size=2, skip=5) == [newest_first[5:7]]
    for bad, message in [
        ({"page_size": 1001}, "page size must be between 1 and 1000"),
        ({"skip": -1}, "rows to skip must be 0 or more"),
        ({"page_token": "12.nope"}, "invalid page token"),
        ({"event_ids": [f"evt_{i}" for i in range(1001)]}, "at most 1000 event ids"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            call(api, "session.list", bad)


def test_session_records_come_in_pages(store: tuple[StoreApi, Engine]) -> None:
    """A long session's records do not have to fit in one answer: pages of at most 1,000
    records and about 1 MiB, ``more`` until the last."""
    api, engine = store
    sid = "ses_01m8cpgk96e6wakscbfn3064cz"
    created = wire.JournalRecord(sid, 0, wire.CREATED, 1_000, {"project_id": "prj_x"})
    prints = [
        wire.JournalRecord(sid, n, wire.PRINT, 1_000 + n, {"text": f"{n} " + "x" * 1_000})
        for n in range(1, 2_501)
    ]
    with engine.begin() as conn:
        apply_records(conn, sealed(created, *prints), KEYS)
    pages, skip = [], 0
    while True:
        page = call(api, "session.records", {"session": sid, "kinds": ["print"], "skip": skip})
        pages.append(len(page["records"]))
        skip += len(page["records"])
        if not page["more"]:
            break
    assert sum(pages) == 2_500 and max(pages) <= 1_000 and len(pages) == 3, pages
    texts = [
        r["data"]["text"].split()[0]
        for r in call(
            api, "session.records", {"session": sid, "kinds": ["print"], "skip": 998, "limit": 3}
        )["records"]
    ]
    assert texts == ["999", "1000", "1001"]
    # Big records: a page stops at about 1 MiB of data.
    with engine.begin() as conn:
        big = {"text": "y" * 600_000}
        bigs = [wire.JournalRecord(sid, 3_000 + n, wire.PRINT, 9, big) for n in range(4)]
        apply_records(conn, sealed(*bigs), KEYS)
    page = call(api, "session.records", {"session": sid, "skip": 2_501})
    assert (len(page["records"]), page["more"]) == (2, True)


def test_a_huge_trace_is_cut_and_says_how_much(store: tuple[StoreApi, Engine]) -> None:
    api, engine = store
    sid = "ses_01m8cpgk96e6wakscbfn3064d0"
    with engine.begin() as conn:
        created = wire.JournalRecord(sid, 0, wire.CREATED, 1, {"project_id": "p"})
        apply_records(conn, [created], KEYS)
    spans = [
        {
            "trace_id": "t" * 32,
            "span_id": f"{n:016x}",
            "name": f"activity {n}",
            "start_us": n,
            "end_us": n + 1,
            "attributes": {"ak.session_id": sid},
        }
        for n in range(MAX_SPANS + 3)
    ]
    apply_spans(engine, spans)
    res = call(api, "session.trace", {"session": sid})
    assert len(res["spans"]) == MAX_SPANS and res["more"] == 3
    assert res["spans"][0]["name"] == "activity 0"  # the oldest first


def test_dispatch_notes_kept_before_the_event_and_shown_with_it(
    store: tuple[StoreApi, Engine],
) -> None:
    api, engine = store
    note = {"source": "trg_1", "note": "trigger t: filter ran over its 100 ms budget"}
    # The dispatcher may note an event before the events consumer has kept it.
    call(api, "dispatch.note", {"event_id": "evt_1", "notes": [note]})
    with pytest.raises(NotFound):
        call(api, "event.get", {"event_id": "evt_1"})
    with engine.begin() as conn:
        apply_events(conn, [wire.Event("evt_1", "prj_1", "trg_1", "post", {}, {}, 1)], KEYS)
    # A redelivered event is judged again: the same note again changes nothing.
    call(
        api,
        "dispatch.note",
        {"event_id": "evt_1", "notes": [note, {"source": "sub_1", "note": "boom"}]},
    )
    notes = call(api, "event.get", {"event_id": "evt_1"})["notes"]
    assert [{k: n[k] for k in ("source", "note")} for n in notes] == [
        note,
        {"source": "sub_1", "note": "boom"},
    ]
    assert notes[0]["at"] <= notes[1]["at"]


def test_event_data_rests_sealed_and_opens_for_its_owner(store: tuple[StoreApi, Engine]) -> None:
    """An event's data (a webhook's query, body and headers) is sealed in the events
    table; `ak event get` opens it with its credential headers masked, `--reveal` shows
    them, and a row kept by an earlier version (in the clear) still reads."""
    api, engine = store
    secret = "q-secret-7f3k"
    data = {
        "url": {"query": {"token": secret}},
        "headers": {"Authorization": f"Bearer {secret}", "Accept": "*/*"},
        "body": {"text": f"password={secret}"},
    }
    new = wire.Event("evt_new", "prj_1", "trg_1", "post", data, {}, 1)
    # Sealed by ingress as published, or (an earlier version's) in the clear: both rest sealed.
    published = eventdata.sealed(new, KEYS)
    old = wire.Event("evt_old", "prj_1", "trg_1", "post", data, {}, 2)
    with engine.begin() as conn:
        apply_events(conn, [published, old], KEYS)
        rows = conn.execute(text("SELECT data FROM events")).scalars().all()
        conn.execute(
            text(
                "INSERT INTO events (event_id, project_id, destination_id, event_type, data, "
                "memo, created_us) VALUES ('evt_clear', 'prj_1', 'trg_1', 'post', :d, '{}', 3)"
            ),
            {"d": wire.pack(data)},
        )
    assert len(rows) == 2 and not any(secret.encode() in bytes(r) for r in rows)
    masked = {**data, "headers": {"Authorization": "<secret>", "Accept": "*/*"}}
    for event_id in ("evt_new", "evt_old", "evt_clear"):
        assert call(api, "event.get", {"event_id": event_id})["data"] == masked
        shown = call(api, "event.get", {"event_id": event_id, "reveal": True})
        assert shown["data"] == data
        # As it rests, for a copy or a restart: sealed to this event, whatever its row.
        blob = call(api, "event.get", {"event_id": event_id, "sealed": True})["sealed_data"]
        assert "data" not in call(api, "event.get", {"event_id": event_id, "sealed": True})
        assert eventdata.open_data(blob, "prj_1", event_id, KEYS) == data
        with pytest.raises(SealError):
            eventdata.open_data(blob, "prj_1", "evt_other", KEYS)
    # A hand-made event kept without dispatch (`ak event save`) rests sealed too.
    call(
        api,
        "event.store",
        {"event_id": "evt_saved", "project_id": "prj_1", "destination_id": "trg_1", "data": data},
    )
    with engine.begin() as conn:
        row = conn.execute(text("SELECT data FROM events WHERE event_id = 'evt_saved'")).scalar()
    assert secret.encode() not in bytes(row)
    assert call(api, "event.get", {"event_id": "evt_saved", "reveal": True})["data"] == data


async def test_a_sessions_end_removes_its_subscriptions(settings: Settings) -> None:
    """The runner removes an ended session's subscriptions, but not while the store is
    away: the store removes them as it applies the session's end, and a late try of a
    `subscribe` made before the end adds none back."""
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        try:
            js = nc.jetstream()
            d = await deploy(nc, "p", {"simple.py": b""})
            trigger_id = d["trigger"]["trigger_id"]
            sid, other = "ses_01m8cpgk96e6wakscbfn3064cz", "ses_01m8cpgk96e6wakscbfn3064d0"
            keys = load_keyring()
            created = {"project_id": d["project_id"], "entrypoint": "simple.py:greet"}
            for s in (sid, other):
                rec = wire.JournalRecord(s, 0, wire.CREATED, 1_000, created)
                await js.publish(subjects.journal_subject(s), wire.encode(journal.seal(rec, keys)))

            async def sub(s: str, sub_id: str) -> None:
                await bus.store_call(
                    nc,
                    "subscription.create",
                    {
                        "subscription_id": sub_id,
                        "session_id": s,
                        "project_id": d["project_id"],
                        "trigger_id": trigger_id,
                    },
                )

            async def subscribed() -> set[str]:
                page = await bus.store_call(nc, "dispatch.targets", {"trigger_id": trigger_id})
                return {x["subscription_id"] for x in page["subscriptions"]}

            await sub(sid, "s1")
            await sub(other, "o1")
            assert await subscribed() == {"s1", "o1"}
            ended = wire.JournalRecord(sid, 1, wire.ENDED, 4_000, {"state": "COMPLETED"})
            await js.publish(subjects.journal_subject(sid), wire.encode(journal.seal(ended, keys)))

            async def gone() -> bool:
                return await subscribed() == {"o1"}

            assert await eventually(gone, timeout=30)
            await sub(sid, "s2")  # late
            assert await subscribed() == {"o1"}
        finally:
            await nc.close()


def test_a_sessions_end_applied_while_it_subscribes_removes_that_subscription_too(
    store: tuple[StoreApi, Engine],
) -> None:
    """PostgreSQL's store serves requests on several threads beside its journal consumer:
    a `subscribe` that has read the session as running when its `ended` record is applied
    is waited for, and its subscription removed with the session's others (it stayed for
    good, counted toward the trigger's limit and judged for every event)."""
    import threading

    from sqlalchemy import event as sa_event

    api, engine = store
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serves the store's SQL on one thread")
    sid = "ses_01m8cpgk96e6wakscbfn3064d1"
    created = {"project_id": "prj_x", "entrypoint": "simple.py:greet"}
    with engine.begin() as conn:
        apply_records(conn, sealed(wire.JournalRecord(sid, 0, wire.CREATED, 1_000, created)), KEYS)
    read, go = threading.Event(), threading.Event()

    @sa_event.listens_for(engine, "after_cursor_execute")
    def hold(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "subscribe" and "FROM session " in statement:
            read.set()
            go.wait(30)

    args = {"subscription_id": "s1", "session_id": sid, "project_id": "prj_x"}
    subscribing = threading.Thread(
        target=call,
        args=(api, "subscription.create", {**args, "trigger_id": "trg_x"}),
        name="subscribe",
    )
    subscribing.start()
    assert read.wait(30)
    ended = sealed(wire.JournalRecord(sid, 1, wire.ENDED, 3_000, {"state": "COMPLETED"}))

    def end() -> None:
        with engine.begin() as conn:
            apply_records(conn, ended, KEYS)

    ending = threading.Thread(target=end)
    ending.start()
    with engine.connect() as c:  # the end waits for the subscribe's transaction
        for _ in range(600):
            waiting = c.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
            if waiting:
                break
            c.rollback()
            threading.Event().wait(0.05)
        assert waiting, "the end did not wait for the subscribe"
    go.set()
    subscribing.join(30)
    ending.join(30)
    with engine.connect() as c:
        left = c.execute(text("SELECT count(*) FROM subscription")).scalar_one()
    assert left == 0


@pytest.mark.parametrize("count", [0, 1, 15, 16, 70_000])
def test_a_builds_view_counts_its_files_without_reading_them(
    store: tuple[StoreApi, Engine], count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ak build list`/`get` show how many files a build has and its size, read from the
    row's first bytes and length (the files of 200 builds of 6 MiB were read and unpacked
    for each list, holding the store for seconds); every size of msgpack map counts."""
    api, _ = store
    call(api, "project.create", {"name": "blds"})
    files = {f"f{i}.py": b"x" for i in range(count)}
    if count > 10_000:  # (over a build's limit of files, as an older build may be)
        monkeypatch.setattr("ak_store.api.check_build", lambda files: None)
    build_id = call(api, "build.create", {"project": "blds", "files": files})
    (listed,) = call(api, "build.list", {"project": "blds"})
    described = call(api, "build.describe", {"build_id": build_id})
    for view in (listed, described):
        assert view["build_id"] == build_id and view["project"] == "blds"
        assert view["files"] == count
        assert view["size"] == len(wire.pack(files))
    with pytest.raises(NotFound):
        call(api, "build.describe", {"build_id": build_id, "project": "other"})
