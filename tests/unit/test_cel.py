"""CEL filters: variables, bytes, errors as no-match, compile cache."""

from __future__ import annotations

import pytest
from akcore import cel

DATA = {
    "method": "GET",
    "url": {"path": "/webhooks/x/woof", "query": {}},
    "headers": {"X-Github-Event": "push"},
    "body": {"bytes": b"hi", "text": "hi", "json": None, "form": None},
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("", True),
        (".", True),
        ("data.url.path.endsWith('/woof')", True),
        ("data.url.path.endsWith('/meow')", False),
        ("event_type == 'get' && data.method == 'GET'", True),
        ('data.headers["X-Github-Event"] == "push"', True),
        ('data.body.bytes == b"hi"', True),
        ("data.body.json.action == 'opened'", False),  # evaluation error -> no match
        ("data.missing == 1", False),
        ("1 + 1", False),  # not a bool
        ("data.method.lowerAscii() == 'get'", True),
        ("data.url.path.split('/').size() == 4", True),
        ("data.url.path.replace('woof', 'meow').endsWith('/meow')", True),
        ("data.url.path.substring(1, 9) == 'webhooks'", True),
        ("['a', 'b'].join('-') == 'a-b'", True),
        ("data.url.path.indexOf('x') == 10", True),
        ("[1, 2, 3].exists(n, n > 2) && [1, 2].all(n, n > 0)", True),
    ],
)
def test_matches(expr: str, expected: bool) -> None:
    assert cel.matches(expr, "get", DATA) is expected


def test_invalid_filter() -> None:
    with pytest.raises(cel.FilterError, match="invalid filter"):
        cel.validate_filter("data.(")
    assert cel.matches("data.(", "get", DATA) is False


def test_compiled_once() -> None:
    cel.compile_filter.cache_clear()
    for _ in range(5):
        cel.matches("data.method == 'GET'", "get", DATA)
    info = cel.compile_filter.cache_info()
    assert (info.misses, info.hits) == (1, 4)


def test_event_type() -> None:
    assert cel.event_type_matches("", "post")
    assert cel.event_type_matches("*", "post")
    assert cel.event_type_matches("post", "post")
    assert not cel.event_type_matches("get", "post")
