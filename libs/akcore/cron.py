"""Cron schedules: 5 fields (minute hour day month weekday), or 6 with seconds first, or
``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly``/``@every <n>s|m|h``. Times are UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import shown

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAMES = {
    "month": {
        m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())
    },
    "weekday": {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}
_EVERY = re.compile(r"^@every\s+(\d+)(s|m|h)$")


class CronError(ValueError):
    """The schedule text is not a valid cron expression."""


def _field(text: str, lo: int, hi: int, names: dict[str, int] | None = None) -> frozenset[int]:
    out: set[int] = set()
    for part in text.lower().split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s.isdigit() and int(step_s) > 0 else None
        if step_s and step is None:
            raise CronError(f"bad step in {shown(part)}")
        if rng == "*":
            a, b = lo, hi
        else:
            ends = [names.get(x, x) if names else x for x in rng.split("-", 1)]
            try:
                nums = [int(x) for x in ends]
            except ValueError:
                raise CronError(f"{shown(part)} is not a number, range or name") from None
            a, b = nums[0], nums[-1] if len(nums) == 2 else (hi if step else nums[0])
        if not lo <= a <= b <= hi:
            raise CronError(f"{shown(part)} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step or 1))
    return frozenset(out)


@dataclass(frozen=True)
class Schedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool
    every: timedelta | None = None

    def _day_ok(self, d: datetime) -> bool:
        dom, dow = d.day in self.days, (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow  # both restricted: either matches, as in classic cron

    def next_after(self, t: datetime) -> datetime:
        """The first firing time strictly after ``t``."""
        t = t.astimezone(UTC).replace(microsecond=0)
        if self.every is not None:
            period = int(self.every.total_seconds())
            epoch = int(t.timestamp())
            return datetime.fromtimestamp(epoch - epoch % period + period, UTC)
        day = t.replace(hour=0, minute=0, second=0)
        for _ in range(366 * 8):
            if day.month in self.months and self._day_ok(day):
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        for s in sorted(self.seconds):
                            cand = day.replace(hour=h, minute=m, second=s)
                            if cand > t:
                                return cand
            day += timedelta(days=1)
        raise CronError("the schedule never fires")


def parse(text: str) -> Schedule:
    text = " ".join(text.split())
    every = _EVERY.match(text)
    if every:
        n = int(every.group(1)) * {"s": 1, "m": 60, "h": 3600}[every.group(2)]
        if n <= 0:
            raise CronError("@every needs a positive period")
        return Schedule(
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset(),
            True,
            True,
            timedelta(seconds=n),
        )
    text = _MACROS.get(text, text)
    fields = text.split(" ")
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise CronError(f"{shown(text)}: expected 5 fields (or 6 with seconds first)")
    sec, minute, hour, dom, mon, dow = fields
    weekdays = _field(dow.replace("7", "0") if dow != "*" else dow, 0, 6, _NAMES["weekday"])
    return Schedule(
        seconds=_field(sec, 0, 59),
        minutes=_field(minute, 0, 59),
        hours=_field(hour, 0, 23),
        days=_field(dom, 1, 31),
        months=_field(mon, 1, 12, _NAMES["month"]),
        weekdays=weekdays,
        any_day=dom == "*",
        any_weekday=dow == "*",
    )
