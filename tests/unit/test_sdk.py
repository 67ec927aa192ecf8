"""The SDK as handlers see it, and importable with nothing but the standard library."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from autokitteh import AttrDict, Body, Event
from autokitteh.body import with_body

LIBS = Path(__file__).parents[2] / "libs"
FORMS = {
    "bytes": b'{"user": "joe"}',
    "text": '{"user": "joe"}',
    "json": {"user": "joe"},
    "form": None,
}


def test_attr_dict() -> None:
    d = AttrDict({"a": {"b": 1}, "items": 2, "l": [{"x": 1}]})
    assert d.a.b == 1 and d["a"]["b"] == 1
    assert d.l[0].x == 1
    assert callable(d.items)  # real dict attributes win
    with pytest.raises(AttributeError):
        _ = d.nope
    with pytest.raises(NotImplementedError):
        d.a = 3
    d["a"]["c"] = 2  # item assignment sticks
    assert d.a.c == 2
    assert pickle.loads(pickle.dumps(d)) == d


def test_event_is_dict_like() -> None:
    e = Event(
        data=with_body({"body": FORMS}), event_type="post", event_id="evt_1", session_id="ses_1"
    )
    assert e.data.body is e["data"]["body"]
    assert e.session_id == "ses_1" and e["event_type"] == "post"
    e["data"]["user"] = "Garfield"
    assert e.data.user == "Garfield"
    with pytest.raises(NotImplementedError):
        e.data.user = "Odie"
    assert pickle.loads(pickle.dumps(e)) == e


def test_body_is_bytes_with_forms() -> None:
    body = Body(FORMS)
    assert isinstance(body, bytes)
    assert repr(body) == repr(b'{"user": "joe"}')
    assert json.loads(body) == {"user": "joe"}
    assert body.decode() == '{"user": "joe"}'
    assert body.bytes == b'{"user": "joe"}' and body["bytes"] == body.bytes
    assert body.text == '{"user": "joe"}' and body["text"] == body.text
    assert body.json.user == "joe" and body["json"]["user"] == "joe"
    assert body.form is None and body["form"] is None
    assert body[0] == ord("{")  # still indexable as bytes
    empty = Body({"bytes": None, "text": None, "json": None, "form": None})
    assert empty == b"" and empty.bytes is None
    restored = pickle.loads(pickle.dumps(body))
    assert restored == body and restored.json == {"user": "joe"}


def test_isolated_handler_snippet_in_plain_python(tmp_path: Path) -> None:
    """The seed's "Isolated Handler Functions" snippet, with only libs/autokitteh importable."""
    (tmp_path / "handler.py").write_text(
        'def on_event(event):\n    print("BODY:", event.data.body.decode())\n'
    )
    (tmp_path / "run.py").write_text(
        "from autokitteh import AttrDict\n"
        "import handler\n\n"
        "# AutoKitteh events are instances of autokitth.AttrDict\n"
        'event = AttrDict({"data": {"body": "hello".encode()}})\n'
        "handler.on_event(event)\n"
    )
    pkg = tmp_path / "sdk"
    pkg.mkdir()
    (pkg / "autokitteh").symlink_to(LIBS / "autokitteh")
    # -S: no site-packages, so nothing but the standard library and the SDK is importable.
    res = subprocess.run(
        [sys.executable, "-S", "run.py"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(pkg)},
        capture_output=True,
        text=True,
    )
    assert (res.returncode, res.stdout) == (0, "BODY: hello\n"), res.stderr
