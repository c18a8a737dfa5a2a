"""Calendar UTC usage windows (hour, day, month).

Usage limits are counted in *calendar* UTC windows, not rolling ones: the
current hour is ``[HH:00, HH+1:00)``, the current day ``[00:00, 24:00)`` and the
current month ``[1st 00:00, next 1st 00:00)``, all in UTC. See the module
docstring of :mod:`engine.store.sqlite` for why.

Pure functions, no I/O: the policy and the server may use them too (e.g. for an
``X-RateLimit-Reset`` header, which is :attr:`Windows.hour_end` and friends).
"""

from __future__ import annotations

import datetime as _dt
from typing import NamedTuple

HOUR_S = 3600
DAY_S = 86400


class Windows(NamedTuple):
    """The calendar UTC windows containing one instant (unix seconds, ends exclusive)."""

    hour_start: int
    hour_end: int
    day_start: int
    day_end: int
    month_start: int
    month_end: int


def hour_start(now_utc: float) -> int:
    """The unix second the calendar UTC hour containing ``now_utc`` starts at."""
    return int(now_utc // HOUR_S) * HOUR_S


def day_start(now_utc: float) -> int:
    return int(now_utc // DAY_S) * DAY_S


def _month_bounds(now_utc: float) -> tuple[int, int]:
    t = _dt.datetime.fromtimestamp(day_start(now_utc), tz=_dt.UTC)
    start = _dt.datetime(t.year, t.month, 1, tzinfo=_dt.UTC)
    end = _dt.datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=_dt.UTC)
    return int(start.timestamp()), int(end.timestamp())


def calendar_windows(now_utc: float) -> Windows:
    h = hour_start(now_utc)
    d = day_start(now_utc)
    m0, m1 = _month_bounds(now_utc)
    return Windows(h, h + HOUR_S, d, d + DAY_S, m0, m1)
