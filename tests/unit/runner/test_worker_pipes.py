"""A worker's pipe ends when connecting them is cancelled (a session's attempt cancelled
while its worker starts): no descriptor stays registered in the event loop once closed (a
registration left behind belongs to whatever gets that number next)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from ak_runner import worker


def _registered(loop: asyncio.AbstractEventLoop) -> set[int]:
    return set(loop._selector.get_map())  # type: ignore[attr-defined]


async def test_a_cancelled_frame_streams_leaves_no_closed_fd_in_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    before = _registered(loop)
    to_child_r, to_child = worker._pipe(parent_reads=False)
    from_child_w, from_child = worker._pipe(parent_reads=True)
    ends = {to_child.fileno(), from_child.fileno()}
    real = loop.connect_write_pipe

    async def cancelled_while_connecting(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # lands on connect_write_pipe's own await
        return await real(*args, **kwargs)

    monkeypatch.setattr(loop, "connect_write_pipe", cancelled_while_connecting)
    with pytest.raises(asyncio.CancelledError):
        await worker._frame_streams(from_child, to_child)
    monkeypatch.undo()
    for _ in range(10):  # let the transports' scheduled callbacks run
        await asyncio.sleep(0)
    os.close(to_child_r)
    os.close(from_child_w)
    assert to_child.closed and from_child.closed
    stale = (_registered(loop) - before) & ends
    assert not stale, f"closed pipe ends still registered in the event loop: {stale}"
    # What a stale registration does to the next pipe that gets its number:
    r, w = os.pipe()
    try:
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", buffering=0)
        )
        os.write(w, b"x")
        assert await asyncio.wait_for(reader.read(1), 5) == b"x"
        transport.close()
    finally:
        os.close(w)
