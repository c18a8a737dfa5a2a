"""The embedded default :class:`~engine.store.base.Store`: one SQLite file.

Concurrency model
-----------------
* One **store actor** per process owns the ``sqlite3`` connection. Every call
  (``begin_session``, ``end_session``, reads, ...) is a request sent to the
  actor through a Trio channel; the actor runs it with
  ``trio.to_thread.run_sync`` under a ``CapacityLimiter(1)``, so the blocking
  sqlite3 work never runs on the Trio loop and the connection
  (``check_same_thread=False``) is used by one worker thread at a time.
* ``checkpoint()`` only queues. The actor writes everything queued at most
  ``commit_interval`` (default 1 s) after the first queued item, in **one**
  transaction (group commit); ``flush()`` forces it, and every other write
  transaction of the actor (admission, end, top-up, lease renewal) takes the
  queued checkpoints along too.
* Every write transaction is ``BEGIN IMMEDIATE``: it takes the database write
  lock up front, so two processes sharing the file serialise their admissions
  (the SQLite write lock *is* the cross-process admission lock) and nobody can
  read a snapshot, decide, and then lose a race to another writer.
  ``busy_timeout`` makes a waiting writer block instead of failing.
* ``snapshot()`` reads what is committed; :meth:`SqliteStore.session_snapshot`
  also returns the seq of the session's last committed checkpoint, read in the
  same transaction (what the session policy's ``persisted_seq`` wants).
* Tests on an autojump ``MockClock`` should open the store with
  ``threaded=False`` (see :meth:`SqliteStore.open`).
* WAL journal mode: readers (snapshots, CLI queries) never block the writer.
  ``synchronous=FULL`` by default: a committed transaction survives a power
  loss too, not only a crashed process.

Billing
-------
Checkpoints are cumulative (see :mod:`engine.store.base`). Applying one whose
``seq`` is greater than the session's last applied ``seq`` turns
``billed_micro - previous billed`` into one ``charge`` ledger entry (key
``f"{session_id}:{seq}"``) and adds ``usage_ms - previous usage`` to the
account's usage bucket of the UTC hour of ``cp.now_utc``. Older or repeated
seqs are ignored, so retried batches are applied once. Several checkpoints of
one session in one batch become one ledger entry (keyed by the last seq).
Checkpoints for sessions that already ended are ignored. Session seqs start
at -1 ("no checkpoint yet"), so the engine may number checkpoints from 0 or 1.

``accounts.balance_micro`` is only ever changed together with a ledger insert
in the same transaction, so ``balance == sum(ledger.amount_micro)`` always
holds (the ledger is append-only: triggers refuse UPDATE and DELETE). A
balance may go negative (concurrent sessions between policy checks); the store
records what it is given and the policy refuses new sessions.

Usage windows: calendar UTC, not rolling
----------------------------------------
Usage limits are counted in calendar UTC windows: this hour ``[HH:00, HH+1:00)``,
this day and this month (UTC). Usage is stored per account per UTC hour
bucket (``usage_hourly``); the day and month sums are derived from the hour
buckets with one indexed range scan (at most 744 rows per account). Why:

* resets are predictable and can be told to users ("your hourly quota resets at
  14:00 UTC"), exactly the semantics of an ``X-RateLimit-Reset`` timestamp;
  a rolling window has no single reset instant;
* hour buckets are cheap: one upsert per account per checkpoint batch, and
  every window is an indexed sum over a bounded range; a rolling window needs
  per-event rows (or approximations) to subtract what slid out;
* the three windows nest (hour within day within month), so one bucket table
  serves all of them.

The price is the usual calendar-window burst: an account may use a full hour's
quota just before HH:00 and again just after it.

Leases and resume
-----------------
An open session holds ``lease_until``; its process renews it
(:meth:`SqliteStore.renew_leases`). Only sessions with a live lease count as
active. ``recover(now)`` (and every admission, for its account) settles
sessions whose lease expired, from their last checkpoint, reason ``expired``,
exactly once. A session ended with ``resumable=True`` keeps its totals and may
be reopened by the same account until ``end.now + resume_window_s``; after that
it is settled for good (reason ``expired``).

Auto top-up
-----------
With a :data:`~engine.store.base.TopupHook`, when a charge batch brings an
account's balance from at or above its ``auto_topup_threshold_micro`` to below
it, the hook is called after the commit (in a worker thread, not inside the
transaction); what it returns (micro-credits the host actually collected) is
recorded as an ``auto_topup`` ledger entry keyed by the triggering charge.
Crossing, not "is below": one failed payment does not turn into a payment
attempt every second. No hook, no top-up.

API keys are random 256-bit tokens, so a single SHA-256 (no slow KDF) is the
right hash: only the hex digest is stored.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeVar

import outcome
import trio

from engine.policy.types import AccountSnapshot, Code, EndReason, Usage
from engine.store.base import (
    Account,
    AdmissionCheck,
    Admitted,
    Checkpoint,
    LedgerEntry,
    Refusal,
    ResumeInfo,
    SessionEnd,
    SessionRow,
    SessionStart,
    Store,
    TopupHook,
)
from engine.store.errors import (
    IdempotencyConflict,
    SchemaTooNew,
    StoreClosed,
    StoreError,
    UnknownAccount,
    UnknownSession,
)
from engine.store.windows import calendar_windows, hour_start

__all__ = [
    "SCHEMA_VERSION",
    "SqliteStore",
    "StoreStats",
    "hash_api_key",
    "open_sqlite_store",
]

log = logging.getLogger("engine.store")

T = TypeVar("T")

# ---------------------------------------------------------------------------
# Schema. MIGRATIONS[i] brings a database from user_version i to i + 1; append
# new tuples (never edit old ones) to migrate existing files on open.
# ---------------------------------------------------------------------------

_V1: tuple[str, ...] = (
    """CREATE TABLE accounts (
        account_id TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        plan TEXT NOT NULL,
        api_key_sha256 TEXT NOT NULL UNIQUE,
        balance_micro INTEGER NOT NULL DEFAULT 0,
        auto_topup_threshold_micro INTEGER,
        auto_topup_amount_micro INTEGER,
        created_utc REAL NOT NULL
    )""",
    """CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        model TEXT NOT NULL,
        encoding TEXT NOT NULL,
        sample_rate INTEGER NOT NULL,
        channels INTEGER NOT NULL,
        owner TEXT,
        started_utc REAL NOT NULL,
        lease_until_utc REAL,
        resume_window_s REAL NOT NULL,
        resume_until_utc REAL,
        ended_utc REAL,
        end_reason TEXT,
        end_code TEXT,
        settled INTEGER NOT NULL DEFAULT 0,
        end_balance_micro INTEGER,
        resumes INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL DEFAULT -1,
        checkpoint_utc REAL,
        billed_micro INTEGER NOT NULL DEFAULT 0,
        usage_ms INTEGER NOT NULL DEFAULT 0,
        audio_ms INTEGER NOT NULL DEFAULT 0,
        speech_ms INTEGER NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        samples INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX sessions_by_account ON sessions(account_id, started_utc)",
    "CREATE INDEX sessions_open ON sessions(account_id, lease_until_utc) WHERE ended_utc IS NULL",
    "CREATE INDEX sessions_leases ON sessions(lease_until_utc) WHERE ended_utc IS NULL",
    "CREATE INDEX sessions_resumable ON sessions(resume_until_utc)"
    " WHERE ended_utc IS NOT NULL AND settled = 0",
    """CREATE TABLE ledger (
        entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        kind TEXT NOT NULL CHECK (kind IN ('charge', 'topup', 'refund', 'auto_topup')),
        amount_micro INTEGER NOT NULL,
        balance_after_micro INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        session_id TEXT,
        created_utc REAL NOT NULL
    )""",
    "CREATE INDEX ledger_by_account ON ledger(account_id, entry_id)",
    "CREATE INDEX ledger_by_session ON ledger(session_id) WHERE session_id IS NOT NULL",
    """CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TABLE usage_hourly (
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        hour_start INTEGER NOT NULL,
        usage_ms INTEGER NOT NULL DEFAULT 0,
        billed_micro INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (account_id, hour_start)
    ) WITHOUT ROWID""",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)
SCHEMA_VERSION = len(MIGRATIONS)

_CHUNK = 500  # bound on "IN (?, ?, ...)" parameter lists

_SESSION_COLS = (
    "session_id, account_id, model, encoding, sample_rate, channels, started_utc, ended_utc,"
    " end_reason, end_code, audio_ms, speech_ms, duration_ms, billed_micro, owner,"
    " lease_until_utc, resume_until_utc"
)
_ACCOUNT_COLS = "account_id, name, plan, balance_micro, auto_topup_threshold_micro, auto_topup_amount_micro"
_LEDGER_COLS = (
    "entry_id, account_id, kind, amount_micro, balance_after_micro, idempotency_key, session_id, created_utc"
)
_INSERT_LEDGER = (
    "INSERT INTO ledger (account_id, kind, amount_micro, balance_after_micro,"
    " idempotency_key, session_id, created_utc) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (idempotency_key) DO NOTHING"
)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _account(row: Sequence[Any]) -> Account:
    return Account(
        account_id=row[0],
        name=row[1],
        plan=row[2],
        balance_micro=row[3],
        auto_topup_threshold_micro=row[4],
        auto_topup_amount_micro=row[5],
    )


def _session_row(row: Sequence[Any]) -> SessionRow:
    return SessionRow(
        session_id=row[0],
        account_id=row[1],
        model=row[2],
        encoding=row[3],
        sample_rate=row[4],
        channels=row[5],
        started_utc=row[6],
        ended_utc=row[7],
        end_reason=row[8],
        end_code=row[9],
        audio_ms=row[10],
        speech_ms=row[11],
        duration_ms=row[12],
        billed_micro=row[13],
        owner=row[14],
        lease_until_utc=row[15],
        resume_until_utc=row[16],
    )


def _ledger_entry(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(
        entry_id=row[0],
        account_id=row[1],
        kind=row[2],
        amount_micro=row[3],
        balance_after_micro=row[4],
        idempotency_key=row[5],
        session_id=row[6],
        created_utc=row[7],
    )


def _chunks(items: Sequence[T], n: int = _CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@dataclass
class StoreStats:
    """Counters of one store instance (this process), for tests and benchmarks."""

    transactions: int = 0  # committed write transactions
    group_commits: int = 0  # of which: timer-driven checkpoint batches
    checkpoints_queued: int = 0
    checkpoints_applied: int = 0
    checkpoints_ignored: int = 0  # stale / repeated seq, unknown or ended session
    failed_transactions: int = 0
    auto_topups: int = 0  # auto top-ups recorded


@dataclass(frozen=True)
class _Crossing:
    account: Account  # as it was right after the charge
    trigger_key: str  # idempotency key of the charge that crossed the threshold


@dataclass
class _Txn:
    """What one write transaction did besides its result."""

    conn: sqlite3.Connection
    crossings: list[_Crossing] = field(default_factory=list)
    applied: int = 0
    ignored: int = 0


@dataclass
class _Request:
    fn: Callable[[Any], Any] | None  # None: commit queued checkpoints only
    write: bool
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome[Any] | None = None

    def finish(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        self.done.set()


_WAKE = object()  # sent to the actor when the first checkpoint is queued


class SqliteStore:
    """SQLite-backed :class:`~engine.store.base.Store` (see the module docstring).

    Open it with :meth:`open` (or the :func:`open_sqlite_store` context
    manager) and close it with :meth:`aclose`. Not thread-safe: use it from the
    Trio loop that opened it.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        path: str,
        commit_interval: float,
        topup_hook: TopupHook | None,
        max_pending: int,
        threaded: bool = True,
    ) -> None:
        self.path = path
        self.commit_interval = commit_interval
        self.stats = StoreStats()
        self._conn = conn
        self._topup_hook = topup_hook
        self._max_pending = max_pending
        self._threaded = threaded
        self._limiter = trio.CapacityLimiter(1)
        self._send, self._recv = trio.open_memory_channel[object](math.inf)
        self._pending: list[Checkpoint] = []
        self._deadline = math.inf
        self._closing = False
        self._closed = trio.Event()
        self._aux: trio.Nursery | None = None
        self._topups_in_flight = 0
        self._topups_idle = trio.Event()
        self._topups_idle.set()

    # ------------------------------------------------------------------ open/close

    @classmethod
    async def open(
        cls,
        path: str | PathLike[str],
        *,
        commit_interval: float = 1.0,
        topup_hook: TopupHook | None = None,
        busy_timeout_s: float = 10.0,
        synchronous: str = "FULL",
        max_pending: int = 100_000,
        nursery: trio.Nursery | None = None,
        threaded: bool = True,
    ) -> SqliteStore:
        """Open (creating or migrating) the database file and start the store actor.

        The actor runs in ``nursery`` if given, else as a Trio system task (it
        is then cancelled when the main task of ``trio.run`` returns). Always
        :meth:`aclose` the store to write what is queued.

        ``threaded=False`` is for tests on a Trio ``MockClock`` with autojump
        only: database calls then run on the Trio thread (blocking the loop for
        their duration) so that waiting for the store never looks like "every
        task is idle" and the mock clock does not jump forward meanwhile.
        Production code must keep the default.
        """
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"bad synchronous mode {synchronous!r}")
        spath = str(path)
        if threaded:
            conn = await trio.to_thread.run_sync(_connect, spath, busy_timeout_s, synchronous.upper())
        else:
            conn = _connect(spath, busy_timeout_s, synchronous.upper())
        store = cls(
            conn,
            path=spath,
            commit_interval=commit_interval,
            topup_hook=topup_hook,
            max_pending=max_pending,
            threaded=threaded,
        )
        if nursery is not None:
            await nursery.start(store._actor)
        else:
            started = trio.Event()

            async def system_actor() -> None:
                await store._actor(started=started)

            trio.lowlevel.spawn_system_task(system_actor, name=f"sqlite-store:{spath}")
            await started.wait()
        return store

    async def aclose(self, *, flush: bool = True) -> None:
        """Write what is queued (unless ``flush=False``: simulates a crash), then close.

        ``flush=False`` drops queued checkpoints and in-flight auto top-ups, like
        a killed process would; committed data is unaffected.
        """
        if self._closing:
            await self._closed.wait()
            return
        try:
            if flush:
                with suppress(StoreClosed):
                    await self.flush()
        finally:
            self._closing = True
            if not flush:
                self._pending.clear()
                self._deadline = math.inf
            self._send.close()  # the actor commits what is still queued, then stops
            await self._closed.wait()

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ the actor

    async def _actor(
        self,
        *,
        started: trio.Event | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as aux:
                self._aux = aux
                if started is not None:
                    started.set()
                task_status.started()
                await self._serve()
                aux.cancel_scope.cancel()  # in-flight auto top-ups of a crash-close
        finally:
            self._closing = True
            self._send.close()
            while True:
                try:
                    item = self._recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if isinstance(item, _Request):
                    item.finish(outcome.Error(StoreClosed("the store is closed")))
            self._pending.clear()
            try:
                self._conn.close()
            finally:
                self._closed.set()

    async def _serve(self) -> None:
        while True:
            if self._pending and (
                trio.current_time() >= self._deadline or len(self._pending) >= self._max_pending
            ):
                await self._execute(None)
                continue
            item: object = None
            with trio.move_on_at(self._deadline if self._pending else math.inf):
                try:
                    item = await self._recv.receive()
                except trio.EndOfChannel:
                    if self._pending:  # queued after the closing flush
                        await self._execute(None)
                    return
            if isinstance(item, _Request):
                await self._execute(item)

    async def _execute(self, req: _Request | None) -> None:
        if req is not None and not req.write:
            got = await self._run(self._read_txn, req.fn)
            req.finish(got)
            return
        cps = self._pending
        self._pending = []
        self._deadline = math.inf
        fn: Callable[[_Txn], Any] | None = None if req is None else req.fn
        try:
            done: tuple[_Txn, outcome.Outcome[Any] | None] = await self._run(self._write_txn, cps, fn)
            txn, res = done
        except Exception as exc:  # the whole transaction rolled back
            self.stats.failed_transactions += 1
            if cps:  # keep them for the next try, in order
                self._pending[:0] = cps
                self._deadline = trio.current_time() + self.commit_interval
            if req is None:
                log.warning("group commit of %d checkpoints failed: %r (will retry)", len(cps), exc)
            else:
                req.finish(outcome.Error(exc))
            return
        self.stats.transactions += 1
        if req is None:
            self.stats.group_commits += 1
        self.stats.checkpoints_applied += txn.applied
        self.stats.checkpoints_ignored += txn.ignored
        for crossing in txn.crossings:
            self._start_auto_topup(crossing)
        if req is not None:
            req.finish(res if res is not None else outcome.Value(None))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking database work: on the store's worker thread (one at a time)."""
        if self._threaded:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        result = fn(*args)
        await trio.lowlevel.checkpoint()
        return result

    def _read_txn(self, fn: Callable[[sqlite3.Connection], Any] | None) -> outcome.Outcome[Any]:
        conn = self._conn
        try:
            conn.execute("BEGIN")
            try:
                return outcome.Value(fn(conn) if fn is not None else None)
            finally:
                conn.execute("COMMIT")
        except Exception as exc:
            return outcome.Error(exc)

    def _write_txn(
        self, cps: list[Checkpoint], fn: Callable[[_Txn], Any] | None
    ) -> tuple[_Txn, outcome.Outcome[Any] | None]:
        """One ``BEGIN IMMEDIATE`` transaction: queued checkpoints, then ``fn``.

        ``fn`` runs inside a savepoint: if it raises, only its own changes are
        rolled back, the checkpoints still commit, and the error is returned.
        If the transaction itself fails, everything rolls back and it raises.
        """
        conn = self._conn
        txn = _Txn(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if cps:
                self._apply_checkpoints(txn, cps)
            res: outcome.Outcome[Any] | None = None
            if fn is not None:
                conn.execute("SAVEPOINT op")
                sub = _Txn(conn)
                try:
                    res = outcome.Value(fn(sub))
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    res = outcome.Error(exc)
                else:
                    txn.crossings += sub.crossings
                    txn.applied += sub.applied
                    txn.ignored += sub.ignored
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return txn, res

    async def _call(self, fn: Callable[[Any], T], *, write: bool) -> T:
        if self._closing:
            raise StoreClosed("the store is closed")
        req = _Request(fn, write)
        try:
            self._send.send_nowait(req)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreClosed("the store is closed") from None
        await req.done.wait()
        assert req.result is not None
        result: T = req.result.unwrap()
        return result

    # ------------------------------------------------------------------ auto top-up

    def _start_auto_topup(self, crossing: _Crossing) -> None:
        if self._topup_hook is None or self._aux is None:
            return
        if self._topups_in_flight == 0:
            self._topups_idle = trio.Event()
        self._topups_in_flight += 1
        self._aux.start_soon(self._auto_topup, crossing)

    async def _auto_topup(self, crossing: _Crossing) -> None:
        try:
            hook = self._topup_hook
            assert hook is not None
            acct = crossing.account
            key = f"auto_topup:{crossing.trigger_key}"
            if self._threaded:
                amount = await trio.to_thread.run_sync(hook, acct, acct.balance_micro, key)
            else:
                amount = hook(acct, acct.balance_micro, key)
            if amount is None or amount <= 0:
                log.info("auto top-up of %s: hook collected nothing", acct.account_id)
                return
            await self._call(
                functools.partial(
                    self._credit_fn,
                    account_id=acct.account_id,
                    amount_micro=int(amount),
                    key=key,
                    kind="auto_topup",
                    now_utc=time.time(),
                ),
                write=True,
            )
            self.stats.auto_topups += 1
        except Exception:
            log.exception("auto top-up failed for %s", crossing.account.account_id)
        finally:
            self._topups_in_flight -= 1
            if self._topups_in_flight == 0:
                self._topups_idle.set()

    # ------------------------------------------------------------------ checkpoints

    def _apply_checkpoints(self, txn: _Txn, cps: Sequence[Checkpoint]) -> None:
        """Apply cumulative checkpoints (any order, any repeats) inside ``txn``."""
        conn = txn.conn
        by_sid: dict[str, list[Checkpoint]] = {}
        for cp in cps:
            lst = by_sid.get(cp.session_id)
            if lst is None:
                by_sid[cp.session_id] = [cp]
            else:
                lst.append(cp)
        rows: dict[str, tuple[str, int, int, int, float | None]] = {}
        sids = list(by_sid)
        for chunk in _chunks(sids):
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(
                "SELECT session_id, account_id, seq, billed_micro, usage_ms, ended_utc"
                f" FROM sessions WHERE session_id IN ({marks})",
                chunk,
            ):
                rows[r[0]] = (r[1], r[2], r[3], r[4], r[5])
        session_updates: list[tuple[Any, ...]] = []
        usage: dict[tuple[str, int], list[int]] = {}
        # per account: [(session_id, seq, amount, now_utc)]
        charges: dict[str, list[tuple[str, int, int, float]]] = {}
        applied = ignored = 0
        for sid, lst in by_sid.items():
            row = rows.get(sid)
            if row is None or row[4] is not None:
                ignored += len(lst)
                continue
            account_id, seq, billed, used, _ = row
            if len(lst) > 1:
                lst.sort(key=lambda c: c.seq)
            last: Checkpoint | None = None
            charge_amount = 0
            for cp in lst:
                if cp.seq <= seq:
                    ignored += 1
                    continue
                applied += 1
                seq = cp.seq
                last = cp
                d_billed = max(cp.billed_micro - billed, 0)
                d_usage = max(cp.usage_ms - used, 0)
                billed += d_billed
                used += d_usage
                charge_amount += d_billed
                if d_usage or d_billed:
                    key = (account_id, hour_start(cp.now_utc))
                    bucket = usage.get(key)
                    if bucket is None:
                        usage[key] = [d_usage, d_billed]
                    else:
                        bucket[0] += d_usage
                        bucket[1] += d_billed
            if last is None:
                continue
            session_updates.append(
                (
                    seq,
                    last.now_utc,
                    billed,
                    used,
                    last.audio_ms,
                    last.speech_ms,
                    last.duration_ms,
                    last.samples,
                    sid,
                )
            )
            if charge_amount:
                charges.setdefault(account_id, []).append((sid, seq, charge_amount, last.now_utc))
        txn.applied += applied
        txn.ignored += ignored
        if session_updates:
            conn.executemany(
                "UPDATE sessions SET seq = ?, checkpoint_utc = ?, billed_micro = ?, usage_ms = ?,"
                " audio_ms = ?, speech_ms = ?, duration_ms = ?, samples = ?"
                " WHERE session_id = ?",
                session_updates,
            )
        if usage:
            conn.executemany(
                "INSERT INTO usage_hourly (account_id, hour_start, usage_ms, billed_micro)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (account_id, hour_start) DO UPDATE SET"
                " usage_ms = usage_ms + excluded.usage_ms,"
                " billed_micro = billed_micro + excluded.billed_micro",
                [(a, h, v[0], v[1]) for (a, h), v in usage.items()],
            )
        if charges:
            self._charge(txn, charges)

    def _charge(self, txn: _Txn, charges: dict[str, list[tuple[str, int, int, float]]]) -> None:
        conn = txn.conn
        accounts: dict[str, Account] = {}
        ids = list(charges)
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id IN ({marks})", chunk
            ):
                accounts[r[0]] = _account(r)
        balance_updates: list[tuple[int, str]] = []
        for account_id, items in charges.items():
            acct = accounts[account_id]
            before = bal = acct.balance_micro
            last_key = ""
            for sid, seq, amount, now in items:
                key = f"{sid}:{seq}"
                after = bal - amount
                cur = conn.execute(_INSERT_LEDGER, (account_id, "charge", -amount, after, key, sid, now))
                if cur.rowcount == 1:
                    bal = after
                    last_key = key
                else:  # cannot happen while seqs guard the session; never charge twice
                    log.error("ledger key %s already present: charge skipped", key)
            if bal == before:
                continue
            balance_updates.append((bal, account_id))
            threshold = acct.auto_topup_threshold_micro
            if self._topup_hook is not None and threshold is not None and before >= threshold > bal:
                txn.crossings.append(_Crossing(account=_replace_balance(acct, bal), trigger_key=last_key))
        if balance_updates:
            conn.executemany("UPDATE accounts SET balance_micro = ? WHERE account_id = ?", balance_updates)

    # ------------------------------------------------------------------ helpers (in thread)

    @staticmethod
    def _account_by_id(conn: sqlite3.Connection, account_id: str) -> Account | None:
        r = conn.execute(
            f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id = ?", (account_id,)
        ).fetchone()
        return None if r is None else _account(r)

    @staticmethod
    def _usage(conn: sqlite3.Connection, account_id: str, now_utc: float) -> Usage:
        w = calendar_windows(now_utc)
        r = conn.execute(
            "SELECT"
            " COALESCE(SUM(CASE WHEN hour_start = ? THEN usage_ms END), 0),"
            " COALESCE(SUM(CASE WHEN hour_start >= ? AND hour_start < ? THEN usage_ms END), 0),"
            " COALESCE(SUM(usage_ms), 0)"
            " FROM usage_hourly WHERE account_id = ? AND hour_start >= ? AND hour_start < ?",
            (w.hour_start, w.day_start, w.day_end, account_id, w.month_start, w.month_end),
        ).fetchone()
        return Usage(hour_ms=r[0], day_ms=r[1], month_ms=r[2])

    def _snapshot_in(
        self, conn: sqlite3.Connection, account: Account, now_utc: float, exclude: str | None
    ) -> AccountSnapshot:
        (active,) = conn.execute(
            "SELECT COUNT(*) FROM sessions WHERE account_id = ? AND ended_utc IS NULL"
            " AND lease_until_utc > ? AND session_id != ?",
            (account.account_id, now_utc, exclude or ""),
        ).fetchone()
        return AccountSnapshot(
            account_id=account.account_id,
            plan=account.plan,
            balance_micro=account.balance_micro,
            active_sessions=active,
            usage=self._usage(conn, account.account_id, now_utc),
        )

    @staticmethod
    def _settle_expired(conn: sqlite3.Connection, now_utc: float, account_id: str | None) -> int:
        """Settle (exactly once) sessions whose lease or resume window is over."""
        where_acct = "" if account_id is None else " AND account_id = :acct"
        params = {"now": now_utc, "acct": account_id}
        n = conn.execute(
            "UPDATE sessions SET ended_utc = COALESCE(checkpoint_utc, started_utc),"
            " end_reason = :reason, end_code = NULL, settled = 1, resume_until_utc = NULL,"
            " end_balance_micro = (SELECT balance_micro FROM accounts a"
            "   WHERE a.account_id = sessions.account_id)"
            " WHERE ended_utc IS NULL AND lease_until_utc <= :now" + where_acct,
            {**params, "reason": EndReason.EXPIRED.value},
        ).rowcount
        n += conn.execute(
            "UPDATE sessions SET settled = 1, end_reason = :reason"
            " WHERE ended_utc IS NOT NULL AND settled = 0 AND resume_until_utc <= :now" + where_acct,
            {**params, "reason": EndReason.EXPIRED.value},
        ).rowcount
        return n

    def _credit_fn(
        self,
        txn: _Txn,
        *,
        account_id: str,
        amount_micro: int,
        key: str,
        kind: str,
        now_utc: float,
        session_id: str | None = None,
    ) -> int:
        conn = txn.conn
        prev = conn.execute(
            "SELECT account_id, kind, amount_micro FROM ledger WHERE idempotency_key = ?", (key,)
        ).fetchone()
        if prev is not None:
            if tuple(prev) != (account_id, kind, amount_micro):
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was used for {prev[1]} of {prev[2]} on {prev[0]}"
                )
            (bal,) = conn.execute(
                "SELECT balance_micro FROM accounts WHERE account_id = ?", (account_id,)
            ).fetchone()
            return int(bal)
        r = conn.execute("SELECT balance_micro FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
        if r is None:
            raise UnknownAccount(account_id)
        bal = int(r[0]) + amount_micro
        conn.execute(_INSERT_LEDGER, (account_id, kind, amount_micro, bal, key, session_id, now_utc))
        conn.execute("UPDATE accounts SET balance_micro = ? WHERE account_id = ?", (bal, account_id))
        return bal

    # ------------------------------------------------------------------ Store API

    async def create_account(
        self,
        *,
        plan: str,
        credits_micro: int = 0,
        name: str = "",
        auto_topup_threshold_micro: int | None = None,
        auto_topup_amount_micro: int | None = None,
    ) -> tuple[Account, str]:
        if credits_micro < 0:
            raise ValueError("initial credits must not be negative")
        account_id = "acct_" + secrets.token_hex(8)
        api_key = "sk_" + secrets.token_urlsafe(32)
        now = time.time()

        def fn(txn: _Txn) -> Account:
            txn.conn.execute(
                "INSERT INTO accounts (account_id, name, plan, api_key_sha256, balance_micro,"
                " auto_topup_threshold_micro, auto_topup_amount_micro, created_utc)"
                " VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    account_id,
                    name,
                    plan,
                    hash_api_key(api_key),
                    auto_topup_threshold_micro,
                    auto_topup_amount_micro,
                    now,
                ),
            )
            if credits_micro:
                self._credit_fn(
                    txn,
                    account_id=account_id,
                    amount_micro=credits_micro,
                    key=f"{account_id}:initial",
                    kind="topup",
                    now_utc=now,
                )
            acct = self._account_by_id(txn.conn, account_id)
            assert acct is not None
            return acct

        return await self._call(fn, write=True), api_key

    async def authenticate(self, api_key: str) -> Account | None:
        digest = hash_api_key(api_key)

        def fn(conn: sqlite3.Connection) -> Account | None:
            r = conn.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE api_key_sha256 = ?", (digest,)
            ).fetchone()
            return None if r is None else _account(r)

        return await self._call(fn, write=False)

    async def get_account(self, account_id: str) -> Account | None:
        return await self._call(lambda conn: self._account_by_id(conn, account_id), write=False)

    async def topup(self, account_id: str, amount_micro: int, idempotency_key: str) -> int:
        return await self._credit(account_id, amount_micro, idempotency_key, "topup", None)

    async def refund(
        self,
        account_id: str,
        amount_micro: int,
        idempotency_key: str,
        session_id: str | None = None,
    ) -> int:
        """Give credits back (e.g. a billing mistake); a ``refund`` ledger entry. Once per key."""
        return await self._credit(account_id, amount_micro, idempotency_key, "refund", session_id)

    async def _credit(
        self, account_id: str, amount_micro: int, key: str, kind: str, session_id: str | None
    ) -> int:
        if amount_micro <= 0:
            raise ValueError(f"{kind} amount must be positive, got {amount_micro}")
        if not key:
            raise ValueError("an idempotency key is required")
        return await self._call(
            functools.partial(
                self._credit_fn,
                account_id=account_id,
                amount_micro=amount_micro,
                key=key,
                kind=kind,
                now_utc=time.time(),
                session_id=session_id,
            ),
            write=True,
        )

    async def set_auto_topup(
        self, account_id: str, threshold_micro: int | None, amount_micro: int | None
    ) -> Account:
        """Configure (or, with ``None``, disable) auto top-up of an account."""
        if (threshold_micro is None) != (amount_micro is None):
            raise ValueError("give both threshold and amount, or neither")
        if amount_micro is not None and amount_micro <= 0:
            raise ValueError("the auto top-up amount must be positive")

        def fn(txn: _Txn) -> Account:
            n = txn.conn.execute(
                "UPDATE accounts SET auto_topup_threshold_micro = ?, auto_topup_amount_micro = ?"
                " WHERE account_id = ?",
                (threshold_micro, amount_micro, account_id),
            ).rowcount
            acct = self._account_by_id(txn.conn, account_id)
            if n == 0 or acct is None:
                raise UnknownAccount(account_id)
            return acct

        return await self._call(fn, write=True)

    async def set_plan(self, account_id: str, plan: str) -> Account:
        def fn(txn: _Txn) -> Account:
            txn.conn.execute("UPDATE accounts SET plan = ? WHERE account_id = ?", (plan, account_id))
            acct = self._account_by_id(txn.conn, account_id)
            if acct is None:
                raise UnknownAccount(account_id)
            return acct

        return await self._call(fn, write=True)

    async def begin_session(self, req: SessionStart, check: AdmissionCheck) -> Admitted | Refusal:
        """See :meth:`engine.store.base.Store.begin_session`.

        For a resume (``req.resume_id``), the session keeps its id: ``Admitted.session_id``
        is ``req.resume_id`` (``req.session_id`` is unused) and checkpoints go on from
        ``ResumeInfo.seq + 1``. ``ResumeInfo.seq`` is -1 if it had no checkpoint yet.
        Retrying a start with the same ``session_id``, account and owner while that
        session is open returns it again without re-running ``check``.
        """

        def fn(txn: _Txn) -> Admitted | Refusal:
            conn = txn.conn
            acct = self._account_by_id(conn, req.account_id)
            if acct is None:
                return Refusal(code=Code.UNAUTHORIZED, message="unknown account")
            self._settle_expired(conn, req.now_utc, req.account_id)
            sid = req.resume_id if req.resume_id is not None else req.session_id
            row = conn.execute(
                "SELECT account_id, owner, ended_utc, settled, resume_until_utc, seq,"
                " duration_ms, audio_ms, speech_ms, samples, billed_micro, usage_ms"
                " FROM sessions WHERE session_id = ?",
                (sid,),
            ).fetchone()
            if req.resume_id is not None:
                if (
                    row is None
                    or row[0] != req.account_id
                    or row[2] is None  # still open: nothing to resume
                    or row[3]  # settled for good
                    or row[4] is None
                    or row[4] <= req.now_utc
                ):
                    return Refusal(
                        code=Code.SESSION_NOT_FOUND,
                        message=f"no resumable session {req.resume_id}",
                    )
            elif row is not None:
                if row[0] == req.account_id and row[1] == req.owner and row[2] is None:
                    return Admitted(session_id=sid, snapshot=self._snapshot_in(conn, acct, req.now_utc, sid))
                raise StoreError(f"session id {sid} already exists")
            snap = self._snapshot_in(conn, acct, req.now_utc, sid)
            refusal = check(snap)
            if refusal is not None:
                return refusal
            lease_until = req.now_utc + req.lease_s
            if req.resume_id is None:
                conn.execute(
                    "INSERT INTO sessions (session_id, account_id, model, encoding, sample_rate,"
                    " channels, owner, started_utc, lease_until_utc, resume_window_s)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        sid,
                        req.account_id,
                        req.model,
                        req.encoding,
                        req.sample_rate,
                        req.channels,
                        req.owner,
                        req.now_utc,
                        lease_until,
                        req.resume_window_s,
                    ),
                )
                return Admitted(session_id=sid, snapshot=snap)
            assert row is not None
            conn.execute(
                "UPDATE sessions SET ended_utc = NULL, end_reason = NULL, end_code = NULL,"
                " end_balance_micro = NULL, resume_until_utc = NULL, owner = ?,"
                " lease_until_utc = ?, resume_window_s = ?, resumes = resumes + 1"
                " WHERE session_id = ?",
                (req.owner, lease_until, req.resume_window_s, sid),
            )
            info = ResumeInfo(
                session_id=sid,
                seq=row[5],
                duration_ms=row[6],
                audio_ms=row[7],
                speech_ms=row[8],
                samples=row[9],
                billed_micro=row[10],
                usage_ms=row[11],
            )
            return Admitted(session_id=sid, snapshot=snap, resumed=info)

        return await self._call(fn, write=True)

    async def snapshot(self, account_id: str, now_utc: float, exclude_session: str | None) -> AccountSnapshot:
        """The account as committed (this process's queued checkpoints not included)."""

        def fn(conn: sqlite3.Connection) -> AccountSnapshot:
            acct = self._account_by_id(conn, account_id)
            if acct is None:
                raise UnknownAccount(account_id)
            return self._snapshot_in(conn, acct, now_utc, exclude_session)

        return await self._call(fn, write=False)

    async def session_snapshot(self, session_id: str, now_utc: float) -> tuple[AccountSnapshot, int]:
        """The session's account snapshot (excluding the session) and, read in the same
        transaction, the seq of the session's last *committed* checkpoint: exactly the
        ``persisted_seq`` the session policy's ``refresh_account`` wants (the balance and
        usage reflect this session's billing up to that seq, not the queued rest)."""

        def fn(conn: sqlite3.Connection) -> tuple[AccountSnapshot, int]:
            row = conn.execute(
                "SELECT account_id, seq FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise UnknownSession(session_id)
            acct = self._account_by_id(conn, row[0])
            assert acct is not None
            return self._snapshot_in(conn, acct, now_utc, session_id), int(row[1])

        return await self._call(fn, write=False)

    async def checkpoint(self, cp: Checkpoint) -> None:
        if self._closing:
            raise StoreClosed("the store is closed")
        if not self._pending:
            self._deadline = trio.current_time() + self.commit_interval
            self._send.send_nowait(_WAKE)
        self._pending.append(cp)
        self.stats.checkpoints_queued += 1
        if len(self._pending) == self._max_pending:
            self._send.send_nowait(_WAKE)

    async def renew_leases(self, owner: str, session_ids: list[str], until_utc: float) -> None:
        """Extend the leases of ``owner``'s open sessions (renew them all in one call)."""
        if not session_ids:
            return

        def fn(txn: _Txn) -> None:
            for chunk in _chunks(session_ids):
                marks = ",".join("?" * len(chunk))
                txn.conn.execute(
                    "UPDATE sessions SET lease_until_utc = ? WHERE owner = ?"
                    f" AND ended_utc IS NULL AND session_id IN ({marks})",
                    (until_utc, owner, *chunk),
                )

        await self._call(fn, write=True)

    async def end_session(self, end: SessionEnd) -> int:
        cp = end.checkpoint

        def fn(txn: _Txn) -> int:
            conn = txn.conn
            row = conn.execute(
                "SELECT account_id, ended_utc, end_balance_micro, resume_window_s"
                " FROM sessions WHERE session_id = ?",
                (cp.session_id,),
            ).fetchone()
            if row is None:
                raise UnknownSession(cp.session_id)
            account_id, ended, end_balance, window = row
            if ended is not None:  # already ended: same answer, no change
                if end_balance is None:
                    (end_balance,) = conn.execute(
                        "SELECT balance_micro FROM accounts WHERE account_id = ?", (account_id,)
                    ).fetchone()
                return int(end_balance)
            self._apply_checkpoints(txn, [cp])
            (bal,) = conn.execute(
                "SELECT balance_micro FROM accounts WHERE account_id = ?", (account_id,)
            ).fetchone()
            conn.execute(
                "UPDATE sessions SET ended_utc = ?, end_reason = ?, end_code = ?,"
                " resume_until_utc = ?, settled = ?, end_balance_micro = ?,"
                " lease_until_utc = NULL WHERE session_id = ?",
                (
                    cp.now_utc,
                    end.reason.value,
                    None if end.code is None else end.code.value,
                    cp.now_utc + window if end.resumable else None,
                    0 if end.resumable else 1,
                    bal,
                    cp.session_id,
                ),
            )
            return int(bal)

        return await self._call(fn, write=True)

    async def recover(self, now_utc: float) -> int:
        return await self._call(lambda txn: self._settle_expired(txn.conn, now_utc, None), write=True)

    async def flush(self) -> None:
        """Commit every queued checkpoint now, and wait for auto top-ups they triggered."""
        await self._call(lambda txn: None, write=True)
        await self._topups_idle.wait()

    # ------------------------------------------------------------------ queries (CLI)

    async def list_accounts(self) -> list[Account]:
        def fn(conn: sqlite3.Connection) -> list[Account]:
            return [
                _account(r)
                for r in conn.execute(
                    f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY created_utc, account_id"
                )
            ]

        return await self._call(fn, write=False)

    async def usage(self, account_id: str, now_utc: float) -> Usage:
        """Usage of the account in the calendar UTC hour, day and month of ``now_utc``."""
        return await self._call(lambda conn: self._usage(conn, account_id, now_utc), write=False)

    async def get_session(self, session_id: str) -> SessionRow | None:
        def fn(conn: sqlite3.Connection) -> SessionRow | None:
            r = conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            return None if r is None else _session_row(r)

        return await self._call(fn, write=False)

    async def list_sessions(
        self,
        account_id: str | None = None,
        *,
        active_at: float | None = None,
        limit: int | None = None,
    ) -> list[SessionRow]:
        """Sessions, newest first; with ``active_at``, only open ones with a live lease then."""
        where: list[str] = []
        params: list[Any] = []
        if account_id is not None:
            where.append("account_id = ?")
            params.append(account_id)
        if active_at is not None:
            where.append("ended_utc IS NULL AND lease_until_utc > ?")
            params.append(active_at)
        sql = f"SELECT {_SESSION_COLS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_utc DESC, session_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def fn(conn: sqlite3.Connection) -> list[SessionRow]:
            return [_session_row(r) for r in conn.execute(sql, params)]

        return await self._call(fn, write=False)

    async def ledger(
        self, account_id: str | None = None, *, after_entry_id: int = 0, limit: int | None = None
    ) -> list[LedgerEntry]:
        """Ledger entries in order (``after_entry_id`` pages through long ledgers)."""
        sql = f"SELECT {_LEDGER_COLS} FROM ledger WHERE entry_id > ?"
        params: list[Any] = [after_entry_id]
        if account_id is not None:
            sql += " AND account_id = ?"
            params.append(account_id)
        sql += " ORDER BY entry_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def fn(conn: sqlite3.Connection) -> list[LedgerEntry]:
            return [_ledger_entry(r) for r in conn.execute(sql, params)]

        return await self._call(fn, write=False)

    async def check_integrity(self) -> list[str]:
        """Problems found (empty if fine): balance != sum(ledger), broken balance_after chain,
        or a session whose billed total differs from its charges."""

        def fn(conn: sqlite3.Connection) -> list[str]:
            problems: list[str] = []
            for acct, bal, total in conn.execute(
                "SELECT a.account_id, a.balance_micro,"
                " (SELECT COALESCE(SUM(amount_micro), 0) FROM ledger l"
                "  WHERE l.account_id = a.account_id) FROM accounts a"
            ):
                if bal != total:
                    problems.append(f"account {acct}: balance {bal} != ledger sum {total}")
            running: dict[str, int] = {}
            for eid, acct, amount, after in conn.execute(
                "SELECT entry_id, account_id, amount_micro, balance_after_micro FROM ledger ORDER BY entry_id"
            ):
                running[acct] = running.get(acct, 0) + amount
                if running[acct] != after:
                    problems.append(f"ledger entry {eid}: balance_after {after} != {running[acct]}")
            for sid, billed, charged in conn.execute(
                "SELECT s.session_id, s.billed_micro,"
                " (SELECT COALESCE(-SUM(amount_micro), 0) FROM ledger l"
                "  WHERE l.session_id = s.session_id AND l.kind = 'charge') FROM sessions s"
            ):
                if billed != charged:
                    problems.append(f"session {sid}: billed {billed} != charged {charged}")
            return problems

        return await self._call(fn, write=False)


def _replace_balance(acct: Account, balance_micro: int) -> Account:
    return Account(
        account_id=acct.account_id,
        name=acct.name,
        plan=acct.plan,
        balance_micro=balance_micro,
        auto_topup_threshold_micro=acct.auto_topup_threshold_micro,
        auto_topup_amount_micro=acct.auto_topup_amount_micro,
    )


def _connect(path: str, busy_timeout_s: float, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"could not switch {path} to WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")  # another process may be migrating right now
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema version {version} is newer than this engine's {SCHEMA_VERSION}"
            )
        for v in range(version, SCHEMA_VERSION):
            for stmt in MIGRATIONS[v]:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v + 1}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@asynccontextmanager
async def open_sqlite_store(path: str | PathLike[str], **kwargs: Any) -> AsyncIterator[SqliteStore]:
    """``async with open_sqlite_store(path, ...) as store:`` -- :meth:`SqliteStore.open`,
    then :meth:`SqliteStore.aclose` (flushing) on exit."""
    store = await SqliteStore.open(path, **kwargs)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


if TYPE_CHECKING:

    def _implements_store(store: SqliteStore) -> Store:
        return store  # mypy checks that SqliteStore satisfies the Store protocol
