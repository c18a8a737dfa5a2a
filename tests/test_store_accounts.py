"""Store: schema, accounts, API keys, top-ups (real SQLite files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.policy.types import MICRO
from engine.store.errors import IdempotencyConflict, SchemaTooNew, UnknownAccount
from engine.store.sqlite import SCHEMA_VERSION, SqliteStore, hash_api_key, open_sqlite_store
from engine.store.testing import audit, query


def _db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


@pytest.mark.trio
async def test_schema_wal_and_version(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db):
        pass
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "sessions", "ledger", "usage_hourly"} <= tables
    # reopening an up-to-date file migrates nothing and keeps the data
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="free", credits_micro=5 * MICRO)
    async with open_sqlite_store(db) as store:
        again = await store.get_account(acct.account_id)
    assert again == acct


@pytest.mark.trio
async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        await SqliteStore.open(db)


@pytest.mark.trio
async def test_create_and_authenticate_stores_only_the_hash(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, key = await store.create_account(plan="pro", credits_micro=120 * MICRO, name="Ann")
        assert acct.plan == "pro" and acct.name == "Ann" and acct.balance_micro == 120 * MICRO
        assert await store.authenticate(key) == acct
        assert await store.authenticate(key + "x") is None
        assert await store.authenticate("") is None
        assert await store.get_account(acct.account_id) == acct
        assert await store.get_account("acct_nope") is None
        other, key2 = await store.create_account(plan="free")
        assert key2 != key and other.account_id != acct.account_id
        assert other.balance_micro == 0
    raw = _db_bytes(db)
    assert key.encode() not in raw and key2.encode() not in raw
    assert hash_api_key(key).encode() in raw
    # the initial credits are a ledger entry like any top-up
    assert query(db, "SELECT kind, amount_micro FROM ledger WHERE account_id = ?", acct.account_id) == [
        ("topup", 120 * MICRO)
    ]
    assert audit(db) == []


@pytest.mark.trio
async def test_topup_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        acct, _ = await store.create_account(plan="free", credits_micro=10 * MICRO)
        a = acct.account_id
        assert await store.topup(a, 5 * MICRO, "pay-1") == 15 * MICRO
        assert await store.topup(a, 5 * MICRO, "pay-1") == 15 * MICRO  # retried: applied once
        assert await store.topup(a, 1, "pay-2") == 15 * MICRO + 1
        with pytest.raises(IdempotencyConflict):
            await store.topup(a, 6 * MICRO, "pay-1")  # same key, other amount
        with pytest.raises(UnknownAccount):
            await store.topup("acct_nope", MICRO, "pay-3")
        with pytest.raises(ValueError):
            await store.topup(a, 0, "pay-4")
        with pytest.raises(ValueError):
            await store.topup(a, -MICRO, "pay-5")
        assert await store.refund(a, 2, "refund-1") == 15 * MICRO + 3
        assert await store.refund(a, 2, "refund-1") == 15 * MICRO + 3
        assert (await store.get_account(a)).balance_micro == 15 * MICRO + 3  # type: ignore[union-attr]
        assert await store.check_integrity() == []
    # the same key from another process/store instance is still applied once
    async with open_sqlite_store(db) as store:
        assert await store.topup(a, 5 * MICRO, "pay-1") == 15 * MICRO + 3
        entries = await store.ledger(a)
    assert [e.kind for e in entries] == ["topup", "topup", "topup", "refund"]
    assert [e.balance_after_micro for e in entries] == [
        10 * MICRO,
        15 * MICRO,
        15 * MICRO + 1,
        15 * MICRO + 3,
    ]
    assert audit(db) == []


@pytest.mark.trio
async def test_ledger_is_append_only(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    async with open_sqlite_store(db) as store:
        await store.create_account(plan="free", credits_micro=MICRO)
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE ledger SET amount_micro = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM ledger")
    conn.close()


@pytest.mark.trio
async def test_auto_topup_settings_and_plan(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "engine.db") as store:
        acct, _ = await store.create_account(plan="free")
        a = await store.set_auto_topup(acct.account_id, 10 * MICRO, 50 * MICRO)
        assert (a.auto_topup_threshold_micro, a.auto_topup_amount_micro) == (10 * MICRO, 50 * MICRO)
        a = await store.set_auto_topup(acct.account_id, None, None)
        assert a.auto_topup_threshold_micro is None
        with pytest.raises(ValueError):
            await store.set_auto_topup(acct.account_id, 10, None)
        with pytest.raises(UnknownAccount):
            await store.set_auto_topup("acct_nope", 1, 1)
        assert (await store.set_plan(acct.account_id, "pro")).plan == "pro"
        assert [x.account_id for x in await store.list_accounts()] == [acct.account_id]
