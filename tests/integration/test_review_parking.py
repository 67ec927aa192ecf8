"""Review findings on parking (this round's changes), against a real nats-server."""

from __future__ import annotations

import pytest
from ak_dispatcher.waker import Waker
from akcore import parking, wire
from nats.aio.client import Client

from .helpers import eventually
from .test_waker import _park, _ready, _send, _signal, _woken, probe, waker  # noqa: F401

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("name", [" go", "go ", " go "])
async def test_a_signal_name_with_outer_spaces_wakes_the_parked_wait_that_takes_it(
    probe: Client,  # noqa: F811
    waker: Waker,  # noqa: F811
    name: str,
) -> None:
    """next_signal(" go") takes a signal named " go" when live (Inbox.take compares names
    exactly), so a parked next_signal(" go") must wake for it. NATS header values lose
    their outer spaces (nats-py strips them on publish and on parse): the Ak-Inbox-Key
    the waker reads is "go", want_of says "name:go", the wait wants "name: go", and the
    session is never woken (no deadline: it waits for ever)."""
    sid = "ses_spaced" + str(len(name)) + ("l" if name[0] == " " else "r")
    await _park(probe, sid, wants=(parking.want(wire.INBOX_SIGNAL, name),))
    await eventually(lambda: _ready(waker, 1))
    await _send(probe, sid, _signal(name))
    # a sentinel sent after it, that does wake: once it is woken the first was looked at
    await _park(probe, sid + "s", wants=(parking.want(wire.INBOX_SIGNAL, "go"),))
    await eventually(lambda: _known(waker, sid + "s"))
    await _send(probe, sid + "s", _signal("go"))
    await eventually(lambda: _woken(probe, sid + "s"))
    assert await _woken(probe, sid), "the parked session was not woken by the signal it waits for"


async def _known(w: Waker, sid: str) -> bool:
    return sid in w.parked.entries
