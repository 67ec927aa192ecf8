"""A project's webhook bytes a second at one ingress (``WebhookBytes``)."""

from __future__ import annotations

import pytest
from ak_ingress.throttle import WebhookBytes

MiB = 1024 * 1024


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [50.0]
    monkeypatch.setattr(WebhookBytes, "clock", staticmethod(lambda: clock[0]))
    return clock


def test_a_burst_then_the_rate(now: list[float]) -> None:
    budget = WebhookBytes(MiB)  # 4 MiB at once, then 1 MiB a second
    cost = MiB - WebhookBytes.REQUEST_COST  # 1 MiB with its request
    assert [budget.take("prj_a", cost) for _ in range(4)] == [0.0] * 4
    assert budget.take("prj_a", cost) == pytest.approx(1.0)  # nothing counted
    assert budget.take("prj_b", cost) == 0.0  # its own
    now[0] += 0.5
    assert budget.take("prj_a", cost) == pytest.approx(0.5)
    now[0] += 0.5
    assert budget.take("prj_a", cost) == 0.0
    now[0] += 3600
    assert [budget.take("prj_a", cost) for _ in range(5)] == [0.0] * 4 + [pytest.approx(1.0)]


def test_small_requests_count_too_and_none_is_too_big_to_ever_come(now: list[float]) -> None:
    budget = WebhookBytes(MiB)
    assert sum(budget.take("prj_a", 0) == 0.0 for _ in range(5000)) == 4096  # 1 KiB each
    huge = WebhookBytes(MiB // 4)  # a burst of 1 MiB: a body over it still comes when full
    assert huge.take("prj_a", 2 * MiB) == 0.0 and huge.take("prj_a", 2 * MiB) > 0


def test_off() -> None:
    budget = WebhookBytes(0)
    assert all(budget.take("prj_a", 512 * 1024) == 0.0 for _ in range(1000))


def test_what_is_owed_after_the_fact_holds_the_next_requests(now: list[float]) -> None:
    budget = WebhookBytes(MiB)  # 4 MiB at once
    assert budget.take("prj_a", 0) == 0.0
    budget.owe("prj_a", 6 * MiB)  # (a JSON body's maps, counted once it was parsed)
    assert budget.take("prj_a", 0) == pytest.approx(2.0 + 2 / 1024)  # 2 MiB 1 KiB below zero
    now[0] += 3.0
    assert budget.take("prj_a", 0) == 0.0
    WebhookBytes(0).owe("prj_a", MiB)  # (no limit: nothing owed)
