"""Webhook request normalization (reference section 3.2)."""

from __future__ import annotations

import json

from akcore import wire
from akcore.webhook import (
    MAX_FORM_FIELDS,
    MAX_JSON_DEPTH,
    canonical_header,
    nested_deeper,
    normalize_request,
)

SLUG = "n66f3e78p4ext7hdz16578p5tw"


def test_get_without_body() -> None:
    d = normalize_request("get", f"/webhooks/{SLUG}", [("host", "x"), ("accept", "*/*")], b"", SLUG)
    assert d["method"] == "GET"
    assert d["url"] == {"path": f"/webhooks/{SLUG}", "path_suffix": "", "query": {}}
    assert d["headers"] == {"Accept": "*/*"}  # Host is not included
    assert d["body"] == {"bytes": None, "text": None, "json": None, "form": None}
    assert d["trailers"] == {}


def test_sub_path_query_and_repeated_headers() -> None:
    raw = f"/webhooks/{SLUG}/a/b%20c?x=1&x=2&y="
    headers = [("x-foo", "1"), ("X-FOO", "2"), ("content-type", "text/plain")]
    d = normalize_request("POST", raw, headers, "héllo".encode(), SLUG)
    assert d["raw_url"] == raw
    assert d["url"]["path"] == f"/webhooks/{SLUG}/a/b c"
    assert d["url"]["path_suffix"] == "a/b c"
    assert d["url"]["query"] == {"x": "1, 2", "y": ""}
    assert d["headers"] == {"X-Foo": "1, 2", "Content-Type": "text/plain"}
    assert d["body"]["bytes"] == "héllo".encode()
    assert d["body"]["text"] == "héllo"
    assert d["body"]["json"] is None
    assert d["body"]["form"] is None


def test_trailing_slash_has_empty_suffix() -> None:
    assert normalize_request("GET", f"/webhooks/{SLUG}/", [], b"", SLUG)["url"]["path_suffix"] == ""


def test_json_is_the_first_value_and_keeps_big_ints() -> None:
    body = b' {"n": 123456789012345678901234567890, "f": 1.5}'
    assert normalize_request("POST", "/", [], body, SLUG)["body"]["json"] == {
        "n": 123456789012345678901234567890,
        "f": 1.5,
    }
    assert normalize_request("POST", "/", [], b"123abc", SLUG)["body"]["json"] == 123


def test_form_only_for_urlencoded_post_put_patch() -> None:
    hdr = [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")]
    for method in ("POST", "PUT", "PATCH"):
        d = normalize_request(method, "/", hdr, b"a=1&a=2&b=", SLUG)
        assert d["body"]["form"] == {"a": "1, 2", "b": ""}
    assert normalize_request("GET", "/", hdr, b"a=1", SLUG)["body"]["form"] is None
    json_hdr = [("Content-Type", "application/json")]
    assert normalize_request("POST", "/", json_hdr, b"a=1", SLUG)["body"]["form"] is None


def test_invalid_utf8_body() -> None:
    d = normalize_request("POST", "/", [], b"\xff\xfe", SLUG)["body"]
    assert d == {"bytes": b"\xff\xfe", "text": None, "json": None, "form": None}


def test_canonical_header() -> None:
    assert canonical_header("x-github-event") == "X-Github-Event"
    assert canonical_header("CONTENT-TYPE") == "Content-Type"


def test_json_nested_too_deep_is_kept_as_text_only() -> None:
    """Deeper than MAX_JSON_DEPTH (or than Python can parse): ``json`` is None, the text is
    there; as deep as the limit still parses."""
    for body in (b"[" * 100_000, b'{"a":' * 101 + b"1" + b"}" * 101):
        d = normalize_request("POST", "/", [], body, SLUG)["body"]
        assert d["json"] is None and d["text"] == body.decode()
    deepest = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert normalize_request("POST", "/", [], deepest, SLUG)["body"]["json"] is not None
    wide = b"[" + b",".join([b"[]"] * 500) + b"]"
    assert normalize_request("POST", "/", [], wide, SLUG)["body"]["json"] == [[]] * 500


def test_json_depth_is_read_from_its_text_strings_and_what_follows_left_out() -> None:
    """The depth is the text's (walking the value took ~0.5 s of ingress's loop for a
    512 KiB body of 170,000 empty maps): brackets inside strings (escaped quotes and
    backslashes too) do not count, nor what follows the first JSON value."""
    inside = [("[{" * 200) + '\\"\\' + ("}]" * 200), "a\\", '\\"[']
    body = json.dumps([[inside]]).encode()
    assert normalize_request("POST", "/", [], body, SLUG)["body"]["json"] == [[inside]]
    assert nested_deeper(body, None, 3) is False and nested_deeper(body, None, 2) is True
    trailing = b'{"a": 1} ' + b"[" * 500
    assert normalize_request("POST", "/", [], trailing, SLUG)["body"]["json"] == {"a": 1}
    wide = b"[" + b",".join([b"{}"] * 170_000) + b"]"
    assert normalize_request("POST", "/", [], wide, SLUG)["body"]["json"] == [{}] * 170_000
    deep_and_wide = b"[" * 100 + wide + b"]" * 100
    assert normalize_request("POST", "/", [], deep_and_wide, SLUG)["body"]["json"] is None


def test_a_form_of_more_than_max_form_fields_is_kept_as_text_only() -> None:
    """Parsing a form is ~1.6 µs a field in ingress's loop: a 512 KiB body of 170,000 held
    it ~0.3 s. Past MAX_FORM_FIELDS, ``form`` is None and the text is there."""
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    most = "&".join(f"f{i}=v" for i in range(MAX_FORM_FIELDS)).encode()
    parsed = normalize_request("POST", "/", form, most, SLUG)["body"]["form"]
    assert parsed is not None and len(parsed) == MAX_FORM_FIELDS
    over = most + b"&last=v"
    body = normalize_request("POST", "/", form, over, SLUG)["body"]
    assert body["form"] is None and body["text"] == over.decode()


def test_json_with_a_lone_surrogate_is_kept_as_text_and_the_event_encodes() -> None:
    """``"\\ud800"`` decodes to a string no encoder takes: the event could not be published
    (a 503 every time the provider retried); its body is text, and a surrogate pair still
    parses."""
    body = b'{"a": "\\ud800", "ok": 1}'
    event = normalize_request("POST", "/", [], body, SLUG)
    assert event["body"]["json"] is None and event["body"]["text"] == body.decode()
    wire.encode(wire.StoreReply(ok=True, result=event))  # what ingress publishes must encode
    pair = normalize_request("POST", "/", [], b'["\\ud83d\\ude00"]', SLUG)["body"]
    assert pair["json"] == ["\U0001f600"]
