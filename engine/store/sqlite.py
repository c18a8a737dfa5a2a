"""The embedded default :class:`~engine.store.base.Store`: one SQLite file.

Concurrency model
-----------------
* One **store actor** per process owns the ``sqlite3`` connection. Every call
  (``begin_session``, ``end_session``, reads, ...) is a request sent to the
  actor through a Trio channel; the actor runs it with
  ``trio.to_thread.run_sync`` under a ``CapacityLimiter(1)``, so the blocking
  sqlite3 work never runs on the Trio loop and the connection
  (``check_same_thread=False``) is used by one worker thread at a time.
* The actor serves **everything queued** (up to a bound) in **one** thread hop:
  the write requests in one transaction, each in its own savepoint (one that
  fails is rolled back alone and gets its error), then the reads (all queued
  ``session_snapshot`` calls are answered by one statement). A request waits at
  most for the hop in flight (e.g. one group commit) plus its own.
* ``checkpoint()`` only queues. The actor writes everything queued at most
  ``commit_interval`` (default 1 s) after the first queued item, in **one**
  transaction (group commit), in the same hop as whatever requests are queued
  then; ``flush()`` forces it. Other writes (admission, end, ...) do not wait
  for, nor carry, the queued checkpoints. If the checkpoints fail, the
  requests of the hop are run again without them and they are retried later.
* Cost model: while the Trio thread is busy, the worker thread waits for the
  GIL after every sqlite3 call (at least the switch interval, 5 ms by
  default; much longer if the Trio thread drops and retakes the GIL more often
  than that, e.g. around short syscalls). So the store counts **calls**, not
  rows: a group commit is four calls whatever the number of sessions
  (``BEGIN IMMEDIATE``, one read of the state as JSON, one insert into a temp
  view whose trigger runs one bulk ``json_each`` statement per table,
  ``COMMIT``), an admission usually four, a batch of session snapshots one.
* Every write transaction is ``BEGIN IMMEDIATE``: it takes the database write
  lock up front, so two processes sharing the file serialise their admissions
  (the SQLite write lock *is* the cross-process admission lock) and nobody can
  read a snapshot, decide, and then lose a race to another writer.
  ``busy_timeout`` makes a waiting writer block instead of failing.
* ``snapshot()`` reads what is committed; :meth:`SqliteStore.session_snapshot`
  also returns the seq of the session's last committed checkpoint, read in the
  same statement (what the session policy's ``persisted_seq`` wants).
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
* hour buckets are cheap: one upserted row per account per checkpoint batch, and
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
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
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

# ---------------------------------------------------------------------------
# Bulk statements. The worker thread re-acquires the GIL after every sqlite3
# call (prepare, each step, each fetched row), which takes up to the switch
# interval (5 ms) while the Trio thread is busy: what costs is the number of
# calls, not the number of rows. So a group commit is a handful of statements
# whatever the number of sessions: its rows travel as one JSON array parameter
# (``json_each``), its reads come back as JSON aggregates in one row, and its
# four writes run in one call (the ``cp_write`` trigger). (Only integers and
# text come back as JSON: SQLite prints reals with 15 significant digits.)
# ---------------------------------------------------------------------------

_HAS_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)  # else executemany (slower)


def _j(i: int) -> str:
    return f"json_extract(value, '$[{i}]')"


_json_encoder = msgspec.json.Encoder()
_json_loads = msgspec.json.decode


def _json(rows: object) -> str:
    """JSON text (a str: SQLite would take bytes as a BLOB); floats round-trip exactly."""
    return _json_encoder.encode(rows).decode()


# ?1: the batch's session ids; ?2: the ledger keys its charges would use.
_CP_STATE = (
    "SELECT"
    " (SELECT json_group_array(json_array(s.session_id, s.account_id, s.seq, s.billed_micro,"
    "   s.usage_ms, s.ended_utc IS NOT NULL))"
    "  FROM sessions s WHERE s.session_id IN (SELECT value FROM json_each(?1))),"
    f" (SELECT json_group_array(json_array({_ACCOUNT_COLS})) FROM accounts"
    "  WHERE account_id IN (SELECT s.account_id FROM sessions s"
    "   WHERE s.session_id IN (SELECT value FROM json_each(?1)) AND s.ended_utc IS NULL)),"
    " (SELECT json_group_array(idempotency_key) FROM ledger"
    "  WHERE idempotency_key IN (SELECT value FROM json_each(?2)))"
)
# rows: [session_id, seq, checkpoint_utc, billed, usage, audio, speech, duration, samples]
_CP_SESSION_FIELDS: tuple[str, ...] = (
    "seq",
    "checkpoint_utc",
    "billed_micro",
    "usage_ms",
    "audio_ms",
    "speech_ms",
    "duration_ms",
    "samples",
)
_CP_SESSIONS = (
    "UPDATE sessions SET "
    + ", ".join(f"{c} = j.{c}" for c in _CP_SESSION_FIELDS)
    + " FROM (SELECT "
    + ", ".join(f"{_j(i)} AS {c}" for i, c in enumerate(("session_id", *_CP_SESSION_FIELDS)))
    + " FROM json_each(?)) AS j WHERE sessions.session_id = j.session_id"
)
_CP_SESSIONS_MANY = (
    "UPDATE sessions SET "
    + ", ".join(f"{c} = ?{i + 2}" for i, c in enumerate(_CP_SESSION_FIELDS))
    + " WHERE session_id = ?1"
)
# rows: [account_id, hour_start, usage_ms, billed_micro]
_CP_USAGE = (
    "INSERT INTO usage_hourly (account_id, hour_start, usage_ms, billed_micro)"
    f" SELECT {_j(0)}, {_j(1)}, {_j(2)}, {_j(3)} FROM json_each(?) WHERE true"
    " ON CONFLICT (account_id, hour_start) DO UPDATE SET"
    " usage_ms = usage_ms + excluded.usage_ms,"
    " billed_micro = billed_micro + excluded.billed_micro"
)
# rows: [account_id, amount_micro, balance_after_micro, idempotency_key, session_id, created_utc]
_CP_LEDGER = (
    "INSERT INTO ledger (account_id, kind, amount_micro, balance_after_micro,"
    " idempotency_key, session_id, created_utc)"
    f" SELECT {_j(0)}, 'charge', {_j(1)}, {_j(2)}, {_j(3)}, {_j(4)}, {_j(5)}"
    " FROM json_each(?) WHERE true ORDER BY key"
    " ON CONFLICT (idempotency_key) DO NOTHING"
)
# rows: [account_id, balance_micro]
_CP_BALANCES = (
    "UPDATE accounts SET balance_micro = j.balance_micro"
    f" FROM (SELECT {_j(0)} AS account_id, {_j(1)} AS balance_micro FROM json_each(?)) AS j"
    " WHERE accounts.account_id = j.account_id"
)
_CP_BALANCES_MANY = "UPDATE accounts SET balance_micro = ?2 WHERE account_id = ?1"


def _cp_write_ddl() -> tuple[str, ...]:
    """A temp view whose INSTEAD OF INSERT trigger runs the four statements above: one
    ``INSERT INTO cp_write VALUES (sessions, usage, ledger, balances)`` (JSON arrays of
    rows, ``[]`` for none) writes a whole group commit in **one** sqlite3 call, checking
    that every row was written (else the statement aborts: nothing of it is kept).
    Temp objects live in the connection, not in the database file (no migration)."""

    def rows(sql: str, col: str) -> str:
        assert sql.count("json_each(?)") == 1
        return sql.replace("json_each(?)", f"json_each(NEW.{col})") + ";"

    def check(col: str, what: str) -> str:
        return (
            f" SELECT RAISE(ABORT, 'group commit: {what}') WHERE changes() != json_array_length(NEW.{col});"
        )

    return (
        "CREATE TEMP VIEW IF NOT EXISTS cp_write (sessions, usage, ledger, balances)"
        " AS SELECT NULL, NULL, NULL, NULL",
        "CREATE TEMP TRIGGER IF NOT EXISTS cp_write_rows INSTEAD OF INSERT ON cp_write BEGIN "
        + rows(_CP_SESSIONS, "sessions")
        + check("sessions", "a session row is missing")
        + rows(_CP_USAGE, "usage")
        + rows(_CP_LEDGER, "ledger")
        + check("ledger", "a charge was not inserted (its key is in the ledger)")
        + rows(_CP_BALANCES, "balances")
        + check("balances", "an account row is missing")
        + " END",
    )


# An account snapshot in one statement (so it needs no transaction of its own).
# The rows are "accounts a"; the parameters (_SNAPSHOT_PARAMS) are spelled with
# prefix ``p``: ":" for named parameters (_snapshot_params), "j." for the columns
# of a json_each row (_SESSION_SNAPSHOTS).
_SNAPSHOT_PARAMS = ("exclude", "now", "hour", "day0", "day1", "month0", "month1")


def _snapshot_cols(p: str) -> str:
    return (
        "a.account_id, a.plan, a.balance_micro,"
        " (SELECT COUNT(*) FROM sessions o WHERE o.account_id = a.account_id AND o.ended_utc IS NULL"
        f"  AND o.lease_until_utc > {p}now AND o.session_id != {p}exclude),"
        " (SELECT COALESCE(SUM(u.usage_ms), 0) FROM usage_hourly u"
        f"  WHERE u.account_id = a.account_id AND u.hour_start = {p}hour),"
        " (SELECT COALESCE(SUM(u.usage_ms), 0) FROM usage_hourly u"
        f"  WHERE u.account_id = a.account_id AND u.hour_start >= {p}day0 AND u.hour_start < {p}day1),"
        " (SELECT COALESCE(SUM(u.usage_ms), 0) FROM usage_hourly u"
        f"  WHERE u.account_id = a.account_id AND u.hour_start >= {p}month0 AND u.hour_start < {p}month1)"
    )


_SNAPSHOT_COLS = _snapshot_cols(":")
# Admission: the snapshot, the row of the session id (if any, else NULLs), and
# whether _settle_expired() has anything to do for the account (its two WHEREs).
_ADMISSION = (
    f"SELECT {_SNAPSHOT_COLS}, s.account_id, s.owner, s.ended_utc, s.settled,"
    " s.resume_until_utc, s.seq, s.duration_ms, s.audio_ms, s.speech_ms, s.samples,"
    " s.billed_micro, s.usage_ms,"
    " EXISTS (SELECT 1 FROM sessions x WHERE x.account_id = a.account_id"
    "  AND x.ended_utc IS NULL AND x.lease_until_utc <= :now)"
    " OR EXISTS (SELECT 1 FROM sessions x WHERE +x.account_id = a.account_id"  # "+": sessions_resumable
    "  AND x.ended_utc IS NOT NULL AND x.settled = 0 AND x.resume_until_utc <= :now)"
    " FROM accounts a LEFT JOIN sessions s ON s.session_id = :sid WHERE a.account_id = :account"
)
# Many session snapshots in one statement; rows: [session_id, *the other _SNAPSHOT_PARAMS].
# Every column is an integer or text, so they come back exactly as JSON.
_SESSION_SNAPSHOTS = (
    f"SELECT json_group_array(json_array(j.i, {_snapshot_cols('j.')}, s.seq))"
    " FROM (SELECT key AS i, "
    + ", ".join(f"{_j(k)} AS {n}" for k, n in enumerate(_SNAPSHOT_PARAMS))
    + " FROM json_each(?)) AS j"
    " JOIN sessions s ON s.session_id = j.exclude JOIN accounts a ON a.account_id = s.account_id"
)
_SNAPSHOT_WIDTH = 7

# The actor serves at most this many queued requests per thread hop (FIFO).
_MAX_WRITES_PER_HOP = 64
_MAX_READS_PER_HOP = 1024


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


def _snapshot_params(now_utc: float, exclude: str | None) -> dict[str, Any]:
    w = calendar_windows(now_utc)
    values = (exclude or "", now_utc, w.hour_start, w.day_start, w.day_end, w.month_start, w.month_end)
    return dict(zip(_SNAPSHOT_PARAMS, values, strict=True))


def _snapshot(row: Sequence[Any]) -> AccountSnapshot:
    """The first ``_SNAPSHOT_WIDTH`` columns of a row that selected ``_SNAPSHOT_COLS``."""
    return AccountSnapshot(
        account_id=row[0],
        plan=row[1],
        balance_micro=row[2],
        active_sessions=row[3],
        usage=Usage(hour_ms=row[4], day_ms=row[5], month_ms=row[6]),
    )


def _write_checkpoints(
    conn: sqlite3.Connection,
    sessions: list[list[Any]],
    usage: list[list[Any]],
    ledger: list[list[Any]],
    balances: list[list[Any]],
) -> None:
    """A group commit's writes: one statement (the ``cp_write`` trigger, see
    :func:`_cp_write_ddl`), or on SQLite < 3.33 (no ``UPDATE ... FROM``) one or
    ``executemany`` per table. Every row must be written, else it raises (and the
    caller's transaction rolls back: never a balance without its ledger entry)."""
    if _HAS_UPDATE_FROM:
        conn.execute(
            "INSERT INTO cp_write VALUES (?, ?, ?, ?)",
            (_json(sessions), _json(usage), _json(ledger), _json(balances)),
        )
        return
    if sessions and conn.executemany(_CP_SESSIONS_MANY, sessions).rowcount != len(sessions):
        raise StoreError("group commit: a session row is missing")
    if usage:
        conn.execute(_CP_USAGE, (_json(usage),))
    if ledger and conn.execute(_CP_LEDGER, (_json(ledger),)).rowcount != len(ledger):
        raise StoreError("group commit: a charge was not inserted (its key is in the ledger)")
    if balances and conn.executemany(_CP_BALANCES_MANY, balances).rowcount != len(balances):
        raise StoreError("group commit: an account row is missing")


def _noop(txn: object) -> None:
    return None


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
    """What one write transaction (or one request inside it) did besides its result."""

    conn: sqlite3.Connection
    crossings: list[_Crossing] = field(default_factory=list)
    applied: int = 0
    ignored: int = 0
    balances: dict[str, int] = field(default_factory=dict)  # accounts charged: balance after

    def merge(self, other: _Txn) -> None:
        self.crossings += other.crossings
        self.applied += other.applied
        self.ignored += other.ignored
        self.balances.update(other.balances)


_Bulk = Callable[[sqlite3.Connection, list[Any]], list[outcome.Outcome[Any]]]


@dataclass
class _Request:
    fn: Callable[[Any], Any] | None  # write: fn(_Txn); read: fn(sqlite3.Connection)
    write: bool
    commit: bool = False  # flush(): commit the queued checkpoints in the same transaction
    single: bool = False  # a read of exactly one statement: consistent without a transaction
    # a read served together with the hop's other reads of the same kind, in one
    # statement: bulk(conn, [arg, ...]) -> one outcome per arg (fn is then None)
    bulk: _Bulk | None = None
    arg: Any = None
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome[Any] | None = None

    def finish(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        self.done.set()


@dataclass
class _Hop:
    """What one thread hop did (filled in the worker thread, read on the Trio thread)."""

    txn: _Txn | None = None  # the committed write transaction, if any
    writes: list[outcome.Outcome[Any]] = field(default_factory=list)  # one per write request
    reads: list[outcome.Outcome[Any]] = field(default_factory=list)  # one per read request
    write_error: Exception | None = None  # the write transaction failed as a whole
    cps_error: Exception | None = None  # the queued checkpoints failed (rolled back: retry them)


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
        self._backlog: deque[_Request] = deque()  # received, not yet served
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
            closed = StoreClosed("the store is closed")
            while self._backlog:
                self._backlog.popleft().finish(outcome.Error(closed))
            while True:
                try:
                    item = self._recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if isinstance(item, _Request):
                    item.finish(outcome.Error(closed))
            self._pending.clear()
            try:
                self._conn.close()
            finally:
                self._closed.set()

    def _commit_due(self) -> bool:
        return bool(self._pending) and (
            trio.current_time() >= self._deadline or len(self._pending) >= self._max_pending
        )

    def _take(self, item: object) -> None:
        if isinstance(item, _Request):
            self._backlog.append(item)

    async def _serve(self) -> None:
        """Each iteration takes everything queued and serves it in **one** thread hop.

        A request therefore waits at most for the hop in flight (e.g. one group
        commit) and its own, however many requests are queued: under load the
        actor's throughput does not collapse to one request per loop turn.
        """
        closed = False
        while True:
            if not closed and not self._backlog and not self._commit_due():
                with trio.move_on_at(self._deadline if self._pending else math.inf):
                    try:
                        self._take(await self._recv.receive())
                    except trio.EndOfChannel:
                        closed = True
            while not closed:  # everything else queued meanwhile joins the same hop
                try:
                    self._take(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
                except trio.EndOfChannel:
                    closed = True
            writes: list[_Request] = []
            reads: list[_Request] = []
            backlog = self._backlog
            while backlog and len(writes) < _MAX_WRITES_PER_HOP and len(reads) < _MAX_READS_PER_HOP:
                req = backlog.popleft()
                (writes if req.write else reads).append(req)
            due = bool(self._pending) and (closed or self._commit_due())  # timer, size or close
            commit = due or (bool(self._pending) and any(r.commit for r in writes))
            if writes or reads or commit:
                await self._execute(writes, reads, commit=commit, timer=due)
            if closed and not backlog:
                return

    async def _execute(
        self, writes: list[_Request], reads: list[_Request], *, commit: bool, timer: bool
    ) -> None:
        cps: list[Checkpoint] = []
        if commit:
            cps = self._pending
            self._pending = []
            self._deadline = math.inf
        try:
            hop: _Hop = await self._run(self._hop, cps, [r.fn for r in writes], reads)
        except BaseException as exc:  # the thread machinery itself failed (or we are cancelled)
            err = exc if isinstance(exc, Exception) else StoreClosed("the store is closed")
            for r in (*writes, *reads):
                r.finish(outcome.Error(err))
            if cps:
                self._requeue(cps)
            if isinstance(exc, Exception):
                self.stats.failed_transactions += 1
                log.exception("store hop failed")
                return
            raise
        st = self.stats
        if hop.cps_error is not None:
            st.failed_transactions += 1
            self._requeue(cps)
            log.warning("group commit of %d checkpoints failed: %r (will retry)", len(cps), hop.cps_error)
        if hop.write_error is not None and hop.write_error is not hop.cps_error:
            st.failed_transactions += 1
        txn = hop.txn
        if txn is not None:
            st.transactions += 1
            if timer and cps and hop.cps_error is None:
                st.group_commits += 1
            st.checkpoints_applied += txn.applied
            st.checkpoints_ignored += txn.ignored
            for crossing in txn.crossings:
                self._start_auto_topup(crossing)
        for r, res in zip(writes, hop.writes, strict=True):
            if r.commit and hop.cps_error is not None:  # flush(): its checkpoints were not written
                res = outcome.Error(hop.cps_error)
            r.finish(res)
        for r, res in zip(reads, hop.reads, strict=True):
            r.finish(res)

    def _requeue(self, cps: list[Checkpoint]) -> None:
        """Put checkpoints that were not committed back in front of the queue, for the next try."""
        self._pending[:0] = cps
        self._deadline = trio.current_time() + self.commit_interval

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking database work: on the store's worker thread (one at a time)."""
        if self._threaded:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        result = fn(*args)
        await trio.lowlevel.checkpoint()
        return result

    def _hop(self, cps: list[Checkpoint], writes: list[Any], reads: list[_Request]) -> _Hop:
        """One thread hop (in the worker thread): one write transaction, then the reads.

        If the write transaction fails because of the queued checkpoints, the
        requests are run again without them (the checkpoints are retried later).
        """
        hop = _Hop()
        if cps or writes:
            try:
                hop.txn, hop.writes = self._write_txn(cps, writes)
            except Exception as exc:
                if cps:
                    hop.cps_error = exc
                if cps and writes:
                    try:
                        hop.txn, hop.writes = self._write_txn([], writes)
                    except Exception as exc2:
                        hop.write_error = exc2
                elif writes:
                    hop.write_error = exc
                if hop.write_error is not None:
                    hop.txn = None
                    hop.writes = [outcome.Error(hop.write_error)] * len(writes)
        if reads:
            hop.reads = self._read_txn(reads)
        return hop

    def _read_txn(self, reads: list[_Request]) -> list[outcome.Outcome[Any]]:
        """Run read requests (in the worker thread: only their fields are used) on what is
        committed. Bulk reads of one kind share one statement; a one-statement read is
        consistent on its own (autocommit); the others share one read transaction."""
        conn = self._conn
        results: list[outcome.Outcome[Any] | None] = [None] * len(reads)
        bulks: dict[_Bulk, list[int]] = {}
        multi: list[int] = []
        for i, req in enumerate(reads):
            if req.bulk is not None:
                bulks.setdefault(req.bulk, []).append(i)
            elif not req.single:
                multi.append(i)
        for bulk, idx in bulks.items():
            try:
                got = bulk(conn, [reads[i].arg for i in idx])
            except Exception as exc:
                got = [outcome.Error(exc)] * len(idx)
            for i, res in zip(idx, got, strict=True):
                results[i] = res
        for i, req in enumerate(reads):
            if req.single and req.bulk is None:
                results[i] = self._read_one(req, conn)
        if multi:
            try:
                conn.execute("BEGIN")
            except Exception as exc:
                for i in multi:
                    results[i] = outcome.Error(exc)
            else:
                try:
                    for i in multi:
                        results[i] = self._read_one(reads[i], conn)
                finally:
                    if conn.in_transaction:
                        try:
                            conn.execute("COMMIT")
                        except Exception:  # nothing to lose: it only read
                            with suppress(Exception):
                                conn.execute("ROLLBACK")
        out = [r for r in results if r is not None]
        assert len(out) == len(reads)
        return out

    @staticmethod
    def _read_one(req: _Request, conn: sqlite3.Connection) -> outcome.Outcome[Any]:
        assert req.fn is not None
        try:
            return outcome.Value(req.fn(conn))
        except Exception as exc:
            return outcome.Error(exc)

    def _write_txn(
        self, cps: list[Checkpoint], fns: list[Callable[[_Txn], Any]]
    ) -> tuple[_Txn | None, list[outcome.Outcome[Any]]]:
        """One ``BEGIN IMMEDIATE`` transaction: queued checkpoints, then each ``fn`` in order.

        Each ``fn`` runs inside its own savepoint: if it raises, only its own
        changes are rolled back, the rest still commits, and its error is its
        result. (A lone ``fn`` needs no savepoint: if it raises, the transaction
        is rolled back and ``None`` is returned instead of the transaction.) If
        the transaction itself fails, everything rolls back and it raises.
        """
        conn = self._conn
        txn = _Txn(conn)
        results: list[outcome.Outcome[Any]] = []
        isolate = bool(cps) or sum(fn is not _noop for fn in fns) > 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            if cps:
                self._apply_checkpoints(txn, cps)
            for fn in fns:
                if fn is _noop:  # flush(): nothing to run, nothing to isolate
                    results.append(outcome.Value(None))
                    continue
                sub = _Txn(conn)
                if isolate:
                    conn.execute("SAVEPOINT op")
                try:
                    value = fn(sub)
                except Exception as exc:
                    if not isolate:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        return None, [outcome.Error(exc)]
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append(outcome.Error(exc))
                    continue
                if isolate:
                    conn.execute("RELEASE op")
                txn.merge(sub)
                results.append(outcome.Value(value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return txn, results

    async def _call(
        self,
        fn: Callable[[Any], T] | None,
        *,
        write: bool,
        commit: bool = False,
        single: bool = False,
        bulk: _Bulk | None = None,
        arg: Any = None,
    ) -> T:
        if self._closing:
            raise StoreClosed("the store is closed")
        req = _Request(fn, write, commit=commit, single=single, bulk=bulk, arg=arg)
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
        """Apply cumulative checkpoints (any order, any repeats) inside ``txn``.

        Two statements whatever the number of sessions: one read (``_CP_STATE``) of
        the sessions, their accounts and the ledger keys the charges would use;
        everything is computed here; then one write (:func:`_write_checkpoints`:
        one bulk statement per table, all run by one insert into ``cp_write``).
        """
        conn = txn.conn
        by_sid: dict[str, list[Checkpoint]] = {}
        for cp in cps:
            lst = by_sid.get(cp.session_id)
            if lst is None:
                by_sid[cp.session_id] = [cp]
            else:
                lst.append(cp)
        # the only key a session can charge under in this batch is that of its highest seq
        keys = [f"{sid}:{max(c.seq for c in lst)}" for sid, lst in by_sid.items()]
        sessions_json, accounts_json, taken_json = conn.execute(
            _CP_STATE, (_json(list(by_sid)), _json(keys))
        ).fetchone()
        rows: dict[str, list[Any]] = {r[0]: r for r in _json_loads(sessions_json)}
        session_updates: list[list[Any]] = []
        usage: dict[tuple[str, int], list[int]] = {}
        # per account: [(session_id, seq, amount, now_utc)]
        charges: dict[str, list[tuple[str, int, int, float]]] = {}
        applied = ignored = 0
        for sid, lst in by_sid.items():
            row = rows.get(sid)
            if row is None or row[5]:  # unknown or ended session
                ignored += len(lst)
                continue
            account_id: str = row[1]
            seq: int = row[2]
            billed: int = row[3]
            used: int = row[4]
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
                [
                    sid,
                    seq,
                    last.now_utc,
                    billed,
                    used,
                    last.audio_ms,
                    last.speech_ms,
                    last.duration_ms,
                    last.samples,
                ]
            )
            if charge_amount:
                charges.setdefault(account_id, []).append((sid, seq, charge_amount, last.now_utc))
        txn.applied += applied
        txn.ignored += ignored
        ledger_rows: list[list[Any]] = []
        balances: list[list[Any]] = []
        if charges:
            accounts = {r[0]: _account(r) for r in _json_loads(accounts_json)}
            ledger_rows, balances = self._charge(txn, charges, accounts, set(_json_loads(taken_json)))
        usage_rows = [[a, h, v[0], v[1]] for (a, h), v in usage.items()]
        if session_updates or usage_rows or ledger_rows or balances:
            _write_checkpoints(conn, session_updates, usage_rows, ledger_rows, balances)

    def _charge(
        self,
        txn: _Txn,
        charges: dict[str, list[tuple[str, int, int, float]]],
        accounts: dict[str, Account],
        taken: set[str],
    ) -> tuple[list[list[Any]], list[list[Any]]]:
        """The ledger rows and new balances for ``charges`` (written by the caller).

        ``taken``: the keys among them already in the ledger (read in this
        transaction, which holds the write lock): those are skipped, never charged
        twice, and the balances only move by what is inserted (which is checked).
        """
        ledger_rows: list[list[Any]] = []
        balances: list[list[Any]] = []
        for account_id, items in charges.items():
            acct = accounts[account_id]
            before = bal = acct.balance_micro
            last_key = ""
            for sid, seq, amount, now in items:
                key = f"{sid}:{seq}"
                if key in taken:  # cannot happen while seqs guard the session; never charge twice
                    log.error("ledger key %s already present: charge skipped", key)
                    continue
                bal -= amount
                ledger_rows.append([account_id, -amount, bal, key, sid, now])
                last_key = key
            if bal == before:
                continue
            balances.append([account_id, bal])
            txn.balances[account_id] = bal
            threshold = acct.auto_topup_threshold_micro
            if self._topup_hook is not None and threshold is not None and before >= threshold > bal:
                txn.crossings.append(_Crossing(account=_replace_balance(acct, bal), trigger_key=last_key))
        return ledger_rows, balances

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

    @staticmethod
    def _settle_expired(conn: sqlite3.Connection, now_utc: float, account_id: str | None) -> int:
        """Settle (exactly once) sessions whose lease or resume window is over.

        (``_ADMISSION`` tells whether this has anything to do for an account: keep
        its two ``EXISTS`` in step with the two ``WHERE`` clauses here.)"""
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

        sid = req.resume_id if req.resume_id is not None else req.session_id
        params = {**_snapshot_params(req.now_utc, sid), "sid": sid, "account": req.account_id}

        def fn(txn: _Txn) -> Admitted | Refusal:
            conn = txn.conn
            # the account's snapshot (excluding sid), sid's row (if any), and whether the
            # account has sessions to settle first: one statement (usually all it takes)
            r = conn.execute(_ADMISSION, params).fetchone()
            if r is not None and r[-1]:
                self._settle_expired(conn, req.now_utc, req.account_id)
                r = conn.execute(_ADMISSION, params).fetchone()
            if r is None:
                return Refusal(code=Code.UNAUTHORIZED, message="unknown account")
            snap = _snapshot(r)
            row = None if r[_SNAPSHOT_WIDTH] is None else r[_SNAPSHOT_WIDTH:-1]
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
                    return Admitted(session_id=sid, snapshot=snap)
                raise StoreError(f"session id {sid} already exists")
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
        params = {**_snapshot_params(now_utc, exclude_session), "account": account_id}

        def fn(conn: sqlite3.Connection) -> AccountSnapshot:
            r = conn.execute(
                f"SELECT {_SNAPSHOT_COLS} FROM accounts a WHERE a.account_id = :account", params
            ).fetchone()
            if r is None:
                raise UnknownAccount(account_id)
            return _snapshot(r)

        return await self._call(fn, write=False, single=True)

    async def session_snapshot(self, session_id: str, now_utc: float) -> tuple[AccountSnapshot, int]:
        """The session's account snapshot (excluding the session) and, read in the same
        statement, the seq of the session's last *committed* checkpoint: exactly the
        ``persisted_seq`` the session policy's ``refresh_account`` wants (the balance and
        usage reflect this session's billing up to that seq, not the queued rest).

        Every session asks every ``balance_check_s``: all the requests queued at one
        moment are answered by one statement (see :func:`_session_snapshots`)."""
        return await self._call(None, write=False, bulk=_session_snapshots, arg=(session_id, now_utc))

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
        ids = _json(session_ids)

        def fn(txn: _Txn) -> None:
            txn.conn.execute(
                "UPDATE sessions SET lease_until_utc = ? WHERE owner = ? AND ended_utc IS NULL"
                " AND session_id IN (SELECT value FROM json_each(?))",
                (until_utc, owner, ids),
            )

        await self._call(fn, write=True)

    async def end_session(self, end: SessionEnd) -> int:
        cp = end.checkpoint

        def fn(txn: _Txn) -> int:
            conn = txn.conn
            row = conn.execute(
                "SELECT s.account_id, s.ended_utc, s.end_balance_micro, s.resume_window_s, a.balance_micro"
                " FROM sessions s JOIN accounts a ON a.account_id = s.account_id WHERE s.session_id = ?",
                (cp.session_id,),
            ).fetchone()
            if row is None:
                raise UnknownSession(cp.session_id)
            account_id, ended, end_balance, window, bal = row
            if ended is not None:  # already ended: same answer, no change
                return int(end_balance if end_balance is not None else bal)
            self._apply_checkpoints(txn, [cp])
            bal = txn.balances.get(account_id, bal)
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
        await self._call(_noop, write=True, commit=True)
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
        """Problems found (empty if fine); see :func:`integrity_problems`."""

        return await self._call(integrity_problems, write=False)


def _session_snapshots(conn: sqlite3.Connection, args: list[Any]) -> list[outcome.Outcome[Any]]:
    """:meth:`SqliteStore.session_snapshot` for many ``(session_id, now_utc)`` in one statement."""
    rows = [list(_snapshot_params(now_utc, sid).values()) for sid, now_utc in args]
    (found_json,) = conn.execute(_SESSION_SNAPSHOTS, (_json(rows),)).fetchone()
    found = {r[0]: r[1:] for r in _json_loads(found_json)}
    out: list[outcome.Outcome[Any]] = []
    for i, (sid, _) in enumerate(args):
        r = found.get(i)
        if r is None:
            out.append(outcome.Error(UnknownSession(sid)))
        else:
            out.append(outcome.Value((_snapshot(r), int(r[_SNAPSHOT_WIDTH]))))
    return out


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
        if _HAS_UPDATE_FROM:
            for stmt in _cp_write_ddl():
                conn.execute(stmt)
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


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """The ledger's invariants, checked on ``conn`` (empty if all hold): every account's
    balance == the sum of its ledger, the balance_after chain, unique idempotency keys,
    and every session's billed total == its charges."""
    problems: list[str] = []
    for acct, bal, total in conn.execute(
        "SELECT a.account_id, a.balance_micro, COALESCE(SUM(l.amount_micro), 0)"
        " FROM accounts a LEFT JOIN ledger l ON l.account_id = a.account_id"
        " GROUP BY a.account_id"
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
