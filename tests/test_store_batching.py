"""Store: the actor serves everything queued in one thread hop; bulk group commits."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from engine.policy.types import MICRO, AccountSnapshot, Code, EndReason
from engine.store import sqlite as sqlite_mod
from engine.store.base import Admitted, Refusal, SessionEnd
from engine.store.errors import StoreError
from engine.store.sqlite import SqliteStore, open_sqlite_store
from engine.store.testing import T0, allow, audit, cp, max_concurrent, query, start


class HopSpy:
    """Records what each thread hop of a store carried: (checkpoints, writes, reads).
    With a ``gate``, each hop waits (in the worker thread) until the gate is set."""

    def __init__(
        self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None
    ) -> None:
        self.hops: list[tuple[int, int, int]] = []
        real = store._hop

        def hop(cps: list[Any], writes: list[Any], reads: list[Any]) -> Any:
            self.hops.append((len(cps), len(writes), len(reads)))
            if gate is not None:
                gate.wait(10)
            return real(cps, writes, reads)

        monkeypatch.setattr(store, "_hop", hop)


@pytest.mark.trio
async def test_everything_queued_is_served_in_one_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db, commit_interval=3600) as store:
        acct, _ = await store.create_account(plan="pro", credits_micro=100 * MICRO)
        a = acct.account_id
        assert isinstance(await store.begin_session(start(a, "s0"), allow), Admitted)
        spy = HopSpy(store, monkeypatch)
        results: dict[str, object] = {}

        def boom(snap: AccountSnapshot) -> Refusal | None:
            raise RuntimeError("policy bug")

        async def begin(i: int) -> None:
            check = boom if i == 3 else max_concurrent(6)
            try:
                results[f"b{i}"] = await store.begin_session(start(a, f"n{i}"), check)
            except RuntimeError as exc:
                results[f"b{i}"] = exc

        async def snap(i: int) -> None:
            results[f"r{i}"] = await store.session_snapshot("s0", T0)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(begin, i)
                nursery.start_soon(snap, i)
        # 8 admissions and 8 snapshots: at most two hops (the first request may leave alone)
        assert len(spy.hops) <= 2, spy.hops
        assert sum(h[1] for h in spy.hops) == 8 and sum(h[2] for h in spy.hops) == 8
        # one failing request in the shared transaction does not undo the others
        assert isinstance(results["b3"], RuntimeError)
        admitted = [k for k, v in results.items() if k.startswith("b") and isinstance(v, Admitted)]
        refused = [k for k, v in results.items() if isinstance(v, Refusal)]
        assert len(admitted) == 5 and len(refused) == 2  # s0 + 5 = the limit of 6
        for r in refused:
            v = results[r]
            assert isinstance(v, Refusal) and v.code is Code.CONCURRENT_LIMIT
        assert await store.get_session("n3") is None
        assert (await store.snapshot(a, T0, None)).active_sessions == 6
    assert audit(db) == []


@pytest.mark.trio
async def test_admission_waits_for_at_most_one_group_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db, commit_interval=3600) as store:
        acct, _ = await store.create_account(plan="pro", credits_micro=100 * MICRO)
        a = acct.account_id
        for i in range(50):
            assert isinstance(await store.begin_session(start(a, f"s{i}", lease_s=1e6), allow), Admitted)
        gate = threading.Event()
        spy = HopSpy(store, monkeypatch, gate)
        for seq in range(1, 4):
            for i in range(50):
                await store.checkpoint(cp(f"s{i}", seq, billed=seq * 10, usage_ms=seq))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.flush)
            while not spy.hops:  # the group commit's hop is in the worker thread (held)
                await trio.sleep(0.001)
            for i in range(10):
                nursery.start_soon(store.begin_session, start(a, f"late{i}"), allow)
                nursery.start_soon(store.session_snapshot, "s0", T0)
            await trio.testing.wait_all_tasks_blocked()  # all 20 queued behind it
            gate.set()
        # the group commit's hop, then one hop for everything that queued behind it
        assert spy.hops[0] == (150, 1, 0)
        assert spy.hops[1:] == [(0, 10, 10)], spy.hops
        assert store.stats.checkpoints_applied >= 150
    assert audit(db) == []


@pytest.mark.trio
async def test_many_writes_are_served_fifo_over_several_hops(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="pro")
        done: list[int] = []

        async def topup(i: int) -> None:
            await store.topup(acct.account_id, 1 + i, f"k{i}")
            done.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(3 * sqlite_mod._MAX_WRITES_PER_HOP + 5):
                nursery.start_soon(topup, i)
        n = len(done)
        assert (await store.get_account(acct.account_id)).balance_micro == n * (n + 1) // 2  # type: ignore[union-attr]
    assert audit(db) == []


@pytest.mark.trio
async def test_failed_checkpoints_do_not_fail_other_requests_and_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db, commit_interval=3600) as store:
        acct, _ = await store.create_account(plan="pro", credits_micro=100 * MICRO)
        a = acct.account_id
        assert isinstance(await store.begin_session(start(a, "s0"), allow), Admitted)
        real = store._apply_checkpoints
        fail = [True]

        def flaky(txn: Any, cps: Any) -> None:
            real(txn, cps)
            if fail[0]:
                fail[0] = False
                raise OSError("disk hiccup")

        monkeypatch.setattr(store, "_apply_checkpoints", flaky)
        await store.checkpoint(cp("s0", 1, billed=100, usage_ms=10))
        results: list[object] = []

        async def flush() -> None:
            try:
                await store.flush()
            except OSError as exc:
                results.append(exc)

        async def begin() -> None:
            results.append(await store.begin_session(start(a, "s1"), allow))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush)
            nursery.start_soon(begin)
        # the flush reports that its checkpoints were not written; the admission is not affected
        assert any(isinstance(r, OSError) for r in results)
        assert any(isinstance(r, Admitted) for r in results)
        assert store.stats.failed_transactions == 1
        assert query(db, "SELECT billed_micro FROM sessions WHERE session_id = 's0'") == [(0,)]
        await store.flush()  # retried: written once
        assert query(db, "SELECT billed_micro, seq FROM sessions WHERE session_id = 's0'") == [(100, 1)]
        assert (await store.get_account(a)).balance_micro == 100 * MICRO - 100  # type: ignore[union-attr]
    assert audit(db) == []


@pytest.mark.trio
@pytest.mark.parametrize("update_from", [True, False])
async def test_bulk_group_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update_from: bool) -> None:
    """Many sessions on several accounts in one batch, with SQLite's UPDATE ... FROM and
    with the executemany fallback (SQLite < 3.33): the same ledger, balances and usage."""
    monkeypatch.setattr(sqlite_mod, "_HAS_UPDATE_FROM", update_from)
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db, commit_interval=3600) as store:
        accts = [
            (await store.create_account(plan="pro", credits_micro=MICRO))[0].account_id for _ in range(3)
        ]
        sids = [f"s{i}" for i in range(30)]
        for i, sid in enumerate(sids):
            assert isinstance(
                await store.begin_session(start(accts[i % 3], sid, lease_s=1e6), allow), Admitted
            )
        await store.end_session(SessionEnd(checkpoint=cp("s29", 1, billed=1), reason=EndReason.CLIENT_CLOSE))
        for seq in (2, 1, 3, 3):  # reordered and repeated inside the batch
            for i, sid in enumerate(sids):
                await store.checkpoint(
                    cp(sid, seq, now=T0 + seq * 0.1 + 1e-7 * i, billed=seq * (i + 1), usage_ms=seq * 10)
                )
        await store.checkpoint(cp("nope", 1, billed=5))
        await store.flush()
        st = store.stats
        assert st.checkpoints_applied == 1 + 29 * 3  # the end's, then: s29 ended, "nope" unknown
        for i, sid in enumerate(sids[:29]):
            rows = query(
                db,
                "SELECT seq, billed_micro, usage_ms, checkpoint_utc FROM sessions WHERE session_id = ?",
                sid,
            )
            assert rows == [(3, 3 * (i + 1), 30, T0 + 3 * 0.1 + 1e-7 * i)]  # floats exact
        for k, a in enumerate(accts):
            n = len([i for i in range(29) if i % 3 == k])
            charged = sum(3 * (i + 1) for i in range(29) if i % 3 == k) + (1 if a == accts[29 % 3] else 0)
            assert (await store.get_account(a)).balance_micro == MICRO - charged  # type: ignore[union-attr]
            assert (await store.usage(a, T0)).hour_ms == n * 30
        keys = [
            str(r[0])
            for r in query(db, "SELECT idempotency_key FROM ledger WHERE kind = 'charge' ORDER BY entry_id")
        ]
        assert sorted(keys) == sorted([f"s{i}:3" for i in range(29)] + ["s29:1"])
        # the same batch again: nothing changes
        for i, sid in enumerate(sids):
            await store.checkpoint(cp(sid, 3, billed=3 * (i + 1), usage_ms=30))
        await store.flush()
        assert len(query(db, "SELECT * FROM ledger")) == 3 + 30
        assert await store.check_integrity() == []
    assert audit(db) == []


@pytest.mark.trio
async def test_a_key_already_in_the_ledger_is_never_charged_twice(tmp_path: Path) -> None:
    """A charge's key taken by another entry (here a top-up that reused it): the charge is
    skipped, the balance moves only by what the ledger holds."""
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db, commit_interval=3600) as store:
        acct, _ = await store.create_account(plan="pro", credits_micro=MICRO)
        a = acct.account_id
        await store.topup(a, 7, "s0:2")  # the key s0's checkpoint 2 will want
        for sid in ("s0", "s1"):
            assert isinstance(await store.begin_session(start(a, sid), allow), Admitted)
        await store.checkpoint(cp("s0", 2, billed=100))
        await store.checkpoint(cp("s1", 2, billed=50))
        await store.flush()
        entries = await store.ledger(a)
        assert [(e.kind, e.idempotency_key) for e in entries] == [
            ("topup", f"{a}:initial"),
            ("topup", "s0:2"),
            ("charge", "s1:2"),
        ]
        assert (await store.get_account(a)).balance_micro == MICRO + 7 - 50  # type: ignore[union-attr]
        # balance == sum(ledger) and the balance_after chain still hold
        assert not [p for p in await store.check_integrity() if "billed" not in p]


@pytest.mark.trio
@pytest.mark.parametrize("update_from", [True, False])
async def test_defensive_ledger_check_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update_from: bool
) -> None:
    """If the bulk ledger insert wrote fewer rows than computed, the batch rolls back (and is
    retried) instead of leaving balances that disagree with the ledger."""
    db = tmp_path / "engine.db"
    monkeypatch.setattr(sqlite_mod, "_HAS_UPDATE_FROM", update_from)
    monkeypatch.setattr(
        sqlite_mod, "_CP_LEDGER", sqlite_mod._CP_LEDGER.replace("WHERE true", "WHERE key > 0")
    )
    store = await SqliteStore.open(db, commit_interval=3600)
    acct, _ = await store.create_account(plan="pro", credits_micro=MICRO)
    for sid in ("s0", "s1"):
        assert isinstance(await store.begin_session(start(acct.account_id, sid), allow), Admitted)
        await store.checkpoint(cp(sid, 1, billed=10))
    with pytest.raises((StoreError, sqlite3.IntegrityError), match="a charge was not inserted"):
        await store.flush()
    assert store.stats.failed_transactions == 1
    assert query(db, "SELECT COUNT(*) FROM ledger WHERE kind = 'charge'") == [(0,)]
    assert query(db, "SELECT SUM(billed_micro), MAX(seq) FROM sessions") == [(0, -1)]
    assert (await store.get_account(acct.account_id)).balance_micro == MICRO  # type: ignore[union-attr]
    await store.aclose(flush=False)
    monkeypatch.undo()
    async with open_sqlite_store(db) as store:  # the engine resends its cumulative checkpoints
        for sid in ("s0", "s1"):
            await store.checkpoint(cp(sid, 1, billed=10))
    assert query(db, "SELECT COUNT(*) FROM ledger WHERE kind = 'charge'") == [(2,)]
    assert audit(db) == []


@pytest.mark.trio
async def test_admission_settles_the_accounts_expired_sessions_first(tmp_path: Path) -> None:
    """Admission settles only when there is something to settle, but always before it
    looks at the session id: a retried start of a session whose lease lapsed is no
    longer "the same open session"."""
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="pro", credits_micro=MICRO)
        a = acct.account_id
        assert isinstance(await store.begin_session(start(a, "s1", lease_s=10), allow), Admitted)
        again = await store.begin_session(start(a, "s1", now=T0 + 5), max_concurrent(0))
        assert isinstance(again, Admitted)  # lease still live: the same session, check not re-run
        with pytest.raises(StoreError):  # (the failed request's settling is rolled back with it)
            await store.begin_session(start(a, "s1", now=T0 + 11), allow)
        r = await store.begin_session(start(a, "s2", now=T0 + 11), max_concurrent(1))
        assert isinstance(r, Admitted) and r.snapshot.active_sessions == 0
        row = await store.get_session("s1")
        assert row is not None and row.end_reason == "expired" and row.ended_utc == T0
    assert audit(db) == []
