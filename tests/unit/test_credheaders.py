"""Credential-bearing webhook headers: masked for show; sealed one by one in events of
earlier versions, opened for the handler of the same project only. And an event's data,
sealed whole (akcore.eventdata), opens only as the event it was sealed for."""

from __future__ import annotations

import dataclasses

import pytest
from akcore import credheaders, eventdata, wire
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
    # As an earlier version sealed them, or in the clear (opened from the sealed event).
    for form in (credheaders.seal(data, "prj_a", KEYS), data):
        shown = credheaders.mask(form)["headers"]
        assert shown["Authorization"] == shown["X-Api-Key"] == credheaders.MASK
        assert shown["Cookie"] == shown["X-Client-Secret"] == credheaders.MASK
        assert shown["Content-Type"] == "application/json"
    cron = {"schedule": "* * * * *"}
    assert credheaders.seal(cron, "p", KEYS) is cron
    assert credheaders.unseal(cron, "p", KEYS) is cron
    # A value that only looks sealed, in a header that is not a credential, stays as sent.
    odd = {"headers": {"X-Note": "ak1:zzz"}}
    assert credheaders.unseal(odd, "p", KEYS) == odd


def test_event_data_is_sealed_whole_and_opens_only_as_its_event() -> None:
    url = "/webhooks/s/x?token=q-1&code=q-2"
    data = normalize_request("POST", url, HEADERS, b"password=b-1", "s")
    event = wire.Event("evt_a", "prj_a", "trg_a", "post", data, {"m": "1"}, 5)
    sealed = eventdata.sealed(event, KEYS)
    packed = wire.encode(sealed)
    assert sealed.data == {} and eventdata.sealed(sealed, KEYS) is sealed
    assert [s for s in (*CREDENTIALS, "q-1", "q-2", "b-1") if s.encode() in packed] == []
    assert eventdata.data_of(wire.decode(wire.Event, packed), KEYS) == data
    assert eventdata.opened(sealed, KEYS) == event
    assert eventdata.data_of(event, KEYS) is data  # an earlier version's, in the clear
    for moved in (
        dataclasses.replace(sealed, event_id="evt_b"),  # another event's data
        dataclasses.replace(sealed, project_id="prj_b"),  # another project's
        dataclasses.replace(sealed, sealed_data=sealed.sealed_data[:-1] + b"x"),  # altered
    ):
        with pytest.raises(SealError):
            eventdata.data_of(moved, KEYS)
    # What a hostile publisher may put there instead (NATS carries any msgpack value).
    for junk in (
        5,
        True,
        {"a": 1},
        "ak1:x",
        b"junk",
        KEYS.seal(b"\xc1", b"prj_a/event/evt_a/data"),
    ):
        with pytest.raises(SealError):
            eventdata.data_of(dataclasses.replace(sealed, sealed_data=junk), KEYS)
    other = Keyring([Fernet.generate_key()])
    with pytest.raises(SealError, match="secrets key this service does not have"):
        eventdata.data_of(sealed, other)
