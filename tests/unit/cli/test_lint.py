"""`ak project lint`'s checks, on files in memory."""

from __future__ import annotations

from ak_cli.lint import lint

MANIFEST = """\
version: v1
project:
  name: p
  vars:
    - name: EMPTY
      value: ""
  triggers:
    - name: a
      webhook: {}
      call: h.py:handler
    - name: b
      webhook: {}
      call: h.py:Klass
"""
CODE = b"import os\n\ndef handler(event):\n    def inner(): pass\n\nclass Klass:\n    pass\n"


def _texts(manifest: str, files: dict[str, bytes]) -> list[str]:
    return [v.text() for v in lint("autokitteh.yaml", manifest, files)]


def test_a_good_project_gives_only_warnings() -> None:
    assert _texts(MANIFEST, {"h.py": CODE}) == [
        'autokitteh.yaml:0 - WARNING - project variable "EMPTY" is empty'
    ]


def test_calls_must_name_a_file_and_a_top_level_function() -> None:
    nested = MANIFEST.replace("h.py:Klass", "h.py:inner")
    assert _texts(nested, {"h.py": CODE})[1:] == [
        'autokitteh.yaml:0 - ERROR - trigger "b": function "inner" not found in "h.py"'
    ]
    assert _texts(MANIFEST, {"other.py": CODE})[1:] == [
        'autokitteh.yaml:0 - ERROR - trigger "a": file "h.py" not found',
        'autokitteh.yaml:0 - ERROR - trigger "b": file "h.py" not found',
    ]


def test_python_files_must_compile_and_the_manifest_be_valid() -> None:
    found = lint("autokitteh.yaml", "version: v9\n", {"h.py": CODE, "x.py": b"def (\n"})
    assert [(v.file, v.level, v.line) for v in found] == [
        ("x.py", "ERROR", 1),
        ("autokitteh.yaml", "ERROR", 0),
    ]
    assert "unsupported manifest version" in found[1].message


def test_no_triggers_is_a_warning() -> None:
    found = lint("m.yaml", "version: v1\nproject:\n  name: p\n", {})
    assert [v.text() for v in found] == ["m.yaml:0 - WARNING - no triggers"]
