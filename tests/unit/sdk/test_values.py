"""The value codec: what crosses from one session to another round-trips exactly, and
nothing else is accepted; decoding builds data only."""

from __future__ import annotations

import enum
import pickle
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from autokitteh import AttrDict, AutoKittehError
from autokitteh._values import MAX_DEPTH, MAX_SIZE, dumps, from_data, loads, to_data
from autokitteh.body import Body
from autokitteh.errors import MalformedValue, NotAValue

VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    float("inf"),
    "text",
    b"\x00\xffbytes",
    datetime(2026, 1, 2, 3, 4, 5, 6),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    date(2026, 1, 2),
    timedelta(days=-3, seconds=7, microseconds=9),
    {1, "a", (2, 3)},
    frozenset({"x", b"y"}),
    (1, (2, [3])),
    [1, [2, {"k": (3,)}]],
    {"a": 1, "b": [None, {"c": b"d"}]},
    {1: "int key", (1, 2): "tuple key", "s": "str key"},
    {"__ak__": "bytes", "v": "looks like a tag, is a dict"},
]


# (ids by type and place, not repr: a set's repr changes with the hash seed, and parallel
# test runners must collect the same ids)
@pytest.mark.parametrize(
    "value", VALUES, ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(VALUES)]
)
def test_values_round_trip_exactly(value: Any) -> None:
    got = loads(dumps(value))
    assert got == value
    assert type(got) is type(value)


def test_a_naive_datetime_stays_naive_and_an_aware_one_keeps_its_offset() -> None:
    naive, aware = loads(dumps([datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC)]))
    assert naive.tzinfo is None
    assert aware.utcoffset() == timedelta(0)


def test_plain_json_encodes_as_itself() -> None:
    data = {"a": [1, 2.5, "x", None, True], "b": {"c": {}}}
    assert to_data(data) == data
    assert dumps(data) == b'{"a":[1,2.5,"x",null,true],"b":{"c":{}}}'


class Color(str, enum.Enum):  # noqa: UP042  (its str() is its name, not its value)
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


def test_subclasses_arrive_as_their_base_type() -> None:
    value = {"d": AttrDict({"k": 1}), "body": Body({"bytes": b"raw"}), "e": [Color.RED, Size.BIG]}
    got = loads(dumps(value))
    assert got == {"d": {"k": 1}, "body": b"raw", "e": ["red", 3]}
    assert [type(got[k]) for k in ("d", "body")] == [dict, bytes]
    assert [type(x) for x in got["e"]] == [str, int]


class Marker:
    def __reduce__(self) -> Any:
        return (Path.touch, (Path("/tmp/never"),))


def test_other_objects_are_refused_naming_the_type_where_and_what_is_allowed() -> None:
    with pytest.raises(NotAValue) as e:
        dumps({"a": [1, Marker()]}, "signal payload")
    assert str(e.value) == (
        "signal payload['a'][1]: tests.unit.sdk.test_values.Marker is not a value; "
        "use JSON types, bytes, datetime, timedelta, set, tuple"
    )
    assert isinstance(e.value, AutoKittehError) and isinstance(e.value, TypeError)
    with pytest.raises(NotAValue, match=r"^value: function is not a value"):
        to_data(lambda: 1)


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(NotAValue, match=f"^value: nested deeper than {MAX_DEPTH} levels"):
        dumps(loop)


def test_a_pickle_is_not_a_value() -> None:
    with pytest.raises(MalformedValue, match="^signal payload: not an encoded value"):
        loads(pickle.dumps(Marker()), "signal payload")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"__ak__": "pickle", "v": "gASV"}', "unknown type tag 'pickle'"),
        (b'{"__ak__": "bytes", "v": "a", "x": 1}', "a tagged object has the keys"),
        (b'{"__ak__": "bytes", "v": 1}', "int, not str"),
        (b'{"__ak__": "set", "v": [[1]]}', "unhashable type: 'list'"),
        (b'{"__ak__": "timedelta", "v": [1, "2", 3]}', "a timedelta is [days"),
        (b'{"__ak__": "float", "v": "1e9"}', "is not nan, inf or -inf"),
        (b"NaN", "NaN is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "recursion"),
        (b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), f"nested deeper than {MAX_DEPTH}"),
        (b"1" * 5000, "digits"),
    ],
)
def test_malformed_data_is_refused(raw: bytes, error: str) -> None:
    with pytest.raises(MalformedValue, match="^value: not an encoded value") as e:
        loads(raw)
    assert error in str(e.value)


def test_size_limits() -> None:
    with pytest.raises(MalformedValue, match=f"over the {MAX_SIZE} byte limit"):
        dumps(b"x" * MAX_SIZE)
    with pytest.raises(MalformedValue, match=f"over the {MAX_SIZE} byte limit"):
        loads(b" " * (MAX_SIZE + 1))


def test_from_data_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(MalformedValue, match=r"a key is int, not str"):
        from_data({1: 2})
    with pytest.raises(MalformedValue, match=r"bytes is not JSON data"):
        from_data(b"raw")
