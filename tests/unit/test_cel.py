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


BIG = {
    "method": "POST",
    "headers": {"Content-Type": "application/json", "X-N": "1"},
    "body": {"json": {"items": list(range(1000)), "action": "opened"}},
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("'X-N' in data.headers && !('X-M' in data.headers)", True),
        ("size(data.headers) == 2 && data.headers.size() == 2", True),
        ("data.headers.exists(k, k.startsWith('Content'))", True),
        ("has(data.body.json.action) && !has(data.body.json.nope)", True),
        ("data.headers == {'X-N': '1', 'Content-Type': 'application/json'}", True),
        ("data.headers != {'X-N': '2', 'Content-Type': 'application/json'}", True),
        ("data.body.json.items[999] == 999 && size(data.body.json.items) == 1000", True),
        ("data.headers.filter(k, k == 'X-N') == ['X-N']", True),
        ("data.headers.map(k, data.headers[k]).exists(v, v == '1')", True),
        ("data.body.json.items.exists(x, x == 1001)", False),
    ],
)
def test_maps_converted_lazily_behave_as_cel_maps(expr: str, expected: bool) -> None:
    assert cel.judge(expr, cel.variables("post", BIG)) == cel.Verdict(expected)


def test_a_filter_converts_only_what_it_reads() -> None:
    variables = cel.variables("post", BIG)
    assert cel.judge("data.method == 'POST'", variables).matched
    assert sorted(variables["data"].unread()) == ["body", "headers"]
    assert cel.judge("data.body.json.action == 'opened'", variables).matched
    assert sorted(variables["data"].unread()) == ["headers"]
    assert sorted(variables["data"]["body"]["json"].unread()) == ["items"]


def test_the_filters_of_one_event_convert_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[object] = []
    to_cel = cel.to_cel

    def counting(value: object) -> object:
        converted.append(value)
        return to_cel(value)

    monkeypatch.setattr(cel, "to_cel", counting)
    variables = cel.variables("post", BIG)
    for expr in ("data.body.json.items.exists(x, x == 3)", "size(data.body.json.items) > 9"):
        assert cel.judge(expr, variables).matched
    # body, json, the list and its 1000 items: each once, although two filters read them.
    assert len(converted) == 3 + 1000
    assert sum(v is BIG["body"]["json"]["items"] for v in converted) == 1


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("data.nope == 1", "evaluation error: no such member in mapping: 'nope'"),
        ("1 + 1", "the filter's result is IntType(2), not a bool"),
        ("data.(", "invalid filter"),
    ],
)
def test_a_filter_that_cannot_decide_says_why(expr: str, problem: str) -> None:
    verdict = cel.judge(expr, cel.variables("get", DATA))
    assert not verdict.matched and verdict.problem.startswith(problem)
