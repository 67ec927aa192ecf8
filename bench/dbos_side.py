"""The same work on DBOS (SQLite system database), in a child process: an N-step workflow
with trivial steps, and workflow starts per second. Needs ``pip install -e .[bench]``."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from typing import Any

CHILD = r"""
import json, sys, tempfile, time
from dbos import DBOS

steps, starts = int(sys.argv[1]), int(sys.argv[2])

@DBOS.step()
def noop(i):
    return i

@DBOS.workflow()
def many(n):
    for i in range(n):
        noop(i)

@DBOS.workflow()
def one():
    noop(0)

db = tempfile.mkdtemp() + "/dbos.sqlite"
DBOS(config={"name": "ak-bench", "system_database_url": "sqlite:///" + db})
DBOS.launch()
many(10)  # warm up
t0 = time.perf_counter(); many(steps); per_step = (time.perf_counter() - t0) / steps * 1000
t0 = time.perf_counter()
handles = [DBOS.start_workflow(one) for _ in range(starts)]
for h in handles:
    h.get_result()
rate = starts / (time.perf_counter() - t0)
print(json.dumps({"per_step_ms": per_step, "starts_per_s": rate}))
DBOS.destroy()
"""


def run_dbos(steps: int = 1000, starts: int = 300) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cwd:
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(steps), str(starts)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if res.returncode != 0:
        raise RuntimeError(
            "DBOS run failed (is it installed? pip install -e '.[bench]'):\n" + res.stderr[-2000:]
        )
    out: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def compare(ours: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """DBOS's numbers next to ours (medians of this run's results)."""
    d = run_dbos()
    row: dict[str, float] = {
        "DBOS per step (ms)": d["per_step_ms"],
        "DBOS starts (/s)": d["starts_per_s"],
    }
    if ours.get("activity"):
        step = statistics.median(r["overhead p50 (ms)"] for r in ours["activity"])
        row["our per step (ms)"] = step
        row["per-step ratio (ours/DBOS)"] = step / d["per_step_ms"]
    if ours.get("throughput"):
        rate = statistics.median(r["completed (/s)"] for r in ours["throughput"])
        row["our starts (/s)"] = rate
        row["per-start ratio (ours/DBOS)"] = (1 / rate) / (1 / d["starts_per_s"])
    return row
