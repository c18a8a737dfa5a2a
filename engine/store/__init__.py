"""Durable state: accounts, sessions, the ledger and usage windows.

:mod:`engine.store.base` is the interface the engine uses;
:mod:`engine.store.sqlite` the embedded default implementation.
"""

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
from engine.store.sqlite import SqliteStore, open_sqlite_store

__all__ = [
    "Account",
    "AdmissionCheck",
    "Admitted",
    "Checkpoint",
    "IdempotencyConflict",
    "LedgerEntry",
    "Refusal",
    "ResumeInfo",
    "SchemaTooNew",
    "SessionEnd",
    "SessionRow",
    "SessionStart",
    "SqliteStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "TopupHook",
    "UnknownAccount",
    "UnknownSession",
    "open_sqlite_store",
]
