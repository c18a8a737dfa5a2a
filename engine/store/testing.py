"""Helpers for tests of the store (and of code that uses it): requests, checks, audits.

Kept in the package (not in ``tests/``) so any test module can import it
whatever pytest's import mode.
"""

from __future__ import annotations

import sqlite3
import uuid
from os import PathLike

from engine.policy.types import AccountSnapshot, Code
from engine.store.base import AdmissionCheck, Checkpoint, Refusal, SessionStart

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z: a fixed "now" for tests


def start(
    account_id: str,
    session_id: str | None = None,
    *,
    now: float = T0,
    owner: str = "proc-a",
    lease_s: float = 30.0,
    resume_id: str | None = None,
    resume_window_s: float = 300.0,
) -> SessionStart:
    return SessionStart(
        session_id=session_id or resume_id or uuid.uuid4().hex,
        account_id=account_id,
        model="general",
        encoding="pcm_s16le",
        sample_rate=16000,
        channels=1,
        owner=owner,
        lease_s=lease_s,
        now_utc=now,
        resume_window_s=resume_window_s,
        resume_id=resume_id,
    )


def cp(
    session_id: str,
    seq: int,
    *,
    now: float = T0,
    billed: int = 0,
    usage_ms: int = 0,
) -> Checkpoint:
    """A cumulative checkpoint; audio/duration follow ``usage_ms``."""
    return Checkpoint(
        session_id=session_id,
        seq=seq,
        now_utc=now,
        billed_micro=billed,
        usage_ms=usage_ms,
        audio_ms=usage_ms,
        speech_ms=usage_ms // 2,
        duration_ms=usage_ms,
        samples=usage_ms * 16,
    )


def allow(snapshot: AccountSnapshot) -> Refusal | None:
    return None


def max_concurrent(limit: int) -> AdmissionCheck:
    def check(snapshot: AccountSnapshot) -> Refusal | None:
        if snapshot.active_sessions >= limit:
            return Refusal(code=Code.CONCURRENT_LIMIT, message=f"{limit} sessions already")
        return None

    return check


def audit(db_path: str | PathLike[str]) -> list[str]:
    """Independent invariant check straight on the file (a separate connection).

    balance == sum(ledger) per account, the balance_after chain, unique keys, and
    every session's billed total == its charges.
    """
    conn = sqlite3.connect(str(db_path))
    try:
        problems: list[str] = []
        for acct, bal, total in conn.execute(
            "SELECT a.account_id, a.balance_micro, COALESCE(SUM(l.amount_micro), 0)"
            " FROM accounts a LEFT JOIN ledger l ON l.account_id = a.account_id"
            " GROUP BY a.account_id"
        ):
            if bal != total:
                problems.append(f"{acct}: balance {bal} != sum(ledger) {total}")
        running: dict[str, int] = {}
        for eid, acct, amount, after in conn.execute(
            "SELECT entry_id, account_id, amount_micro, balance_after_micro FROM ledger ORDER BY entry_id"
        ):
            running[acct] = running.get(acct, 0) + amount
            if running[acct] != after:
                problems.append(f"entry {eid}: balance_after {after} != {running[acct]}")
        (dups,) = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT idempotency_key) FROM ledger").fetchone()
        if dups:
            problems.append(f"{dups} duplicate idempotency keys")
        for sid, billed, charged in conn.execute(
            "SELECT s.session_id, s.billed_micro, COALESCE(-SUM(l.amount_micro), 0)"
            " FROM sessions s LEFT JOIN ledger l ON l.session_id = s.session_id AND l.kind = 'charge'"
            " GROUP BY s.session_id"
        ):
            if billed != charged:
                problems.append(f"session {sid}: billed {billed} != charged {charged}")
        return problems
    finally:
        conn.close()


def query(db_path: str | PathLike[str], sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run one read query on the file with a separate connection."""
    conn = sqlite3.connect(str(db_path))
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()
