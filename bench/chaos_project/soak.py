"""The chaos soak's handler (bench/chaos.py): three activities, each leaving one line in a
side-effect log as it starts, with durable sleeps between them when the request asks."""

import os
import time

import autokitteh

ACTIVITIES = ("step_one", "step_two", "step_three")


def _effect(session_id, name, work):
    """Appends 'session activity start-time pid' to the session's file in $CHAOS_EFFECTS
    (one short write to a file opened for appending: lines never interleave), then works
    for ``work`` seconds, so that some faults land while an activity runs."""
    line = f"{session_id} {name} {time.time():.6f} {os.getpid()}\n"
    with open(os.path.join(os.environ["CHAOS_EFFECTS"], session_id), "a") as f:
        f.write(line)
    time.sleep(work)
    return name


@autokitteh.activity
def step_one(session_id, work):
    return _effect(session_id, "step_one", work)


@autokitteh.activity
def step_two(session_id, work):
    return _effect(session_id, "step_two", work)


@autokitteh.activity
def step_three(session_id, work):
    return _effect(session_id, "step_three", work)


def soak(event):
    """``sleep``: seconds of each of the two durable sleeps (0: none); ``work``: seconds
    each activity takes."""
    body = event.data.body.json
    sid, sleep, work = event.session_id, float(body["sleep"]), float(body["work"])
    step_one(sid, work)
    if sleep:
        time.sleep(sleep)  # a durable sleep: its deadline is journaled
    step_two(sid, work)
    if sleep:
        time.sleep(sleep)
    step_three(sid, work)
    return "done"
