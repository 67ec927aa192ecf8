"""Tokens limited to projects against races and versions: the ingress's check and the
store's operation cannot be pried apart (a hook on the ingress's NATS client runs another
request at the exact point between them; no sleeps), and code of an earlier version, which
knows no limits, refuses a limited token instead of taking it for an unlimited one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from ak_ingress import commands
from ak_ingress.auth import Authenticator, Caller
from ak_store.db import alembic_config
from ak_store.service import run as run_store
from akcore import bus, subjects, tokens
from akcore.config import Settings
from akcore.errors import Conflict, NotFound, Unauthenticated
from alembic import command
from sqlalchemy import text
from sqlmodel import create_engine

from tests.integration.conftest import running

ADMIN = Caller(token_id="tok_admin", name="admin")  # a token that is not limited
ALPHA = "version: v1\nproject:\n  name: alpha\n  vars:\n    - name: K\n      value: a\n"


class Hooked:
    """The ingress's NATS client, running ``hook`` once just before its first request for
    store operation ``op`` leaves (``after``: once its answer came)."""

    def __init__(self, nc: Any, op: str, hook: Callable[[], Awaitable[None]], after: bool = False):
        self.nc, self.subject, self.hook, self.after = nc, subjects.store_subject(op), hook, after
        self.done = False

    async def request(self, subject: str, *args: Any, **kw: Any) -> Any:
        due = subject == self.subject and not self.done
        self.done = self.done or due
        if due and not self.after:
            await self.hook()
        answer = await self.nc.request(subject, *args, **kw)
        if due and self.after:
            await self.hook()
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.nc, name)


@contextlib.asynccontextmanager
async def store(settings: Settings) -> AsyncIterator[Any]:
    """A store running, and a NATS client to call it with."""
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        try:
            yield nc
        finally:
            await nc.close()


async def _projects(nc: Any) -> dict[str, str]:
    return {p["name"]: p["project_id"] for p in await bus.store_call(nc, "project.list", {})}


async def _limited_to_alpha(nc: Any) -> Caller:
    await bus.store_call(nc, "manifest.apply", {"text": ALPHA})
    return Caller(token_id="tok_limited", name="ci", projects=((await _projects(nc))["alpha"],))


async def test_a_manifest_applies_to_the_project_checked_or_not_at_all(settings: Settings) -> None:
    """The token deletes its own project between the check and the store's apply: the store
    would have made a new "alpha", not the token's; it refuses instead."""
    async with store(settings) as nc:
        token = await _limited_to_alpha(nc)

        async def delete_alpha() -> None:
            await commands.perform(nc, "project.delete", {"project": "alpha"}, token, None)

        hooked = Hooked(nc, "manifest.apply", delete_alpha)
        with pytest.raises(Conflict, match='project "alpha" is no longer the project'):
            await commands.perform(hooked, "manifest.apply", {"text": ALPHA}, token, None)
        assert "alpha" not in await _projects(nc)


async def test_a_new_token_gets_the_projects_that_were_checked(settings: Settings) -> None:
    """Once a new token's projects are checked, before it is made, "alpha" comes to name
    another project (an unlimited token deletes and makes it again): the token is for the
    project checked, which its maker may act on, not for the new one."""
    async with store(settings) as nc:
        token = await _limited_to_alpha(nc)

        async def remake_alpha() -> None:
            await commands.perform(nc, "project.delete", {"project": "alpha"}, ADMIN, None)
            await commands.perform(nc, "manifest.apply", {"text": ALPHA}, ADMIN, None)

        hooked = Hooked(nc, "scope.resolve", remake_alpha, after=True)
        raw = await commands.perform(
            hooked, "auth.create_token", {"projects": ["alpha"]}, token, None
        )
        args = {"digest": tokens.digest(raw), "limits": True}
        who = await bus.store_call(nc, "token.check", args)
        assert who["projects"] == list(token.projects)
        assert (await _projects(nc))["alpha"] not in who["projects"]


async def test_code_that_knows_no_limits_refuses_a_limited_token(settings: Settings) -> None:
    """An ingress of an earlier version asks without ``limits`` (it would ignore the
    token's projects): the store refuses it. A store of an earlier version compares the
    bare digest with what is kept: the kept digest of a limited token is not that."""
    async with store(settings) as nc:
        await _limited_to_alpha(nc)
        raw = await commands.perform(nc, "auth.create_token", {"projects": ["alpha"]}, ADMIN, None)
        unlimited = await commands.perform(nc, "auth.create_token", {}, ADMIN, None)
        digest = tokens.digest(raw)
        assert (await Authenticator(nc, True).caller(f"Bearer {raw}")).projects
        with pytest.raises(Unauthenticated):
            await bus.store_call(nc, "token.check", {"digest": digest})
        kept = await bus.store_call(nc, "token.check", {"digest": tokens.digest(unlimited)})
        assert kept["projects"] == []  # (one that is not limited: as before)
    engine = create_engine(settings.db_dsn)
    with engine.begin() as conn:
        stored = conn.execute(text("SELECT digest FROM api_tokens")).scalars().all()
    engine.dispose()
    assert digest not in stored and f"{tokens.LIMITED_PREFIX}{digest}" in stored


async def test_going_back_a_migration_leaves_limited_tokens_refused(settings: Settings) -> None:
    """Migration 0009 undone and done again leaves a limited token without its projects:
    refused, not taken for one that may act on every project."""
    async with store(settings) as nc:
        await _limited_to_alpha(nc)
        raw = await commands.perform(nc, "auth.create_token", {"projects": ["alpha"]}, ADMIN, None)
    engine = create_engine(settings.db_dsn)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0008")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    engine.dispose()
    async with store(settings) as nc:
        with pytest.raises(Unauthenticated, match="invalid API token"):
            await Authenticator(nc, True).caller(f"Bearer {raw}")
        listed = await bus.store_call(nc, "auth.list_tokens", {})
        assert [t["projects"] for t in listed] == [["(not recorded: the token is refused)"]]


async def test_a_limited_token_s_error_names_projects_deleted_since(settings: Settings) -> None:
    async with store(settings) as nc:
        token = await _limited_to_alpha(nc)
        await commands.perform(nc, "project.delete", {"project": "alpha"}, token, None)
        who = await commands.perform(nc, "auth.whoami", {}, token, None)
        assert who["projects"] == [f"{token.projects[0]} (deleted)"]
        with pytest.raises(NotFound, match=r"\(deleted\)"):
            await commands.perform(nc, "project.get", {"project": "x"}, token, None)
