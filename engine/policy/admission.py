"""Admission: may this account start a session now?

Checked in this order, the first breach wins:

1. balance <= 0 -> ``INSUFFICIENT_CREDITS`` (a zero or negative balance blocks);
2. balance below ``rules.min_balance_micro`` (60 credits) -> ``INSUFFICIENT_CREDITS``;
3. active sessions >= ``plan.concurrent_streams`` -> ``CONCURRENT_LIMIT``;
4. usage in the current calendar UTC hour >= ``plan.hourly_s`` -> ``HOURLY_LIMIT``;
5. ... UTC day >= ``plan.daily_s`` -> ``DAILY_LIMIT``;
6. ... UTC month >= ``plan.monthly_s`` -> ``MONTHLY_LIMIT``.

A refusal creates no session and charges nothing. The snapshot must be read
atomically with the session's creation (the store's admission transaction),
and excludes the session being admitted.
"""

from __future__ import annotations

from engine.policy.config import EngineConfig
from engine.policy.money import format_credits
from engine.policy.types import AccountSnapshot, Code, Model, Plan, Refusal

__all__ = ["check_admission", "format_duration"]


def format_duration(seconds: int | float) -> str:
    """``600 -> "10 min"``, ``7200 -> "2 h"``, ``5400 -> "90 min"``, ``45 -> "45 s"``."""
    s = int(seconds)
    if s % 3600 == 0 and s >= 3600:
        return f"{s // 3600} h"
    if s % 60 == 0 and s >= 60:
        return f"{s // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


def _usage(ms: int) -> str:
    return format_duration(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f} s"


def check_admission(config: EngineConfig, plan: Plan, model: Model, snap: AccountSnapshot) -> Refusal | None:
    """``None`` if a session may start, else the first :class:`Refusal` (see module doc)."""
    del model  # every model needs the same minimum balance today
    bal = snap.balance_micro
    if bal <= 0:
        return Refusal(
            code=Code.INSUFFICIENT_CREDITS,
            message=f"balance {format_credits(bal)} credits: a zero or negative balance blocks new "
            "sessions; add credits and reconnect",
        )
    need = config.rules.min_balance_micro
    if bal < need:
        return Refusal(
            code=Code.INSUFFICIENT_CREDITS,
            message=f"balance {format_credits(bal)} credits is below the {format_credits(need)} "
            "credits needed to start a session; add credits and reconnect",
        )
    limit = plan.concurrent_streams
    if limit is not None and snap.active_sessions >= limit:
        return Refusal(
            code=Code.CONCURRENT_LIMIT,
            message=f"{snap.active_sessions} of {limit} concurrent streams of plan {plan.name!r} "
            "are active; close another stream first",
        )
    for code, window, used_ms, limit_s in (
        (Code.HOURLY_LIMIT, "this hour (UTC)", snap.usage.hour_ms, plan.hourly_s),
        (Code.DAILY_LIMIT, "today (UTC)", snap.usage.day_ms, plan.daily_s),
        (Code.MONTHLY_LIMIT, "this month (UTC)", snap.usage.month_ms, plan.monthly_s),
    ):
        if limit_s is not None and used_ms >= limit_s * 1000:
            return Refusal(
                code=code,
                message=f"usage {_usage(used_ms)} {window} has reached the {format_duration(limit_s)} "
                f"limit of plan {plan.name!r}; wait for the next window or upgrade",
            )
    return None
