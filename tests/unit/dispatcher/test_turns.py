"""A destination's events reach waiting sessions in the order they arrived: each event's
turn comes once every event of the destination before it is through."""

from __future__ import annotations

import asyncio

from ak_dispatcher.service import Turns


async def _entered(turn: object) -> asyncio.Task[None]:
    async def enter() -> None:
        async with turn:  # type: ignore[attr-defined]
            pass

    task = asyncio.create_task(enter())
    for _ in range(5):  # (a turn that may go goes within a few passes of the loop)
        await asyncio.sleep(0)
    return task


async def test_an_event_through_early_does_not_let_the_next_pass_one_still_handled() -> None:
    """Three events: the first still judged, the second deferred (through before its
    turn): the third waits for the first."""
    turns = Turns()
    first, second, third = (turns.take("trg_a") for _ in range(3))
    second.release()
    third_in = await _entered(third)
    assert not third_in.done()
    first.release()
    await asyncio.wait_for(third_in, 1)


async def test_the_destinations_chain_is_kept_while_an_earlier_event_is_handled() -> None:
    """The last event taken is through while one before it is not: an event taken after
    that still waits for the earlier one (the chain was dropped, and it went at once)."""
    turns = Turns()
    first, second = turns.take("trg_a"), turns.take("trg_a")
    second.release()
    late = turns.take("trg_a")
    late_in = await _entered(late)
    assert not late_in.done()
    other_in = await _entered(turns.take("trg_b"))  # another destination goes its own way
    assert other_in.done()
    first.release()
    await asyncio.wait_for(late_in, 1)
    late.release()
    assert turns._last == {}  # every event through: nothing kept


async def test_events_through_in_any_order_let_each_go_in_arrival_order() -> None:
    turns = Turns()
    taken = [turns.take("trg_a") for _ in range(4)]
    order: list[int] = []

    async def deliver(i: int) -> None:
        async with taken[i]:
            order.append(i)

    tasks = [asyncio.create_task(deliver(i)) for i in (3, 1, 2)]
    await asyncio.sleep(0)
    taken[0].release()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert order == [1, 2, 3]
