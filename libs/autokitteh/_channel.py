"""Framing of the runner <-> worker pipes (standard library only).

A frame is ``>II`` (header length, blob length), a JSON header, then an opaque blob. Pickles
made by user code travel only in blobs, and the runner never unpickles them.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

_LEN = struct.Struct(">II")
HEADER_SIZE = _LEN.size
MAX_FRAME = 64 * 1024 * 1024
# A header is small (bulk travels in blobs): the runner parses it on its event loop.
MAX_HEADER = 1024 * 1024


# One encoder for every frame (``json.dumps`` with separators makes a new one per call).
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _not_finite(name: str) -> Any:
    """JSON's decoder reads ``NaN``, ``Infinity`` and ``-Infinity`` by default: no frame
    carries one (a handler's own frame with a sleep of ``Infinity`` seconds failed in the
    runner as its own error, with a traceback in its log)."""
    raise ValueError(f"a number that is not finite ({name})")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent; one too large for a float (``1e999``),
    which ``float`` makes infinite, is refused as ``Infinity`` is."""
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError(f"a number that is not finite ({text[:40]})")
    return value


_INF = float("inf")
_decode = json.JSONDecoder(parse_constant=_not_finite, parse_float=_finite).decode


class FrameTooLarge(ValueError):
    """A frame over the limits: it is not sent."""


def encode_frame(header: dict[str, Any], blob: bytes = b"", max_header: int = MAX_HEADER) -> bytes:
    """A frame; ``max_header`` is for frames to the runner (the worker trusts its runner)."""
    head = _encode(header).encode()
    if len(head) > max_header or len(head) + len(blob) > MAX_FRAME:
        raise FrameTooLarge(
            f"{len(head) + len(blob)} bytes, over the limit ({MAX_HEADER} for arguments, "
            f"{MAX_FRAME} in all)"
        )
    return _LEN.pack(len(head), len(blob)) + head + blob


def split_sizes(prefix: bytes, max_header: int = MAX_HEADER) -> tuple[int, int]:
    hlen, blen = _LEN.unpack(prefix)
    if hlen + blen > MAX_FRAME:
        raise ValueError(f"frame of {hlen + blen} bytes is over the {MAX_FRAME} limit")
    if hlen > max_header:
        raise ValueError(f"frame header of {hlen} bytes is over the {max_header} limit")
    return hlen, blen


def decode_header(head: bytes) -> dict[str, Any]:
    header = _decode(head.decode())  # (UTF-8, as encode_frame writes it)
    if not isinstance(header, dict) or "type" not in header:
        raise ValueError("frame header without a type")
    return header


def read_frame(f: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame; None at end of file."""
    prefix = _read_exact(f, HEADER_SIZE)
    if prefix is None:
        return None
    hlen, blen = split_sizes(prefix, MAX_FRAME)  # (the worker reads its runner's frames)
    head = _read_exact(f, hlen)
    blob = _read_exact(f, blen) if blen else b""
    if head is None or blob is None:
        return None
    return decode_header(head), blob


def _read_exact(f: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
