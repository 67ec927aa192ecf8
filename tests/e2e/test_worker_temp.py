"""A handler's temporary files (a review of 2026-12-07's worker sandbox): since sandboxed
workers got a /tmp and /var/tmp of their own in memory, of at most the worker's memory
limit each and counted against it, a handler that downloads a file bigger than that to a
temporary file (``tempfile.TemporaryFile``, as most libraries do) fails with ENOSPC, or is
stopped at its memory limit with what it wrote counted, where it worked before. An
operator whose handlers need that gives them the host's temporary directories again with
``AK_RUNNER__WORKER_TEMP=host`` (their disk, which nothing bounds)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack, start_stack, write_project

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the worker sandbox needs the runner to run as root"
)

CODE = """\
import tempfile


def download(event):
    # What a large download to a temporary file writes, a MiB at a time.
    with tempfile.TemporaryFile(dir=event.data["dir"]) as f:
        for _ in range(event.data["mib"]):
            f.write(b"x" * (1 << 20))
        f.flush()
        f.seek(0)
        print("read back", sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b"")) >> 20)
"""

MEMORY_MB = 128
# As test_worker_dos: homes outside the machine's temporary directories, else workers keep
# the host's (``sandbox.private_temps``).
HOMES = Path("/var/lib/autokitteh-tests")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    HOMES.mkdir(mode=0o755, parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="ak-temp-", dir=HOMES))
    s = start_stack(
        home,
        {
            "AK_RUNNER__WORKER_MEMORY_MB": str(MEMORY_MB),
            "AK_RUNNER__WORKER_TEMP": "host",
            "AK_RUNNER__SESSION_TIMEOUT": "120",
        },
    )
    files = {"autokitteh.yaml": "version: v1\nproject:\n  name: dl\n", "h.py": CODE}
    s.deploy(write_project(home / "p", files))
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("where", ["/tmp", "/var/tmp"])
def test_a_temporary_file_bigger_than_the_memory_limit_can_be_written(
    stack: Stack, where: str
) -> None:
    mib = 2 * MEMORY_MB
    inputs = ("-I", f"dir={json.dumps(where)}", "-I", f"mib={mib}")
    res = stack.ak("session", "start", "-o", "dl", "-p", "h.py:download", *inputs)
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().removeprefix("session_id: ")
    session = stack.wait_session(sid, timeout=120)
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert session["state"] == "COMPLETED", (session, prints)
    assert prints == [f"read back {mib}"], prints
