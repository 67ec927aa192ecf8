"""What the store keeps sealed (``akcore.journal.seal``) and opens only as it answers: the
handler-produced fields of journal records, and a session's error and traceback."""

from __future__ import annotations

from typing import Any

from akcore import journal
from akcore.datakey import TEXT_PREFIX, Keyring

COLUMNS = ("error", "traceback")  # the sessions table's sealed columns


def column_aad(session_id: str, column: str) -> bytes:
    """What binds a sealed column to its session."""
    return f"{session_id}/session/{column}".encode()


def seal_column(keys: Keyring, session_id: str, column: str, text: str) -> str:
    """A session's error or traceback as it rests (empty stays empty)."""
    return keys.seal_text(text.encode(), column_aad(session_id, column)) if text else ""


def open_session(view: dict[str, Any], keys: Keyring) -> dict[str, Any]:
    """A session's view with its inputs and memo, error and traceback unsealed; raises
    SealError."""
    inputs = view.get("inputs")
    if isinstance(inputs, dict) and journal.SEALED in inputs:
        # The `created` record's sealed field, its number 0 (akcore.sessions.created_record).
        opened = journal.unseal_fields(view["session_id"], 0, inputs[journal.SEALED], keys)
        view["inputs"] = opened.get("inputs") or {}
        view["memo"] = opened.get("memo") or view.get("memo") or {}
    for column in COLUMNS:
        text = view.get(column) or ""
        if text.startswith(TEXT_PREFIX):
            aad = column_aad(view["session_id"], column)
            view[column] = keys.open_text(text, aad).decode()
    return view


def open_record(session_id: str, seq: int, data: dict[str, Any], keys: Keyring) -> dict[str, Any]:
    """A kept record's data with its sealed fields unsealed; raises SealError."""
    if journal.SEALED not in data:
        return data
    clear = {k: v for k, v in data.items() if k != journal.SEALED}
    return {**clear, **journal.unseal_fields(session_id, seq, data[journal.SEALED], keys)}
