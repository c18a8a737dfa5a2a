"""Calendar UTC usage windows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.policy.windows import month_end, next_boundaries, next_boundary, window_starts


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("utc", "hour", "day", "month"),
    [
        (ts(2026, 3, 10, 12, 34, 56), ts(2026, 3, 10, 12), ts(2026, 3, 10), ts(2026, 3, 1)),
        (ts(2026, 3, 10, 12), ts(2026, 3, 10, 12), ts(2026, 3, 10), ts(2026, 3, 1)),
        (ts(2026, 3, 10, 12) - 0.001, ts(2026, 3, 10, 11), ts(2026, 3, 10), ts(2026, 3, 1)),
        (ts(2026, 1, 1) - 1, ts(2025, 12, 31, 23), ts(2025, 12, 31), ts(2025, 12, 1)),
        (ts(2026, 1, 1), ts(2026, 1, 1), ts(2026, 1, 1), ts(2026, 1, 1)),
        (ts(2024, 2, 29, 23, 59, 59), ts(2024, 2, 29, 23), ts(2024, 2, 29), ts(2024, 2, 1)),
        (0, 0, 0, 0),
    ],
)
def test_window_starts(utc: float, hour: int, day: int, month: int) -> None:
    assert tuple(window_starts(utc)) == (hour, day, month)


@pytest.mark.parametrize(
    ("utc", "nxt"),
    [
        (ts(2026, 3, 10, 12, 59, 59), ts(2026, 3, 10, 13)),
        (ts(2026, 3, 10, 12, 59, 59) + 0.999, ts(2026, 3, 10, 13)),
        (ts(2026, 3, 10, 13), ts(2026, 3, 10, 14)),  # strictly after
        (ts(2026, 12, 31, 23, 30), ts(2027, 1, 1)),
    ],
)
def test_next_boundary(utc: float, nxt: int) -> None:
    assert next_boundary(utc) == nxt


@pytest.mark.parametrize(
    ("utc", "end"),
    [
        (ts(2026, 2, 14, 5), ts(2026, 3, 1)),
        (ts(2024, 2, 14, 5), ts(2024, 3, 1)),
        (ts(2026, 12, 31, 23, 59, 59), ts(2027, 1, 1)),
        (ts(2026, 4, 1), ts(2026, 5, 1)),
    ],
)
def test_month_end(utc: int, end: int) -> None:
    assert month_end(utc) == end
    assert next_boundaries(utc).month == end


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_windows_contain_their_time(utc: float) -> None:
    s = window_starts(utc)
    n = next_boundaries(utc)
    assert s.month <= s.day <= s.hour <= utc < n.hour <= n.day <= n.month
    assert n.hour - s.hour == 3600 and n.day - s.day == 86400
    assert 28 * 86400 <= n.month - s.month <= 31 * 86400
    assert next_boundary(utc) == n.hour
    # the next window starts exactly where this one ends
    assert window_starts(n.hour).hour == n.hour
    assert window_starts(n.day).day == n.day
    assert window_starts(n.month).month == n.month
