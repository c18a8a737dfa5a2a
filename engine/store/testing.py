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
from engine.store.sqlite import integrity_problems

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
        return integrity_problems(conn)
    finally:
        conn.close()


def query(db_path: str | PathLike[str], sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run one read query on the file with a separate connection."""
    conn = sqlite3.connect(str(db_path))
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()
