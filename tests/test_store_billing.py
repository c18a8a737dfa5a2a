"""Store: cumulative checkpoints, group commit, idempotent retries, ending exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from engine.policy.types import MICRO, Code, EndReason
from engine.store.base import Admitted, SessionEnd
from engine.store.errors import StoreClosed, UnknownSession
from engine.store.sqlite import SqliteStore, open_sqlite_store
from engine.store.testing import T0, allow, audit, cp, query, start


async def _account_with_sessions(store: SqliteStore, n: int, credits: int = 1000) -> str:
    acct, _ = await store.create_account(plan="pro", credits_micro=credits * MICRO)
    for i in range(n):
        assert isinstance(await store.begin_session(start(acct.account_id, f"s{i}"), allow), Admitted)
    return acct.account_id


def _billed(db: Path, sid: str) -> int:
    billed = query(db, "SELECT billed_micro FROM sessions WHERE session_id = ?", sid)[0][0]
    assert isinstance(billed, int)
    return billed


@pytest.mark.trio
async def test_group_commit_one_transaction_per_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    db = tmp_path / "engine.db"
    store = await SqliteStore.open(db, commit_interval=1.0)
    try:
        a = await _account_with_sessions(store, 10)
        tx0 = store.stats.transactions
        t_first = trio.current_time()
        for seq in range(10):  # 10 sessions x 10 ticks, 0.05 s apart
            for i in range(10):
                await store.checkpoint(cp(f"s{i}", seq, billed=(seq + 1) * 1000, usage_ms=(seq + 1) * 100))
            await trio.sleep(0.05)
        assert trio.current_time() - t_first < 1.0
        # nothing written yet: the batch is still queued
        assert store.stats.transactions == tx0 and store.stats.group_commits == 0
        assert _billed(db, "s0") == 0
        await trio.sleep(1.0 - (trio.current_time() - t_first) + 0.5)
        await store.flush()  # waits for the (already started) group commit to finish
        assert store.stats.group_commits == 1
        assert store.stats.checkpoints_applied == 100
        # the group commit plus flush's own (empty) transaction
        assert store.stats.transactions == tx0 + 2
        for i in range(10):
            assert _billed(db, f"s{i}") == 10_000
        # one ledger entry per session per batch (the latest seq's key)
        charges = query(db, "SELECT idempotency_key, amount_micro FROM ledger WHERE kind = 'charge'")
        assert sorted(charges) == sorted((f"s{i}:9", -10_000) for i in range(10))
        snap = await store.snapshot(a, T0, None)
        assert snap.balance_micro == 1000 * MICRO - 100_000
        assert snap.usage.hour_ms == 10 * 1000
    finally:
        await store.aclose()
    assert audit(db) == []


@pytest.mark.trio
async def test_group_commit_happens_within_the_interval_without_flush(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db, commit_interval=0.5) as store:
        await _account_with_sessions(store, 1)
        await store.checkpoint(cp("s0", 1, billed=5))
        await trio.sleep(0.4)
        assert store.stats.group_commits == 0
        while store.stats.group_commits == 0:  # the actor commits at 0.5 s on its own
            await trio.sleep(0.01)
        assert _billed(db, "s0") == 5


@pytest.mark.trio
async def test_retried_and_out_of_order_checkpoints_apply_once(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db, commit_interval=3600) as store:
        a = await _account_with_sessions(store, 1, credits=1)
        c1, c2, c3 = (cp("s0", s, billed=s * 1000, usage_ms=s * 10) for s in (1, 2, 3))
        for c in (c2, c1, c2, c3, c1):  # retries and reordering inside one batch
            await store.checkpoint(c)
        await store.flush()
        assert _billed(db, "s0") == 3000
        # the whole batch retried later (e.g. after a timeout): nothing changes
        for c in (c1, c2, c3):
            await store.checkpoint(c)
        await store.flush()
        assert store.stats.checkpoints_ignored == 2 + 3
        assert _billed(db, "s0") == 3000
        # a lower cumulative total never refunds; a stale seq is ignored
        await store.checkpoint(cp("s0", 4, billed=2000, usage_ms=40))
        await store.checkpoint(cp("s0", 2, billed=9_000_000))
        await store.flush()
        assert _billed(db, "s0") == 3000
        await store.checkpoint(cp("s0", 5, billed=4500, usage_ms=50))
        await store.flush()
        assert _billed(db, "s0") == 4500
        # checkpoints for unknown sessions are ignored, not fatal
        await store.checkpoint(cp("nope", 1, billed=1))
        await store.flush()
        assert (await store.get_account(a)).balance_micro == MICRO - 4500  # type: ignore[union-attr]
        assert (await store.usage(a, T0)).hour_ms == 50
    assert audit(db) == []


@pytest.mark.trio
async def test_end_session_exactly_once_and_durably(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    store = await SqliteStore.open(db, commit_interval=3600)
    a = await _account_with_sessions(store, 1, credits=10)
    await store.checkpoint(cp("s0", 1, billed=1000))  # queued, taken along by the end
    final = SessionEnd(
        checkpoint=cp("s0", 2, now=T0 + 5, billed=2500, usage_ms=5000),
        reason=EndReason.POLICY,
        code=Code.IDLE_TIMEOUT,
    )
    balance = await store.end_session(final)
    assert balance == 10 * MICRO - 2500
    await store.aclose(flush=False)  # "crash" right after: the end is already durable

    async with open_sqlite_store(db) as store:
        row = await store.get_session("s0")
        assert row is not None
        assert (row.ended_utc, row.end_reason, row.end_code) == (T0 + 5, "policy", "IDLE_TIMEOUT")
        assert row.billed_micro == 2500 and row.audio_ms == 5000 and row.lease_until_utc is None
        n_ledger = len(await store.ledger(a))
        # ending again (a retry, or with different totals): same answer, nothing changes
        assert await store.end_session(final) == balance
        bigger = SessionEnd(checkpoint=cp("s0", 3, billed=99_999), reason=EndReason.CLIENT_CLOSE)
        await store.topup(a, MICRO, "t1")  # the balance moves on; the end's answer does not
        assert await store.end_session(bigger) == balance
        # late checkpoints of an ended session are ignored too
        await store.checkpoint(cp("s0", 4, billed=10**9))
        await store.flush()
        assert len(await store.ledger(a)) == n_ledger + 1  # just the top-up
        assert (await store.get_session("s0")).billed_micro == 2500  # type: ignore[union-attr]
        assert await store.recover(T0 + 10**6) == 0  # already settled
        with pytest.raises(UnknownSession):
            await store.end_session(SessionEnd(checkpoint=cp("nope", 1), reason=EndReason.INTERNAL))
    assert audit(db) == []


@pytest.mark.trio
async def test_crash_loses_only_unflushed_checkpoints(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    store = await SqliteStore.open(db, commit_interval=3600)
    await _account_with_sessions(store, 1)
    await store.checkpoint(cp("s0", 1, billed=1000))
    await store.flush()
    await store.checkpoint(cp("s0", 2, billed=2000))  # lost with the process
    await store.aclose(flush=False)
    with pytest.raises(StoreClosed):
        await store.checkpoint(cp("s0", 3, billed=3000))
    with pytest.raises(StoreClosed):
        await store.flush()
    assert _billed(db, "s0") == 1000
    async with open_sqlite_store(db) as store:
        # the engine resends its latest cumulative checkpoint: nothing is lost for good
        await store.checkpoint(cp("s0", 3, billed=3000))
    assert _billed(db, "s0") == 3000
    assert audit(db) == []


@pytest.mark.trio
async def test_aclose_flushes_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    store = await SqliteStore.open(db)
    await _account_with_sessions(store, 1)
    await store.checkpoint(cp("s0", 1, billed=7))
    await store.aclose()
    await store.aclose()
    assert _billed(db, "s0") == 7


@pytest.mark.trio
async def test_store_in_a_nursery(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        store = await SqliteStore.open(tmp_path / "engine.db", nursery=nursery)
        await store.create_account(plan="free")
        await store.aclose()  # the actor ends; the nursery can exit


@pytest.mark.trio
async def test_session_snapshot_tells_which_seq_it_reflects(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "engine.db", commit_interval=3600) as store:
        a = await _account_with_sessions(store, 2, credits=1)
        await store.checkpoint(cp("s0", 1, billed=100, usage_ms=10))
        await store.checkpoint(cp("s1", 1, billed=50, usage_ms=5))
        await store.flush()
        await store.checkpoint(cp("s0", 2, billed=300, usage_ms=30))  # queued, not committed
        snap, seq = await store.session_snapshot("s0", T0)
        assert seq == 1 and snap.balance_micro == MICRO - 150 and snap.usage.hour_ms == 15
        assert snap.account_id == a and snap.active_sessions == 1  # s1 only
        await store.flush()
        snap, seq = await store.session_snapshot("s0", T0)
        assert seq == 2 and snap.balance_micro == MICRO - 350
        _, seq = await store.session_snapshot("s1", T0)
        assert seq == 1
        with pytest.raises(UnknownSession):
            await store.session_snapshot("nope", T0)


@pytest.mark.trio
async def test_inline_mode_keeps_an_autojump_clock_still(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``threaded=False`` (tests only): waiting for the store is not idleness, so virtual time
    does not jump to the next timer while the database works."""
    async with open_sqlite_store(tmp_path / "engine.db", threaded=False) as store:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 30)  # a timer the clock could jump to
            t0 = trio.current_time()
            a = await _account_with_sessions(store, 3)
            for seq in range(20):
                await store.checkpoint(cp("s0", seq, billed=seq))
                await store.snapshot(a, T0, None)
            await store.flush()
            assert trio.current_time() == t0
            nursery.cancel_scope.cancel()
        assert (await store.get_session("s0")).billed_micro == 19  # type: ignore[union-attr]
