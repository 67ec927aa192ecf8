"""How a runner hands its free places out among the lanes of AK_JOBS (``lanes.plan``)."""

from __future__ import annotations

from ak_runner.lanes import Lane, plan
from akcore import subjects

N = subjects.JOB_LANES + 1  # the lanes and the consumer of jobs without a lane

IDLE = Lane(asking=False, idle=True, held=0, probing=False)
PROBING = Lane(asking=True, idle=False, held=1, probing=True)
HAD_JOBS = Lane(asking=False, idle=False, held=0, probing=False)


def _lanes(**which: Lane) -> list[Lane]:
    """Every lane probing (a request for one job open), but those named l<n>."""
    return [which.get(f"l{i}", PROBING) for i in range(N)]


def test_a_runner_starting_probes_every_lane_for_one_job() -> None:
    asks, _ = plan([IDLE] * N, 32, 0)
    assert asks == [(i, 1) for i in range(N)]


def test_one_busy_project_gets_every_free_place() -> None:
    """The other lanes' probes are not taken from the free places: a runner serving one
    project runs as many of its sessions as it has places."""
    asks, start = plan(_lanes(l3=HAD_JOBS), 32, 0)
    assert asks == [(3, 32)]
    assert start == 4


def test_two_busy_projects_share_the_places_and_take_turns() -> None:
    lanes = _lanes(l1=HAD_JOBS, l5=HAD_JOBS)
    assert plan(lanes, 10, 0) == ([(1, 5), (5, 5)], 6)
    assert plan(lanes, 11, 0)[0] == [(1, 6), (5, 5)]
    # One place frees at a time: it goes to each in turn.
    asks, start = plan(lanes, 1, 0)
    assert asks == [(1, 1)]
    asks, start = plan(lanes, 1, start)
    assert asks == [(5, 1)]
    asks, start = plan(lanes, 1, start)
    assert asks == [(1, 1)]


def test_places_promised_to_an_open_request_are_not_handed_out_again() -> None:
    open_request = Lane(asking=True, idle=False, held=8, probing=False)
    asks, _ = plan(_lanes(l0=open_request, l2=HAD_JOBS), 10, 0)
    assert asks == [(2, 2)]
    asks, _ = plan(_lanes(l0=open_request, l2=HAD_JOBS), 8, 0)
    assert asks == []


def test_a_full_runner_asks_a_busy_lane_for_nothing_but_still_probes_quiet_ones() -> None:
    """No place free: the flood's lane waits; a quiet lane's next job may still start, one
    per lane at most beyond the places."""
    asks, _ = plan(_lanes(l0=HAD_JOBS, l4=IDLE), 0, 0)
    assert asks == [(4, 1)]
    # As many jobs run beyond the places as there are lanes: no more probes.
    asks, _ = plan(_lanes(l0=HAD_JOBS, l4=IDLE), -(N - 1), 0)
    assert asks == []
    everything_idle = [IDLE] * N
    asks, _ = plan(everything_idle, -3, 0)
    assert len(asks) == N - 3


def test_probes_count_what_they_hold() -> None:
    """A probe's delivered job not started yet counts among the jobs beyond the places."""
    delivered = Lane(asking=False, idle=False, held=1, probing=True)
    lanes = [delivered] * (N - 1) + [IDLE]
    asks, _ = plan(lanes, 0, 0)
    assert asks == [(N - 1, 1)]
    assert plan(lanes, -1, 0)[0] == []  # and one job more beyond: no probe
