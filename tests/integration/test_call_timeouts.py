"""A request that a service took but did not answer in time: one that only reads is safe
to ask again; one that changes something may still be carried out, and the message says
to look first."""

from __future__ import annotations

import asyncio

import pytest
from akcore import bus, subjects
from akcore.errors import Unavailable


@pytest.mark.parametrize(
    ("op", "says"),
    [
        ("session.get", "(busy or paused): try again"),
        ("token.check", "(busy or paused): try again"),
        ("deployment.activate", "may still carry it out"),
    ],
)
def test_a_request_taken_but_not_answered_says_whether_to_ask_again(
    nats_url: str, op: str, says: str
) -> None:
    async def main() -> str:
        nc = await bus.connect(nats_url, "caller")
        await nc.subscribe(subjects.store_subject(op), cb=_never_answer)  # a frozen store
        with pytest.raises(Unavailable) as e:
            await bus.store_call(nc, op, {}, timeout=0.2)
        await nc.close()
        return str(e.value)

    message = asyncio.run(main())
    assert f"store did not answer {op!r} within 0.2 s" in message
    assert says in message


async def _never_answer(msg: object) -> None:
    pass
