"""How long the web UI's page of a big session takes: a session of 10,000 prints and 1,000
activities, its first page, a later page, the live rows fragment and the trace.
Usage: ``python -m bench.ui_page [--prints 10000] [--activities 1000] [--runs 5]``."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import start_stack, write_project  # noqa: E402

MANIFEST = """\
version: v1
project:
  name: ui_bench
  triggers:
    - name: hook
      call: big.py:big
      webhook: {}
"""

CODE = """\
import autokitteh


@autokitteh.activity
def step(i):
    return i


def big(event):
    prints, activities = event.data.body.json["prints"], event.data.body.json["activities"]
    every = max(prints // max(activities, 1), 1)
    for i in range(prints):
        print(f"line {i} of the big session")
        if i % every == 0 and i // every < activities:
            step(i)
"""


def timed(client: httpx.Client, path: str, runs: int) -> tuple[float, int]:
    """The median seconds of ``runs`` GETs of ``path``, and the page's size."""
    times, size = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        resp = client.get(path)
        times.append(time.perf_counter() - t0)
        assert resp.status_code == 200, resp.text[:500]
        size = len(resp.content)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prints", type=int, default=10_000)
    parser.add_argument("--activities", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ak-ui-bench-") as tmp:
        stack = start_stack(Path(tmp), {"AK_AUTH__TOKENS": "off"})
        try:
            project = write_project(Path(tmp) / "p", {"autokitteh.yaml": MANIFEST, "big.py": CODE})
            hook = stack.deploy_paths(project)["hook"]
            body = {"prints": args.prints, "activities": args.activities}
            _, event_id = stack.post_json(hook, body)
            sid = stack.session_of("ui_bench", event_id)
            state = stack.wait_session(sid, timeout=600)["state"]
            print(f"session {sid}: {state}, {args.prints} prints, {args.activities} activities")
            with httpx.Client(base_url=stack.url, timeout=60) as client:
                for label, path in (
                    ("session page (first 500 records)", f"/ui/sessions/{sid}"),
                    ("session page (records 10,000-10,499)", f"/ui/sessions/{sid}?skip=10000"),
                    ("live rows fragment (200 records)", f"/ui/sessions/{sid}/records?skip=0"),
                    ("trace page", f"/ui/sessions/{sid}/trace"),
                    ("sessions page", "/ui/sessions"),
                ):
                    median, size = timed(client, path, args.runs)
                    print(f"{label:40} {median * 1000:8.1f} ms median  {size / 1024:8.1f} KiB")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
