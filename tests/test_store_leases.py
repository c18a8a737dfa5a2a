"""Store: leases, recovery of dead processes' sessions, resume, auto top-up."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.policy.types import MICRO, Code, EndReason
from engine.store.base import Account, Admitted, Refusal, SessionEnd
from engine.store.sqlite import open_sqlite_store
from engine.store.testing import T0, allow, audit, cp, max_concurrent, query, start


@pytest.mark.trio
async def test_leases_count_only_while_live_and_recover_settles_once(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="free", credits_micro=100 * MICRO)
        a = acct.account_id
        assert isinstance(await store.begin_session(start(a, "s1", lease_s=10), allow), Admitted)
        assert isinstance(
            await store.begin_session(start(a, "s2", lease_s=10, owner="proc-b"), allow), Admitted
        )
        await store.checkpoint(cp("s1", 1, now=T0 + 4, billed=4000, usage_ms=4000))
        await store.flush()
        assert (await store.snapshot(a, T0 + 5, None)).active_sessions == 2
        # proc-b died (its lease lapses); proc-a renews: only s1 still counts
        await store.renew_leases("proc-a", ["s1", "s2"], T0 + 30)  # s2 is not proc-a's
        assert (await store.snapshot(a, T0 + 11, None)).active_sessions == 1
        # ... even for admission, before anyone called recover()
        r = await store.begin_session(start(a, "s3", now=T0 + 11), max_concurrent(2))
        assert isinstance(r, Admitted) and r.snapshot.active_sessions == 1
        s2 = await store.get_session("s2")
        assert s2 is not None and s2.end_reason == EndReason.EXPIRED.value  # settled by admission
        assert await store.recover(T0 + 20) == 0  # s1 and s3 are alive
        assert await store.recover(T0 + 45) == 2  # s1 (lease T0+30), s3 (T0+41)
        assert await store.recover(T0 + 45) == 0  # exactly once
        s1 = await store.get_session("s1")
        assert s1 is not None
        assert (s1.end_reason, s1.ended_utc, s1.billed_micro) == ("expired", T0 + 4, 4000)
        # renewing a settled session does not revive it
        await store.renew_leases("proc-a", ["s1"], T0 + 100)
        assert (await store.snapshot(a, T0 + 50, None)).active_sessions == 0
        assert (await store.get_account(a)).balance_micro == 100 * MICRO - 4000  # type: ignore[union-attr]
        assert [s.session_id for s in await store.list_sessions(a, active_at=T0 + 50)] == []
    assert audit(db) == []


async def _dropped_session(store: object, a: str) -> None:
    from engine.store.sqlite import SqliteStore

    assert isinstance(store, SqliteStore)
    assert isinstance(await store.begin_session(start(a, "s1"), allow), Admitted)
    await store.checkpoint(cp("s1", 1, now=T0 + 10, billed=10_000, usage_ms=10_000))
    await store.checkpoint(cp("s1", 2, now=T0 + 20, billed=20_000, usage_ms=20_000))
    end = SessionEnd(
        checkpoint=cp("s1", 3, now=T0 + 30, billed=30_000, usage_ms=30_000),
        reason=EndReason.DISCONNECT,
        resumable=True,
    )
    await store.end_session(end)


@pytest.mark.trio
async def test_resume_within_the_window_continues_billing(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="free", credits_micro=100 * MICRO)
        a = acct.account_id
        await _dropped_session(store, a)
        row = await store.get_session("s1")
        assert row is not None and row.resume_until_utc == T0 + 30 + 300
        assert (await store.snapshot(a, T0 + 40, None)).active_sessions == 0
        assert await store.recover(T0 + 329) == 0  # still resumable

        r = await store.begin_session(start(a, resume_id="s1", now=T0 + 329, owner="proc-b"), allow)
        assert isinstance(r, Admitted) and r.session_id == "s1"
        assert r.resumed is not None
        assert (r.resumed.seq, r.resumed.billed_micro, r.resumed.usage_ms, r.resumed.duration_ms) == (
            3,
            30_000,
            30_000,
            30_000,
        )
        assert r.snapshot.active_sessions == 0
        assert (await store.snapshot(a, T0 + 330, None)).active_sessions == 1
        # a second resume of the same (now open) session is refused
        again = await store.begin_session(start(a, resume_id="s1", now=T0 + 331), allow)
        assert isinstance(again, Refusal) and again.code is Code.SESSION_NOT_FOUND
        # billing continues from the checkpoint: only the delta is charged
        await store.checkpoint(cp("s1", 4, now=T0 + 340, billed=35_000, usage_ms=35_000))
        bal = await store.end_session(
            SessionEnd(
                checkpoint=cp("s1", 5, now=T0 + 350, billed=40_000, usage_ms=40_000),
                reason=EndReason.CLIENT_CLOSE,
            )
        )
        assert bal == 100 * MICRO - 40_000
        row = await store.get_session("s1")
        assert row is not None and row.end_reason == "client_close" and row.billed_micro == 40_000
        assert row.resume_until_utc is None
        closed = await store.begin_session(start(a, resume_id="s1", now=T0 + 351), allow)
        assert isinstance(closed, Refusal) and closed.code is Code.SESSION_NOT_FOUND
    assert audit(db) == []


@pytest.mark.trio
async def test_resume_after_the_window_or_by_another_account_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="free", credits_micro=100 * MICRO)
        thief, _ = await store.create_account(plan="free", credits_micro=100 * MICRO)
        a = acct.account_id
        await _dropped_session(store, a)
        r = await store.begin_session(start(thief.account_id, resume_id="s1", now=T0 + 40), allow)
        assert isinstance(r, Refusal) and r.code is Code.SESSION_NOT_FOUND
        r = await store.begin_session(start(a, resume_id="nope", now=T0 + 40), allow)
        assert isinstance(r, Refusal) and r.code is Code.SESSION_NOT_FOUND
        # a refused policy check leaves it resumable
        r = await store.begin_session(start(a, resume_id="s1", now=T0 + 41), max_concurrent(0))
        assert isinstance(r, Refusal) and r.code is Code.CONCURRENT_LIMIT
        assert await store.recover(T0 + 329) == 0
        # the window (300 s from the drop at T0+30) is over: settled for good, exactly once
        assert await store.recover(T0 + 330) == 1
        assert await store.recover(T0 + 400) == 0
        row = await store.get_session("s1")
        assert row is not None and row.end_reason == "expired" and row.billed_micro == 30_000
        r = await store.begin_session(start(a, resume_id="s1", now=T0 + 331), allow)
        assert isinstance(r, Refusal) and r.code is Code.SESSION_NOT_FOUND
        assert (await store.get_account(a)).balance_micro == 100 * MICRO - 30_000  # type: ignore[union-attr]


@pytest.mark.trio
async def test_resume_after_the_window_without_recover(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "engine.db") as store:
        acct, _ = await store.create_account(plan="free", credits_micro=MICRO)
        await _dropped_session(store, acct.account_id)
        r = await store.begin_session(start(acct.account_id, resume_id="s1", now=T0 + 330), allow)
        assert isinstance(r, Refusal) and r.code is Code.SESSION_NOT_FOUND
        row = await store.get_session("s1")
        assert row is not None and row.end_reason == "expired"


class Payments:
    """A host payment hook double: records calls, collects a fixed amount (or nothing)."""

    def __init__(self, collect: int | None) -> None:
        self.collect = collect
        self.calls: list[tuple[Account, int]] = []
        self.keys: list[str] = []
        self.threads: set[int] = set()

    def __call__(self, account: Account, balance_micro: int, idempotency_key: str) -> int | None:
        self.calls.append((account, balance_micro))
        self.keys.append(idempotency_key)
        self.threads.add(threading.get_ident())
        return self.collect


@pytest.mark.trio
async def test_auto_topup_through_the_hook_is_recorded(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    hook = Payments(collect=100 * MICRO)
    async with open_sqlite_store(db, topup_hook=hook, commit_interval=3600) as store:
        acct, _ = await store.create_account(
            plan="free",
            credits_micro=60 * MICRO,
            auto_topup_threshold_micro=50 * MICRO,
            auto_topup_amount_micro=100 * MICRO,
        )
        a = acct.account_id
        assert isinstance(await store.begin_session(start(a, "s1"), allow), Admitted)
        await store.checkpoint(cp("s1", 1, billed=5 * MICRO))  # 55: above the threshold
        await store.flush()
        assert hook.calls == []
        await store.checkpoint(cp("s1", 2, billed=20 * MICRO))  # 40: crosses it
        await store.flush()  # also waits for the top-up it triggered
        assert len(hook.calls) == 1
        called_with, balance = hook.calls[0]
        assert balance == 40 * MICRO and called_with.account_id == a
        assert called_with.auto_topup_amount_micro == 100 * MICRO
        assert threading.get_ident() not in hook.threads  # not on the Trio thread
        await store.checkpoint(cp("s1", 3, billed=30 * MICRO))  # 130: no crossing
        await store.flush()
        assert len(hook.calls) == 1
        entries = await store.ledger(a)
        auto = [e for e in entries if e.kind == "auto_topup"]
        assert len(auto) == 1
        assert auto[0].amount_micro == 100 * MICRO and auto[0].idempotency_key == "auto_topup:s1:2"
        assert hook.keys == ["auto_topup:s1:2"]  # the host's payment provider gets the ledger's key
        assert (await store.get_account(a)).balance_micro == 130 * MICRO  # type: ignore[union-attr]
        assert store.stats.auto_topups == 1
    assert audit(db) == []


@pytest.mark.trio
async def test_auto_topup_on_end_and_failed_payments(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    declined = Payments(collect=None)
    async with open_sqlite_store(db, topup_hook=declined) as store:
        acct, _ = await store.create_account(
            plan="free",
            credits_micro=10 * MICRO,
            auto_topup_threshold_micro=5 * MICRO,
            auto_topup_amount_micro=20 * MICRO,
        )
        a = acct.account_id
        await store.begin_session(start(a, "s1"), allow)
        await store.end_session(
            SessionEnd(checkpoint=cp("s1", 1, billed=6 * MICRO), reason=EndReason.CLIENT_CLOSE)
        )
        await store.flush()
        assert len(declined.calls) == 1  # called, collected nothing: nothing recorded
        assert [e.kind for e in await store.ledger(a)] == ["topup", "charge"]

    def broken(account: Account, balance: int, key: str) -> int | None:
        raise ConnectionError("payment provider down")

    async with open_sqlite_store(db, topup_hook=broken) as store:
        await store.topup(a, 10 * MICRO, "manual")  # 14: above the threshold again
        await store.begin_session(start(a, "s2"), allow)
        await store.checkpoint(cp("s2", 1, billed=10 * MICRO))  # crosses: the hook raises
        await store.flush()
        assert (await store.get_account(a)).balance_micro == 4 * MICRO  # type: ignore[union-attr]
        await store.checkpoint(cp("s2", 2, billed=11 * MICRO))  # the store keeps working
        await store.flush()
    assert audit(db) == []


@pytest.mark.trio
async def test_no_hook_no_topup(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(
            plan="free",
            credits_micro=10 * MICRO,
            auto_topup_threshold_micro=5 * MICRO,
            auto_topup_amount_micro=20 * MICRO,
        )
        await store.begin_session(start(acct.account_id, "s1"), allow)
        await store.checkpoint(cp("s1", 1, billed=9 * MICRO))
        await store.flush()
    assert query(db, "SELECT COUNT(*) FROM ledger WHERE kind = 'auto_topup'") == [(0,)]
    assert query(db, "SELECT balance_micro FROM accounts") == [(MICRO,)]
