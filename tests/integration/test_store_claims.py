"""Routing claims (migration 0006) and session.list's event_ids on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ak_store.api import StoreApi
from ak_store.db import open_engine
from akcore.errors import AKError, Conflict
from akcore.secrets import Sealer
from cryptography.fernet import Fernet

from tests.pg import fresh_database

from .test_routing import KEYS, call, deploy


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreApi]:
    if request.param == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
        yield StoreApi(engine, Sealer(Fernet.generate_key()), KEYS)
        engine.dispose()
        return
    with fresh_database() as url:
        engine = open_engine(url)
        yield StoreApi(engine, Sealer(Fernet.generate_key()), KEYS)
        engine.dispose()


def test_a_long_routing_value_is_claimed_like_a_short_one(api: StoreApi) -> None:
    """A claim is kept as a digest: a routing value up to the var limit fits the unique
    index on PostgreSQL too (a btree entry over ~2.7 KB is refused there), and it still
    names one connection."""
    value = secrets.token_hex(4500)
    names = []
    for project in ("p", "q"):
        pid = deploy(api, project, "github", {"other": "x"})
        names.append(
            next(p["name"] for p in call(api, "project.list", {}) if p["project_id"] == pid)
        )
    call(api, "var.set", {"connection": f"{names[0]}/c", "name": "pat_key", "value": value})
    got = call(api, "var.get", {"connection": f"{names[0]}/c", "names": ["pat_key"]})
    assert got[0]["value"] == value
    with pytest.raises(Conflict, match="is already used by another connection"):
        call(api, "var.set", {"connection": f"{names[1]}/c", "name": "pat_key", "value": value})


@pytest.mark.parametrize(
    "event_ids", [["evt_1", {"a": 1}], "evt_1", [1, 2], [None], ["x" * 100_000]]
)
def test_event_ids_of_a_bad_kind_are_refused_not_a_database_error(
    api: StoreApi, event_ids: Any
) -> None:
    try:
        call(api, "session.list", {"event_ids": event_ids})
    except AKError:
        pass
