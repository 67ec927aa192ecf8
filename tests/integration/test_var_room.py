"""A project's vars take at most 4 MiB together (``manifests.MAX_PROJECT_VARS``): what a
legitimate user still does within it (a review of 2026-12-07's limits).

- a manifest that renames big vars (the old ones are deleted after the new ones are set)
  ends within the limit, and applies;
- a project whose vars were over the limit before it was set (kept then) can still shrink
  or delete them, and change a small one; only a change that grows it is refused;
- applying a manifest of many vars costs about what it did (each var's check read every
  var of the project: 2,000 vars took ~57 s, holding the store's one SQLite thread, for
  every project's requests, and ``ak deploy`` timed out).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from ak_store.api import StoreApi
from ak_store.db import open_engine
from ak_store.models import Var
from akcore.datakey import Keyring
from akcore.errors import InvalidArgument
from akcore.secrets import Sealer
from cryptography.fernet import Fernet
from sqlmodel import Session as DB

from .helpers import call

MIB = 1024 * 1024
BIG = "v" * (MIB - 256)  # within the 1 MiB a var may take


@pytest.fixture
def api(db_dsn: str) -> Iterator[StoreApi]:
    engine = open_engine(db_dsn)
    yield StoreApi(engine, Sealer(Fernet.generate_key()), Keyring([Fernet.generate_key()]))
    engine.dispose()


def manifest(names: list[str], value: str = BIG) -> str:
    items = "".join(f"    - name: {n}\n      value: '{value}'\n" for n in names)
    return f"version: v1\nproject:\n  name: p\n  vars:\n{items}"


def names(api: StoreApi) -> list[str]:
    return sorted(v["name"] for v in call(api, "var.get", {"project": "p"}))


def test_a_manifest_renaming_big_vars_applies(api: StoreApi) -> None:
    call(api, "manifest.apply", {"text": manifest(["OLD1", "OLD2", "OLD3"])})
    call(api, "manifest.apply", {"text": manifest(["NEW1", "NEW2", "NEW3"])})
    assert names(api) == ["NEW1", "NEW2", "NEW3"]


def test_a_manifest_over_the_limit_is_refused_whole(api: StoreApi) -> None:
    call(api, "manifest.apply", {"text": manifest(["A1", "A2"])})
    with pytest.raises(InvalidArgument, match="they may take together"):
        call(api, "manifest.apply", {"text": manifest(["A1", "A2", "A3", "A4", "A5"])})
    assert names(api) == ["A1", "A2"]


def test_a_project_over_the_limit_can_shrink_its_vars(api: StoreApi) -> None:
    call(api, "manifest.apply", {"text": manifest(["SMALL"], "s")})
    project_id = call(api, "project.get", {"project": "p"})["project_id"]
    with DB(api.engine) as db:  # as a version without the limit kept them
        for i in range(6):
            db.add(Var(scope_id=project_id, name=f"BIG{i}", value=BIG))
        db.commit()
    call(api, "var.set", {"project": "p", "name": "BIG0", "value": "smaller"})
    call(api, "var.set", {"project": "p", "name": "SMALL", "value": "t"})
    call(api, "var.delete", {"project": "p", "name": "BIG1"})
    with pytest.raises(InvalidArgument, match="they may take together"):
        call(api, "var.set", {"project": "p", "name": "MORE", "value": "x" * 1000})
    # A deploy of its manifest that changes nothing big goes through too.
    kept = [f"BIG{i}" for i in range(2, 6)]
    text = manifest(kept) + "    - name: SMALL\n      value: u\n    - name: BIG0\n      value: s\n"
    call(api, "manifest.apply", {"text": text})
    assert names(api) == sorted(["BIG0", "SMALL", *kept])


def test_many_vars_apply_in_about_linear_time(api: StoreApi) -> None:
    n = 2000  # ~2.5 s on SQLite without the check; ~57 s with a check reading every var
    start = time.monotonic()
    call(api, "manifest.apply", {"text": manifest([f"V{i}" for i in range(n)], "x" * 100)})
    took = time.monotonic() - start
    assert len(names(api)) == n
    assert took < 20, f"{n} vars took {took:.1f} s"
