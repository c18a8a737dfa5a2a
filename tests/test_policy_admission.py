"""Admission: each breach gives its code, checked in order, at the exact boundary."""

from __future__ import annotations

import pytest

from engine.policy.admission import check_admission, format_duration
from engine.policy.config import load_config
from engine.policy.types import MICRO, AccountSnapshot, Code, Usage

CFG = load_config(None)
OK_BALANCE = 1000 * MICRO


def snap(
    balance: int = OK_BALANCE, active: int = 0, hour: int = 0, day: int = 0, month: int = 0
) -> AccountSnapshot:
    return AccountSnapshot(
        account_id="acct",
        plan="free",
        balance_micro=balance,
        active_sessions=active,
        usage=Usage(hour_ms=hour, day_ms=day, month_ms=month),
    )


def admit(plan: str, s: AccountSnapshot) -> Code | None:
    r = check_admission(CFG, CFG.plan(plan), CFG.model(), s)
    return None if r is None else r.code


@pytest.mark.parametrize(
    ("plan", "s", "code"),
    [
        # balance: <= 0 blocks, below the 60-credit minimum blocks, exactly 60 is enough
        ("free", snap(balance=-1), Code.INSUFFICIENT_CREDITS),
        ("free", snap(balance=0), Code.INSUFFICIENT_CREDITS),
        ("free", snap(balance=1), Code.INSUFFICIENT_CREDITS),
        ("free", snap(balance=60 * MICRO - 1), Code.INSUFFICIENT_CREDITS),
        ("free", snap(balance=60 * MICRO), None),
        ("enterprise", snap(balance=60 * MICRO - 1), Code.INSUFFICIENT_CREDITS),
        # concurrent streams
        ("free", snap(active=0), None),
        ("free", snap(active=1), Code.CONCURRENT_LIMIT),
        ("basic", snap(active=1), None),
        ("basic", snap(active=2), Code.CONCURRENT_LIMIT),
        ("pro", snap(active=4), None),
        ("pro", snap(active=5), Code.CONCURRENT_LIMIT),
        ("enterprise", snap(active=19), None),
        ("enterprise", snap(active=20), Code.CONCURRENT_LIMIT),
        # hourly (free 10 min, basic 30 min, pro 60 min): one ms before and at the limit
        ("free", snap(hour=600_000 - 1), None),
        ("free", snap(hour=600_000), Code.HOURLY_LIMIT),
        ("basic", snap(hour=1_800_000 - 1), None),
        ("basic", snap(hour=1_800_000), Code.HOURLY_LIMIT),
        ("pro", snap(hour=3_600_000 - 1), None),
        ("pro", snap(hour=3_600_000), Code.HOURLY_LIMIT),
        # daily (free 30 min, basic 2 h, pro 8 h)
        ("free", snap(day=1_800_000 - 1), None),
        ("free", snap(day=1_800_000), Code.DAILY_LIMIT),
        ("basic", snap(day=7_200_000), Code.DAILY_LIMIT),
        ("pro", snap(day=28_800_000 - 1), None),
        ("pro", snap(day=28_800_000), Code.DAILY_LIMIT),
        # monthly (free 4 h, basic 50 h, pro 200 h)
        ("free", snap(month=14_400_000 - 1), None),
        ("free", snap(month=14_400_000), Code.MONTHLY_LIMIT),
        ("basic", snap(month=180_000_000), Code.MONTHLY_LIMIT),
        ("pro", snap(month=720_000_000 - 1), None),
        ("pro", snap(month=720_000_000), Code.MONTHLY_LIMIT),
        # enterprise: no usage limits at all
        ("enterprise", snap(hour=10**12, day=10**12, month=10**12), None),
        # order: balance, then concurrency, then hour, day, month
        ("free", snap(balance=0, active=5, hour=10**9, day=10**9, month=10**9), Code.INSUFFICIENT_CREDITS),
        ("free", snap(active=5, hour=10**9, day=10**9, month=10**9), Code.CONCURRENT_LIMIT),
        ("free", snap(hour=10**9, day=10**9, month=10**9), Code.HOURLY_LIMIT),
        ("free", snap(day=10**9, month=10**9), Code.DAILY_LIMIT),
        ("free", snap(month=10**9), Code.MONTHLY_LIMIT),
    ],
)
def test_admission_table(plan: str, s: AccountSnapshot, code: Code | None) -> None:
    assert admit(plan, s) == code


def test_messages_give_the_numbers() -> None:
    m = CFG.model()
    r = check_admission(CFG, CFG.plan("free"), m, snap(balance=12_500_000))
    assert r is not None
    assert r.message.startswith("balance 12.5 credits is below the 60 credits needed to start a session")
    r = check_admission(CFG, CFG.plan("free"), m, snap(balance=-2_000_000))
    assert r is not None and "-2 credits" in r.message and "negative" in r.message
    r = check_admission(CFG, CFG.plan("basic"), m, snap(active=2))
    assert r is not None and "2 of 2 concurrent streams" in r.message and "'basic'" in r.message
    r = check_admission(CFG, CFG.plan("free"), m, snap(hour=600_000))
    assert r is not None and "10 min" in r.message and "hour" in r.message
    r = check_admission(CFG, CFG.plan("basic"), m, snap(day=7_300_500))
    assert r is not None and "7300.500 s" in r.message and "2 h limit" in r.message


def test_unlimited_concurrency() -> None:
    cfg = load_config(None)
    from msgspec.structs import replace

    plan = replace(cfg.plan("enterprise"), concurrent_streams=None)
    assert check_admission(cfg, plan, cfg.model(), snap(active=10**6)) is None


@pytest.mark.parametrize(
    ("s", "text"), [(600, "10 min"), (7200, "2 h"), (5400, "90 min"), (45, "45 s"), (90, "1 min 30 s")]
)
def test_format_duration(s: int, text: str) -> None:
    assert format_duration(s) == text
