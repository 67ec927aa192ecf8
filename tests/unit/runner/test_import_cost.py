"""A runner starts without building CEL's parser (~0.15 s of its start, which a session
waits for when its runner was just restarted): only a `subscribe` validates a filter, and
it imports CEL then. Read from ``sys.modules`` in a fresh interpreter, not timed."""

from __future__ import annotations

import subprocess
import sys


def test_the_runner_imports_no_cel_until_a_filter_is_validated() -> None:
    probe = "import sys, ak_runner.service; print('celpy' in sys.modules, 'lark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (out.returncode, out.stdout.split()) == (0, ["False", "False"]), out.stderr
