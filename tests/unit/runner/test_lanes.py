"""How a runner hands its free places out among the lanes of AK_JOBS (``lanes.plan``)."""

from __future__ import annotations

import asyncio
import random

from ak_runner.lanes import Ask, Lane, Lanes, plan
from akcore import bus, subjects
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

N = subjects.JOB_LANES + 1  # the lanes and the consumer of jobs without a lane

QUIET = Lane(asking=False, held=0, probing=False, queued=0, live=0)
PROBING = Lane(asking=True, held=1, probing=True, queued=0, live=0)


def _flood(live: int, queued: int = 10_000) -> Lane:
    return Lane(asking=False, held=0, probing=False, queued=queued, live=live)


def _lanes(**which: Lane) -> list[Lane]:
    """Every lane probing (a request for one job open), but those named l<n>."""
    return [which.get(f"l{i}", PROBING) for i in range(N)]


def _jobs(asks: list[Ask]) -> dict[int, int]:
    return {a.lane: a.jobs for a in asks}


def test_a_runner_starting_probes_every_lane_for_one_job() -> None:
    asks, _ = plan([QUIET] * N, 32, 0, 32, N)
    assert asks == [Ask(i, 1, True) for i in range(N)]


def test_one_busy_project_gets_every_free_place() -> None:
    """The other lanes' probes are not taken from the free places: a runner serving one
    project runs as many of its sessions as it has places."""
    asks, _ = plan(_lanes(l3=_flood(live=1)), 31, 0, 32, N)
    assert asks == [Ask(3, 31, False)]


def test_a_lane_taking_jobs_as_they_come_asks_for_the_places_left_in_one_request() -> None:
    """A lane running sessions here with nothing queued (jobs come one at a time, each
    taken as it comes) is asked for the places left, not probed job by job: a request per
    job cost the runner a subscription per session."""
    steady = Lane(asking=False, held=0, probing=False, queued=0, live=12)
    asks, _ = plan(_lanes(l2=steady), 20, 0, 32, N)
    assert asks == [Ask(2, 20, False, True)]
    # Lanes with a backlog come first; what is left is the steady lane's.
    asks, _ = plan(_lanes(l2=steady, l6=_flood(live=0, queued=5)), 20, 0, 32, N)
    assert _jobs(asks) == {6: 5, 2: 15}
    # No place left: a probe, as for any quiet lane.
    asks, _ = plan(_lanes(l2=steady), 0, 0, 32, N)
    assert asks == [Ask(2, 1, True)]


def test_a_lane_is_asked_for_no_more_than_it_has_queued() -> None:
    """(A request for more would hold the other places until it expires.)"""
    asks, _ = plan(_lanes(l3=_flood(live=1, queued=3), l5=_flood(live=0)), 20, 0, 32, N)
    assert _jobs(asks) == {3: 3, 5: 17}


def test_places_go_to_the_lane_with_the_fewest_sessions_here() -> None:
    """Two floods, one of long sessions holding 30 places, one that starts late: the late
    one gets every place that frees until it holds as many (sharing by places held, not by
    starts: sessions of any length get half each)."""
    asks, _ = plan(_lanes(l1=_flood(live=30), l5=_flood(live=1)), 1, 0, 32, N)
    assert asks == [Ask(5, 1, False)]
    asks, _ = plan(_lanes(l1=_flood(live=30), l5=_flood(live=1)), 31, 0, 32, N)
    assert _jobs(asks) == {1: 1, 5: 30}


def test_equal_lanes_take_turns_one_place_at_a_time() -> None:
    lanes = _lanes(l1=_flood(live=4), l5=_flood(live=4))
    asks, start = plan(lanes, 1, 0, 32, N)
    assert asks == [Ask(1, 1, False)]
    asks, start = plan(lanes, 1, start, 32, N)
    assert asks == [Ask(5, 1, False)]
    asks, start = plan(lanes, 1, start, 32, N)
    assert asks == [Ask(1, 1, False)]
    assert _jobs(plan(lanes, 10, 0, 32, N)[0]) == {1: 5, 5: 5}


def test_places_promised_to_an_open_request_are_not_handed_out_again() -> None:
    open_request = Lane(asking=True, held=8, probing=False, queued=100, live=2)
    asks, _ = plan(_lanes(l0=open_request, l2=_flood(live=2)), 10, 0, 32, N)
    assert asks == [Ask(2, 2, False)]
    asks, _ = plan(_lanes(l0=open_request, l2=_flood(live=2)), 8, 0, 32, N)
    assert asks == []


def test_a_full_runner_asks_a_flood_for_nothing_but_keeps_quiet_lanes_probed() -> None:
    """No place free: the flood's lane waits for one; a quiet lane's next job starts at once
    (also the next one after it: its lane had no other job queued), and so does the first
    job of a lane with a backlog but no session here."""
    asks, _ = plan(_lanes(l0=_flood(live=32), l4=QUIET), 0, 0, 32, N)
    assert asks == [Ask(4, 1, True)]
    after_one = Lane(asking=False, held=0, probing=False, queued=0, live=1)
    asks, _ = plan(_lanes(l0=_flood(live=32), l4=after_one), -1, 0, 32, N)
    assert asks == [Ask(4, 1, True)]
    asks, _ = plan(_lanes(l0=_flood(live=32), l4=_flood(live=0)), 0, 0, 32, N)
    assert asks == [Ask(4, 1, True)]
    asks, _ = plan(_lanes(l0=_flood(live=32), l4=_flood(live=1)), -1, 0, 32, N)
    assert asks == []  # it has a session here: it waits for a place


def test_a_flood_taking_its_jobs_as_they_come_probes_no_further_than_its_share() -> None:
    """Jobs published one at a time each leave none queued behind them: such a lane is
    probed past the places only while it holds less than an even share of them."""
    as_they_come = Lane(asking=False, held=0, probing=False, queued=0, live=32)
    asks, _ = plan(_lanes(l0=as_they_come), 0, 0, 32, N)
    assert asks == []
    # Beside another lane's sessions, each gets a probe below half of the places.
    half = Lane(asking=False, held=0, probing=False, queued=0, live=15)
    other = Lane(asking=False, held=0, probing=False, queued=0, live=17)
    asks, _ = plan(_lanes(l0=half, l4=other), 0, 0, 32, N)
    assert asks == [Ask(0, 1, True)]


def test_a_lane_left_no_place_gets_a_probe_while_places_are_free() -> None:
    """Places left split among the lanes running sessions here with nothing queued: one
    that got none (fewer places than lanes) still gets a job as it comes."""
    steady = Lane(asking=False, held=0, probing=False, queued=0, live=1)
    asks, start = plan(_lanes(l2=steady, l6=steady), 1, 0, 4, N)
    assert asks == [Ask(2, 1, False, True), Ask(6, 1, True)]
    assert start == 3  # the next place left goes to lane 6 first
    asks, _ = plan(_lanes(l2=steady, l6=steady), 1, start, 4, N)
    assert asks == [Ask(6, 1, False, True), Ask(2, 1, True)]


def test_no_probe_when_waiting_sessions_hold_the_runners_workers() -> None:
    """``spare`` (the workers left beyond the places) bounds the probes."""
    asks, _ = plan([QUIET] * N, 0, 0, 32, 0)
    assert asks == []
    asks, _ = plan([QUIET] * N, 0, 0, 32, 2)
    assert len(asks) == 2


def test_at_most_as_many_jobs_as_lanes_run_beyond_the_places() -> None:
    # Eight probes open, one job beyond the places: the ninth lane gets no probe.
    asks, _ = plan(_lanes(l0=_flood(live=32), l4=QUIET), -2, 0, 32, N)
    assert asks == []
    asks, _ = plan([QUIET] * N, -3, 0, 32, N)
    assert len(asks) == N - 3


def test_random_states_never_plan_past_the_places_and_the_lanes() -> None:
    """Whatever the lanes' states, what runs now plus what every request may deliver stays
    within the free places plus one job per lane; a share never exceeds what is queued."""
    rng = random.Random(7)
    for _ in range(5_000):
        lanes = []
        for _ in range(N):
            asking = rng.random() < 0.4
            probing = asking and rng.random() < 0.5
            held = (1 if probing else rng.randint(1, 6)) if asking else 0
            queued, live = rng.choice([0, 0, 1, 5, 100]), rng.choice([0, 0, 1, 7])
            lanes.append(Lane(asking, held, probing, queued, live))
        free = rng.randint(-N, 40)
        before = -free + sum(lane.held for lane in lanes if lane.asking)
        spare = rng.randint(0, N)
        asks, start = plan(lanes, free, rng.randrange(N), 32, spare)
        assert 0 <= start < N
        assert len({a.lane for a in asks}) == len(asks)
        assert all(not lanes[a.lane].asking and a.jobs > 0 for a in asks)
        assert all(
            a.probe or a.jobs <= lanes[a.lane].queued or not lanes[a.lane].queued for a in asks
        )
        shares = sum(a.jobs for a in asks if not a.probe)
        probes = sum(a.jobs for a in asks if a.probe)
        promised = sum(lane.held for lane in lanes if lane.asking and not lane.probing)
        assert shares <= max(free - promised, 0)
        assert all(a.jobs == 1 for a in asks if a.probe)
        # A probe takes a free place not promised, or one of the spare beyond the places.
        room = max(free - promised - shares, 0)
        assert probes <= room + max(0, spare - (before + shares))


async def test_a_refused_pull_request_pauses_the_puller(nats_url: str) -> None:
    """A consumer that is not there answers each request at once: the puller waits out
    its pause before asking again, not in a loop."""
    nc = await bus.connect(nats_url, "t")
    try:
        refused = asyncio.Event()
        puller = await bus.Puller.of(nc, subjects.STREAM_JOBS, "missing", 5.0, arrived=refused)
        await puller.ask(1)
        assert puller._n == 1
        await asyncio.wait_for(refused.wait(), 5)  # the server's answer ended the request
        assert not puller.asking
        for _ in range(100):
            await puller.ask(1)
        assert puller._n == 1  # no request while paused
        pause = puller._paused_until - asyncio.get_running_loop().time()
        assert 0 < pause <= bus.Puller.PAUSE
    finally:
        await nc.close()


async def test_a_request_that_delivered_all_it_asked_for_is_over(nats_url: str) -> None:
    """A lane asked for one job and given it asks again at once (its request is not taken
    to be open until it expires): the next job of a quiet project starts at once too. Each
    delivered job tells how many wait behind it."""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
        await js.add_consumer("T", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT))
        arrived = asyncio.Event()
        puller = await bus.Puller.of(nc, "T", "c", 5.0, True, arrived)
        for n in range(3):
            await js.publish(f"t.{n}", b"")
        await puller.ask(1)
        await asyncio.wait_for(arrived.wait(), 5)
        (msg,) = puller.take_ready()
        assert not puller.asking and puller.held == 0
        assert puller.pending == 2
        await puller.ask(5)
        while puller.ready < 2:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        assert puller.asking and puller.held == 5  # 2 delivered, 3 more may come
        assert puller.pending == 0
        await puller.close()
    finally:
        await nc.close()


class _Puller:
    """What Lanes reads of a lane's puller, and what it was asked for."""

    def __init__(self, pending: int = 0) -> None:
        self.asking, self.held, self.pending, self.ready = False, 0, pending, 0
        self.asked: list[tuple[int, float | None]] = []

    async def ask(self, limit: int, expires: float | None = None) -> None:
        self.asked.append((limit, expires))


async def test_sessions_waiting_here_do_not_count_as_their_lanes_places() -> None:
    """A lane whose three sessions here sleep (durably: no place taken) gets the next
    place before a flood that runs two: by places held, it holds none."""
    pullers = [_Puller() for _ in range(N)]
    pullers[0].pending = pullers[3].pending = 100
    waiting = [0] * N
    lanes = Lanes(pullers, asyncio.Event(), 2, waiting)  # type: ignore[arg-type]
    lanes.live[0], lanes.live[3] = 2, 3
    waiting[3] = 3
    await lanes.ask(1, 100)
    assert pullers[3].asked == [(1, None)] and pullers[0].asked == []


def test_a_scarce_free_place_is_probed_for_by_each_quiet_lane_in_turn() -> None:
    """One place free, none beyond (waiting sessions hold the workers): the lanes whose
    probes expire take it in turn, so a lane whose job came while none was asked gets it
    within a round, not never."""
    start, served = 0, []
    for _ in range(N):
        asks, start = plan([QUIET] * N, 1, start, 2, 0)
        assert len(asks) == 1
        served.append(asks[0].lane)
    assert sorted(served) == list(range(N))
