"""Credential-bearing webhook headers: sealed in the event, opened for the handler of the
same project only, masked for show."""

from __future__ import annotations

import pytest
from akcore import credheaders, wire
from akcore.datakey import Keyring, SealError
from akcore.webhook import normalize_request
from cryptography.fernet import Fernet

KEYS = Keyring([Fernet.generate_key()])
HEADERS = [
    ("authorization", "Bearer tok-1"),
    ("Proxy-Authorization", "Basic cHc="),
    ("cookie", "sid=abc"),
    ("X-Hub-Signature-256", "sha256=ff"),
    ("x-api-key", "k-2"),
    ("X-Auth-Token", "t-3"),
    ("X-Client-Secret", "s-4"),
    ("Content-Type", "application/json"),
    ("X-GitHub-Event", "push"),
]
CREDENTIALS = {"tok-1", "cHc=", "sid=abc", "sha256=ff", "k-2", "t-3", "s-4"}


def test_credential_headers_are_sealed_and_open_for_their_project() -> None:
    data = normalize_request("POST", "/webhooks/s", HEADERS, b"{}", "s")
    sealed = credheaders.seal(data, "prj_a", KEYS)
    packed = wire.pack(sealed)
    assert [c for c in CREDENTIALS if c.encode() in packed] == []
    assert sealed["headers"]["Content-Type"] == "application/json"
    assert sealed["headers"]["X-Github-Event"] == "push"
    assert credheaders.unseal(sealed, "prj_a", KEYS) == data
    with pytest.raises(SealError, match="altered or moved"):
        credheaders.unseal(sealed, "prj_b", KEYS)  # another project's event


def test_masked_for_show_and_other_events_untouched() -> None:
    data = normalize_request("GET", "/webhooks/s", HEADERS, b"", "s")
    shown = credheaders.mask(credheaders.seal(data, "prj_a", KEYS))["headers"]
    assert shown["Authorization"] == shown["X-Api-Key"] == credheaders.MASK
    assert shown["Content-Type"] == "application/json"
    cron = {"schedule": "* * * * *"}
    assert credheaders.seal(cron, "p", KEYS) is cron
    assert credheaders.unseal(cron, "p", KEYS) is cron
    # A value that only looks sealed, in a header that is not a credential, stays as sent.
    odd = {"headers": {"X-Note": "ak1:zzz"}}
    assert credheaders.unseal(odd, "p", KEYS) == odd
