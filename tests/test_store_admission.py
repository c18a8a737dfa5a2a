"""Store: the admission transaction and its snapshot (active sessions, calendar UTC usage)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio

from engine.policy.types import MICRO, AccountSnapshot, Code, Usage
from engine.store.base import Admitted, Refusal
from engine.store.errors import StoreError, UnknownAccount
from engine.store.sqlite import open_sqlite_store
from engine.store.testing import T0, allow, audit, cp, max_concurrent, query, start
from engine.store.windows import calendar_windows


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()


def test_calendar_windows() -> None:
    w = calendar_windows(utc(2024, 2, 29, 13, 59, 59) + 0.999)
    assert w.hour_start == utc(2024, 2, 29, 13) and w.hour_end == utc(2024, 2, 29, 14)
    assert w.day_start == utc(2024, 2, 29) and w.day_end == utc(2024, 3, 1)
    assert w.month_start == utc(2024, 2, 1) and w.month_end == utc(2024, 3, 1)
    w = calendar_windows(utc(2023, 12, 31, 23, 30))
    assert w.month_start == utc(2023, 12, 1) and w.month_end == utc(2024, 1, 1)
    w = calendar_windows(utc(2024, 1, 1))
    assert (w.hour_start, w.day_start, w.month_start) == (utc(2024, 1, 1),) * 3


@pytest.mark.trio
async def test_check_sees_snapshot_excluding_the_new_session(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "engine.db") as store:
        acct, _ = await store.create_account(plan="basic", credits_micro=100 * MICRO)
        a = acct.account_id
        seen: list[AccountSnapshot] = []

        def check(snap: AccountSnapshot) -> Refusal | None:
            seen.append(snap)
            return max_concurrent(2)(snap)

        r1 = await store.begin_session(start(a, "s1"), check)
        r2 = await store.begin_session(start(a, "s2"), check)
        r3 = await store.begin_session(start(a, "s3"), check)
        assert isinstance(r1, Admitted) and isinstance(r2, Admitted)
        assert isinstance(r3, Refusal) and r3.code is Code.CONCURRENT_LIMIT
        assert [s.active_sessions for s in seen] == [0, 1, 2]
        assert seen[0] == AccountSnapshot(
            account_id=a, plan="basic", balance_micro=100 * MICRO, active_sessions=0, usage=Usage()
        )
        assert r2.snapshot == seen[1]
        assert await store.get_session("s3") is None  # refused: nothing created
        snap = await store.snapshot(a, T0, exclude_session="s1")
        assert snap.active_sessions == 1
        assert (await store.snapshot(a, T0, None)).active_sessions == 2
        # another account's sessions do not count
        other, _ = await store.create_account(plan="basic")
        assert (await store.snapshot(other.account_id, T0, None)).active_sessions == 0


@pytest.mark.trio
async def test_refusals_and_errors(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "engine.db") as store:
        r = await store.begin_session(start("acct_nope", "s1"), allow)
        assert isinstance(r, Refusal) and r.code is Code.UNAUTHORIZED
        with pytest.raises(UnknownAccount):
            await store.snapshot("acct_nope", T0, None)
        acct, _ = await store.create_account(plan="free")
        a = acct.account_id
        assert isinstance(await store.begin_session(start(a, "s1"), allow), Admitted)
        # a retried start (same id, account and owner) returns the same session
        again = await store.begin_session(start(a, "s1"), max_concurrent(0))
        assert isinstance(again, Admitted) and again.session_id == "s1"
        # the same id from someone else is a bug, not a second session
        with pytest.raises(StoreError):
            await store.begin_session(start(a, "s1", owner="proc-b"), allow)

        def boom(snap: AccountSnapshot) -> Refusal | None:
            raise RuntimeError("policy bug")

        with pytest.raises(RuntimeError):
            await store.begin_session(start(a, "s2"), boom)
        assert await store.get_session("s2") is None
        assert (await store.snapshot(a, T0, None)).active_sessions == 1


@pytest.mark.trio
async def test_negative_balance_is_reported_not_hidden(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="free", credits_micro=MICRO)
        a = acct.account_id
        for sid in ("s1", "s2"):
            assert isinstance(await store.begin_session(start(a, sid), allow), Admitted)
        await store.checkpoint(cp("s1", 1, billed=MICRO))
        await store.checkpoint(cp("s2", 1, billed=MICRO // 2))
        await store.flush()
        snap = await store.snapshot(a, T0, None)
        assert snap.balance_micro == -MICRO // 2

        def min_balance(snap: AccountSnapshot) -> Refusal | None:
            if snap.balance_micro <= 0:
                return Refusal(code=Code.INSUFFICIENT_CREDITS, message="add credits")
            return None

        r = await store.begin_session(start(a, "s3"), min_balance)
        assert isinstance(r, Refusal) and r.code is Code.INSUFFICIENT_CREDITS
    assert audit(db) == []


@pytest.mark.trio
async def test_usage_windows_are_calendar_utc(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="pro", credits_micro=100 * MICRO)
        a = acct.account_id
        began = utc(2024, 2, 29, 23, 0)
        ok = await store.begin_session(start(a, "s1", now=began, lease_s=1e9), allow)
        assert isinstance(ok, Admitted)
        # cumulative usage: each checkpoint adds its delta to the hour bucket of its time
        stamps = [
            (utc(2024, 2, 29, 23, 59, 59), 1_000),  # last month
            (utc(2024, 3, 14, 23, 59, 59), 2_000),  # yesterday
            (utc(2024, 3, 15, 9, 59, 59), 4_000),  # today, last hour
            (utc(2024, 3, 15, 10, 0, 0), 8_000),  # this hour
        ]
        total = 0
        for seq, (t, ms) in enumerate(stamps):
            total += ms
            await store.checkpoint(cp("s1", seq, now=t, usage_ms=total, billed=total))
        await store.flush()

        async def usage_at(t: float) -> Usage:
            u = await store.usage(a, t)
            assert (await store.snapshot(a, t, None)).usage == u
            return u

        assert await usage_at(utc(2024, 3, 15, 10, 30)) == Usage(
            hour_ms=8_000, day_ms=12_000, month_ms=14_000
        )
        assert await usage_at(utc(2024, 3, 15, 10, 59, 59) + 0.999) == Usage(
            hour_ms=8_000, day_ms=12_000, month_ms=14_000
        )
        assert await usage_at(utc(2024, 3, 15, 11)) == Usage(hour_ms=0, day_ms=12_000, month_ms=14_000)
        assert await usage_at(utc(2024, 3, 16)) == Usage(hour_ms=0, day_ms=0, month_ms=14_000)
        assert await usage_at(utc(2024, 3, 31, 23, 59, 59)) == Usage(month_ms=14_000)
        assert await usage_at(utc(2024, 4, 1)) == Usage()
        assert await usage_at(utc(2024, 2, 29, 23, 59, 59)) == Usage(
            hour_ms=1_000, day_ms=1_000, month_ms=1_000
        )
        # the usage a new session is checked against (inside the admission transaction)
        seen: list[AccountSnapshot] = []
        now = utc(2024, 3, 15, 10, 45)

        def spy(snap: AccountSnapshot) -> Refusal | None:
            seen.append(snap)
            return None

        await store.begin_session(start(a, "s2", now=now), spy)
        assert seen[0].usage == Usage(hour_ms=8_000, day_ms=12_000, month_ms=14_000)
    hours = query(db, "SELECT hour_start, usage_ms FROM usage_hourly ORDER BY hour_start")
    assert [h for h, _ in hours] == [int(t) // 3600 * 3600 for t, _ in stamps]
    assert audit(db) == []


@pytest.mark.trio
async def test_concurrent_admissions_in_one_process(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "engine.db") as store:
        acct, _ = await store.create_account(plan="pro")
        results: list[Admitted | Refusal] = []

        async def one(i: int) -> None:
            results.append(await store.begin_session(start(acct.account_id, f"s{i}"), max_concurrent(5)))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert sum(isinstance(r, Admitted) for r in results) == 5
