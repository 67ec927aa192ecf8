"""Request bodies read with a size cap, never held whole when over it."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request


async def read_body(request: Request, limit: int, drain: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (or the client went away).

    A body over the limit is still read, and dropped, up to ``drain`` bytes: a server that
    answers and closes while the client is still sending makes the client see a broken
    connection instead of the answer. One declared (``Content-Length``) over ``drain`` is
    not read at all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > drain:
        return None
    buf = bytearray()
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > drain:
                return None
            if size <= limit:
                buf += chunk
    except ClientDisconnect:  # gone (or timed out by the protocol): no one reads an answer
        return None
    return bytes(buf) if size <= limit else None
