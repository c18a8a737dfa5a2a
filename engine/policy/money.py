"""Money: integer micro-credits, exact parsing, display and pro-rated cost.

All money is kept as ``int`` micro-credits (1 credit = ``MICRO`` = 1_000_000
micro-credits). Floats never touch money: :func:`parse_credits` refuses them.

Billing is always computed from **cumulative** totals: a session's bill is
``cost_micro(total_units, ...)`` and each charge written to the ledger is
``cost(total now) - cost(total already billed)``. Rounding therefore happens
once, on the total, and never drifts however the audio is chunked. The cost
rounds **down** (floor), so rounding can only ever favour the client: nobody
is overcharged by even one micro-credit (a micro-credit is far below anything
shown to a client).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from engine.policy.types import MICRO

__all__ = [
    "MICRO",
    "cost_micro",
    "credits_decimal",
    "format_credits",
    "max_units_within",
    "parse_credits",
]

_MICRO_DEC = Decimal(MICRO)


def parse_credits(x: str | int | Decimal) -> int:
    """Credits (``"2.5"``, ``60``, ``Decimal("0.000001")``) -> micro-credits, exactly.

    Raises ``ValueError`` for floats (inexact by nature), booleans, non-finite
    or malformed numbers, and amounts finer than one micro-credit.
    Negative amounts are allowed (a balance can be negative).
    """
    if isinstance(x, bool):
        raise ValueError(f"credits must be a decimal string or an integer, not {x!r}")
    if isinstance(x, int):
        return x * MICRO
    if isinstance(x, float):
        raise ValueError(
            f"credits must be a decimal string or an integer, not the float {x!r} "
            f'(write it as a string, e.g. "{x}")'
        )
    if isinstance(x, str):
        text = x.strip().replace("_", "")
        try:
            d = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"not a decimal number of credits: {x!r}") from None
    elif isinstance(x, Decimal):
        d = x
    else:
        raise ValueError(f"credits must be a decimal string or an integer, not {type(x).__name__}")
    if not d.is_finite():
        raise ValueError(f"credits must be finite: {x!r}")
    micro = d * _MICRO_DEC
    if micro != micro.to_integral_value():
        raise ValueError(f"{x!r} credits is finer than one micro-credit (6 decimal places)")
    return int(micro)


def credits_decimal(micro: int) -> Decimal:
    """Micro-credits -> an exact ``Decimal`` number of credits (e.g. for JSON)."""
    return Decimal(format_credits(micro))


def format_credits(micro: int) -> str:
    """Micro-credits -> a plain decimal string of credits.

    Exact, never in exponent notation, with trailing zeros trimmed and no
    decimal point for whole amounts: ``59_250_000 -> "59.25"``,
    ``60_000_000 -> "60"``, ``1 -> "0.000001"``, ``-2_500_000 -> "-2.5"``.
    The result parses back with :func:`parse_credits`.
    """
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def cost_micro(units: int, units_per_second: int, rate_micro_per_s: int) -> int:
    """Cost of ``units`` (samples, or ms with ``units_per_second=1000``), rounded down.

    ``floor(units * rate_micro_per_s / units_per_second)``, exact in integers.
    Always apply it to cumulative totals (see the module docstring).
    """
    return units * rate_micro_per_s // units_per_second


def max_units_within(budget_micro: int, units_per_second: int, rate_micro_per_s: int) -> int:
    """The largest ``units`` whose :func:`cost_micro` does not exceed ``budget_micro``.

    ``units + 1`` is the first amount that would cost more than the budget.
    Returns -1 for a negative budget. ``rate_micro_per_s`` must be positive.
    """
    if budget_micro < 0:
        return -1
    # floor(u*r/ups) <= B  <=>  u*r < (B+1)*ups  <=>  u <= ((B+1)*ups - 1) // r
    return ((budget_micro + 1) * units_per_second - 1) // rate_micro_per_s
