"""Handlers the benchmarks run (see docs/benchmarks.md, "How to run")."""

import json
import os
import time

import autokitteh

# Timing calls are not activities here: the benchmarks measure around them.
autokitteh.register_no_activity([time.time, time.perf_counter_ns])


@autokitteh.activity
def noop(i):
    return i


def activities(event):
    """n trivial activities, each timed; prints the per-call times in microseconds."""
    n = int(event.data.body.json["n"])
    times = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        noop(i)
        times.append((time.perf_counter_ns() - t0) / 1000)
    print(json.dumps({"us": times}))


def first_line(event):
    """Records when the handler started (wall clock) in the file the request names, to
    compare with the send time (a file, so that the benchmark need not poll the server)."""
    t = time.time()
    with open(event.data.body.json["out"], "w") as f:
        f.write(repr(t))


def trivial(event):
    pass


def replay(event):
    """n activities, then waits for a file to appear (the benchmark kills the runner while
    it waits, then measures how long the replay takes to reach this point again)."""
    n = int(event.data.body.json["n"])
    for i in range(n):
        noop(i)
    marker = event.data.body.json["marker"]
    print(json.dumps({"live": time.time()}))
    while not os.path.exists(marker):
        time.sleep(0.05)


def waits(event):
    """Waits (a durable sleep) until the benchmark stops it: an idle waiting session."""
    time.sleep(3600)


def sync_step(event):
    """One trivial activity, then the answer to the sync webhook that started the session
    (the closed-loop benchmark of bench/peers.py waits for it)."""
    noop(0)
    autokitteh.http_outcome(200, json={"ok": True})
