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
    cel.PROGRAMS.clear()
    before = cel.PROGRAMS.compiled
    for _ in range(5):
        cel.matches("data.method == 'GET'", "get", DATA)
    assert cel.PROGRAMS.compiled == before + 1


def test_the_compiled_programs_kept_are_bounded_by_their_tokens() -> None:
    programs = cel.Programs(entries=100, tokens=50)
    for n in range(20):
        programs.get(f"data.n == {n}")  # 5 tokens each
    assert (len(programs), programs.kept_tokens) == (10, 50)
    programs.get("data.n == 19")
    assert programs.compiled == 20  # the newest were kept
    programs.get("data.n == 0")
    assert programs.compiled == 21  # the oldest were not
    # One filter over the whole allowance is compiled, used and not kept.
    big = " || ".join(f"data.n == {n}" for n in range(20))
    assert programs.get(big).evaluate(cel.variables("get", {"n": 3}))
    assert programs.kept_tokens <= 50


def test_a_filter_is_only_checked_where_it_is_saved() -> None:
    kept = len(cel.PROGRAMS)
    cel.validate_filter("data.method == 'a checked filter'")
    assert len(cel.PROGRAMS) == kept


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
        ("1 + 1", "the filter's result is of type IntType, not a bool"),
        ("data.(", "invalid filter"),
    ],
)
def test_a_filter_that_cannot_decide_says_why(expr: str, problem: str) -> None:
    verdict = cel.judge(expr, cel.variables("get", DATA))
    assert not verdict.matched and verdict.problem.startswith(problem)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        (
            "data.t.foo == 1",
            "evaluation error: a value of type StringType does not support field selection",
        ),
        ("data.t", "the filter's result is of type StringType, not a bool"),
        ("data.t.startswith('x')", "evaluation error: undeclared reference to 'startswith'"),
        (
            "data.t + 1 == 2",
            "evaluation error: no matching overload for addition_add applied to "
            "(StringType, IntType)",
        ),
        ("data.m[data.t] == 1", "evaluation error: no such key"),
        ("data.m.matches(data.t + '[')", "evaluation error: match error"),
        ("int(data.t) == 1", "evaluation error: return error for overflow"),
        # A value that reads like a message cel-python words without values is not one.
        ("{data.u: 1, data.u: 2}.size() == 1", "evaluation error: CELEvalError (its message"),
    ],
)
def test_a_filter_that_fails_on_a_value_does_not_quote_it(
    expr: str, problem: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The reason is kept in the event's notes and the log while the event's data rests
    sealed: it names types and the filter's own names, never a value of the event (nor
    does re2 write a pattern made of them to standard error)."""
    secret = "sealed-value-x7"
    u = f"undeclared reference to '{secret.replace('-', '_')}'"
    data = {"t": secret, "m": {"a": secret}, "u": u}
    verdict = cel.judge(expr, cel.variables("get", data))
    assert not verdict.matched and verdict.problem.startswith(problem)
    assert secret.replace("-", "_") not in verdict.problem
    out, err = capfd.readouterr()
    assert secret not in out + err


WIDE = "size([" + ",".join(["1"] * 300) + "]) > 0"  # 606 tokens
CHAINED = " + ".join(["1"] * 160) + " > 0"  # 321 tokens, but 320 levels of additions


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        (
            "data.x == '" + "a" * 4090 + "'",
            "invalid filter: it is 4102 characters long, over the limit of 4096: "
            "filter on a few fields and check the rest in the handler",
        ),
        (
            WIDE,
            "invalid filter: it has 606 tokens (names, literals, operators and brackets), "
            "over the limit of 500: filter on a few fields and check the rest in the handler",
        ),
        (
            "(" * 17 + "true" + ")" * 17,
            "invalid filter: its brackets nest 17 deep, over the limit of 16",
        ),
        (
            CHAINED,
            "invalid filter: it nests 331 levels deep once parsed, over the limit of 300: use "
            "fewer nested brackets and macros, and shorter chains of operators",
        ),
    ],
)
def test_a_filter_over_a_size_limit_is_refused_with_the_limit(expr: str, problem: str) -> None:
    with pytest.raises(cel.FilterError) as e:
        cel.validate_filter(expr)
    assert str(e.value) == problem
    assert cel.judge(expr, cel.variables("get", DATA)) == cel.Verdict(False, problem)


@pytest.mark.parametrize(
    "expr",
    [
        "data.method != '" + "a" * 4000 + "'",  # a long string is one token
        "data.method != '" + "(" * 100 + "'",  # brackets in a string are not brackets
        "(" * 16 + "data.method == 'GET'" + ")" * 16,
        " + ".join(["1"] * 120) + " > 0",
        " && ".join(f"data.headers['X-Github-Event'] != 'x{n}'" for n in range(40)),
    ],
)
def test_filters_within_the_limits_run(expr: str) -> None:
    cel.validate_filter(expr)
    assert cel.judge(expr, cel.variables("get", DATA)) == cel.Verdict(True)


def test_the_size_of_a_filter_is_checked_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parse(text: str) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(cel._ENV, "compile", parse)
    for expr in ["x" * 100_000, WIDE, "[" * 100 + "]" * 100]:
        with pytest.raises(cel.FilterError, match="over the limit"):
            cel.validate_filter(expr)


TEXT = "x" * 2000
LIMIT = "more than the 1048576 a filter may build"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        # 2,000 characters with the text between each two: 4 million in one call.
        (
            'data.text.replace("", data.text).size() == 0',
            f"replace() would make 4004000 characters, {LIMIT}",
        ),
        ('data.text.replace("", data.text) == "" || true', "replace() would make 4004000"),
        ("data.items.map(x, data.text).join(',').size() > 0", "join() would make 10"),
        ("size(data.big + data.big) > 0", f"+ would make 1200000 characters, {LIMIT}"),
        ("size(data.list + data.list) > 0", f"+ would make 1200000 items, {LIMIT}"),
        ("size(data.blob + data.blob) > 0", f"+ would make 1200000 bytes, {LIMIT}"),
        ("data.big.split('a').size() > 0", f"split() would make 1100001 items, {LIMIT}"),
    ],
)
def test_a_filter_cannot_build_a_huge_value(expr: str, problem: str) -> None:
    data = {
        "text": TEXT,
        "items": list(range(1000)),
        "big": "a" * 600_000,
        "list": [0] * 600_000,
        "blob": b"a" * 600_000,
    }
    if "split" in expr:
        data["big"] = "a" * 1_100_000
    verdict = cel.judge(expr, cel.variables("post", data))
    assert not verdict.matched
    assert verdict.problem.startswith(f"filter ran over its size limit: {problem}")


@pytest.mark.parametrize(
    "expr",
    [
        "data.text.replace('x', 'yy').size() == 4000",
        "data.text.replace('', '-', 3).startsWith('-x-x-x')",
        "data.huge.replace('a', 'b').size() == 2000000",  # as long as what it was given
        "data.huge.lowerAscii().size() == 2000000",
        "(data.text + data.text).size() == 4000 && size([1] + [2]) == 2",
        "data.text.split('').size() == 0 || true",  # (an error, and false, in cel-python)
        "['a', 'b'].join('-') == 'a-b'",
    ],
)
def test_values_within_the_size_limit_are_built(expr: str) -> None:
    data = {"text": TEXT, "huge": "a" * 2_000_000}
    assert cel.judge(expr, cel.variables("post", data)) == cel.Verdict(True)


@pytest.mark.parametrize(
    ("expr", "matched", "problem"),
    [
        ("data.s.matches('^a')", True, ""),
        ("matches(data.s, 'c$')", True, ""),
        ("data.b.matches('^ab')", True, ""),  # bytes, as cel-python
        ("data.s.matches('[')", False, "evaluation error: match error"),
        # Not a string: no overload, as cel-python (not the text of a number or a map).
        ("data.n.matches('^42$')", False, "evaluation error: no such overload"),
        ("matches('42', data.n)", False, "evaluation error: no such overload"),
        ("data.m.matches('admin')", False, "evaluation error: no such overload"),
        ("data.m.role != '' && data.m.matches('admin')", False, "evaluation error: no such"),
    ],
)
def test_matches_as_cel_python(expr: str, matched: bool, problem: str) -> None:
    data = {"s": "abc", "b": b"ab", "n": 42, "m": {"role": "admin"}}
    verdict = cel.judge(expr, cel.variables("get", data))
    assert verdict.matched is matched and verdict.problem.startswith(problem)
