"""Calendar UTC usage windows: the current hour, day and month.

Usage limits (``HOURLY_LIMIT``, ``DAILY_LIMIT``, ``MONTHLY_LIMIT``) count an
account's billed-basis usage inside the *calendar* UTC hour, day and month
(not rolling windows): every process and the store agree on a window from a
timestamp alone, a window is one key in the store, and "wait until the top of
the hour" is a precise answer for the client. Windows start at whole unix
seconds; every day and month boundary is also an hour boundary.

Pure arithmetic on unix seconds (``int`` or ``float``); nothing here reads a
clock.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import NamedTuple

__all__ = [
    "DAY_S",
    "HOUR_S",
    "WindowStarts",
    "month_end",
    "next_boundaries",
    "next_boundary",
    "window_starts",
]

HOUR_S = 3600
DAY_S = 86400
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


class WindowStarts(NamedTuple):
    """Unix seconds at which the current UTC hour, day and month began."""

    hour: int
    day: int
    month: int


def _month_start_for_day(day_start: int) -> int:
    d = _dt.date.fromordinal(_EPOCH_ORDINAL + day_start // DAY_S)
    return (d.replace(day=1).toordinal() - _EPOCH_ORDINAL) * DAY_S


def month_end(utc: float) -> int:
    """Unix seconds at which the UTC month containing ``utc`` ends."""
    d = _dt.date.fromordinal(_EPOCH_ORDINAL + math.floor(utc) // DAY_S)
    first_next = _dt.date(d.year + d.month // 12, d.month % 12 + 1, 1)
    return (first_next.toordinal() - _EPOCH_ORDINAL) * DAY_S


def window_starts(utc: float) -> WindowStarts:
    """The starts of the calendar UTC hour, day and month containing ``utc``."""
    t = math.floor(utc)
    day = t - t % DAY_S
    return WindowStarts(hour=t - t % HOUR_S, day=day, month=_month_start_for_day(day))


def next_boundaries(utc: float) -> WindowStarts:
    """When the current hour, day and month end (the next windows' starts)."""
    t = math.floor(utc)
    return WindowStarts(
        hour=t - t % HOUR_S + HOUR_S,
        day=t - t % DAY_S + DAY_S,
        month=month_end(utc),
    )


def next_boundary(utc: float) -> int:
    """The next window boundary strictly after ``utc`` (the next top of a UTC hour).

    Any window (hour, day or month) can only roll over there.
    """
    t = math.floor(utc)
    return t - t % HOUR_S + HOUR_S
