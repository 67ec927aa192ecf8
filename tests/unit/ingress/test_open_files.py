"""Ingress raises its open-file limit to fit its connection cap, and says when it cannot."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

CODE = """
import logging, resource
from akcore.config import HttpLimits
from ak_ingress.service import fit_open_files
logging.basicConfig(format="%(message)s")
fit_open_files(HttpLimits(max_connections=1000))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _run(soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [sys.executable, "-c", CODE], preexec_fn=limit, capture_output=True, text=True, timeout=60
    )


def test_the_soft_limit_is_raised_to_fit_the_cap() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1256:
        pytest.skip(f"the hard open-file limit here is {hard}")
    res = _run(256, hard)
    assert (res.stdout, res.stderr) == ("1256\n", "")


def test_a_hard_limit_below_the_cap_is_reached_and_reported() -> None:
    res = _run(256, 512)
    assert res.stdout == "512\n"
    assert res.stderr == (
        "the open-file limit (512) is below AK_HTTP__MAX_CONNECTIONS (1000) plus 256: "
        "lower it or raise `ulimit -Hn`\n"
    )
