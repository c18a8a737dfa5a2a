"""Money: exact parsing and display of credits, pro-rated cost in integers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.policy.money import (
    MICRO,
    cost_micro,
    credits_decimal,
    format_credits,
    max_units_within,
    parse_credits,
)


@pytest.mark.parametrize(
    ("given_", "micro"),
    [
        ("2.5", 2_500_000),
        ("60", 60 * MICRO),
        (" 60 ", 60 * MICRO),
        ("1_000", 1000 * MICRO),
        (60, 60 * MICRO),
        (0, 0),
        ("0.000001", 1),
        ("1e-6", 1),
        ("-3.25", -3_250_000),
        (Decimal("0.000001"), 1),
        (Decimal("59.250000"), 59_250_000),
        ("12345678901234567890.123456", 12345678901234567890123456),
    ],
)
def test_parse_credits_exact(given_: str | int | Decimal, micro: int) -> None:
    assert parse_credits(given_) == micro


@pytest.mark.parametrize(
    "bad",
    [
        2.5,
        60.0,
        True,
        False,
        "abc",
        "",
        "NaN",
        "Infinity",
        "-inf",
        "0.0000001",
        Decimal("1e-7"),
        "1.2.3",
        None,
        [1],
    ],
)
def test_parse_credits_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_credits(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (59_250_000, "59.25"),
        (60 * MICRO, "60"),
        (0, "0"),
        (1, "0.000001"),
        (10, "0.00001"),
        (2_500_000, "2.5"),
        (-2_500_000, "-2.5"),
        (-1, "-0.000001"),
        (123_456_789, "123.456789"),
        (10**20, "100000000000000"),
    ],
)
def test_format_credits(micro: int, text: str) -> None:
    assert format_credits(micro) == text
    assert credits_decimal(micro) == Decimal(text)
    assert "E" not in str(credits_decimal(micro))


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_format_parse_round_trip(micro: int) -> None:
    assert parse_credits(format_credits(micro)) == micro


@pytest.mark.parametrize(
    ("units", "ups", "rate", "cost"),
    [
        # 16 kHz at 2 credits/s: 125 micro-credits a sample, exactly
        (1, 16000, 2 * MICRO, 125),
        (3, 16000, 2 * MICRO, 375),
        (16001, 16000, 2 * MICRO, 2_000_125),
        # 16 kHz at 3 credits/s: 187.5 a sample, floored on the total
        (1, 16000, 3 * MICRO, 187),
        (3, 16000, 3 * MICRO, 562),
        (16001, 16000, 3 * MICRO, 3_000_187),
        (2, 16000, 3 * MICRO, 375),
        # 8 kHz: 250 / 375 a sample
        (1, 8000, 2 * MICRO, 250),
        (7, 8000, 3 * MICRO, 2625),
        (7999, 8000, 3 * MICRO, 2_999_625),
        # 44.1 kHz at 2.5 credits/s: 56.689... a sample
        (1, 44100, 2_500_000, 56),
        (44100, 44100, 2_500_000, 2_500_000),
        (44099, 44100, 2_500_000, 2_499_943),
        # milliseconds (wall basis)
        (1, 1000, 2 * MICRO, 2000),
        (1234, 1000, 2 * MICRO, 2_468_000),
        (1, 1000, 1, 0),
        (0, 16000, 3 * MICRO, 0),
    ],
)
def test_cost_micro(units: int, ups: int, rate: int, cost: int) -> None:
    assert cost_micro(units, ups, rate) == cost


@given(
    chunks=st.lists(st.integers(min_value=0, max_value=50_000), max_size=60),
    ups=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 1000]),
    rate=st.integers(min_value=1, max_value=10 * MICRO),
)
def test_cumulative_billing_never_drifts(chunks: list[int], ups: int, rate: int) -> None:
    """Charging cost(total) - cost(billed so far) sums to cost(total) for any chunking,
    while rounding each chunk on its own can only lose (never overcharge)."""
    total = billed = naive = 0
    for n in chunks:
        total += n
        charge = cost_micro(total, ups, rate) - billed
        assert charge >= 0
        billed += charge
        naive += cost_micro(n, ups, rate)
    assert billed == cost_micro(total, ups, rate)
    assert naive <= billed
    assert billed * ups <= total * rate < (billed + 1) * ups  # floor: never overcharged


@given(
    budget=st.integers(min_value=0, max_value=10**12),
    ups=st.sampled_from([8000, 16000, 44100, 48000, 1000]),
    rate=st.integers(min_value=1, max_value=10 * MICRO),
)
def test_max_units_within(budget: int, ups: int, rate: int) -> None:
    u = max_units_within(budget, ups, rate)
    assert cost_micro(u, ups, rate) <= budget < cost_micro(u + 1, ups, rate)


def test_max_units_within_negative_budget() -> None:
    assert max_units_within(-1, 16000, 2 * MICRO) == -1
