"""Exceptions raised by store implementations (backend independent)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class StoreClosed(StoreError):
    """The store was closed (or its actor died); nothing was written."""


class UnknownAccount(StoreError, LookupError):
    pass


class UnknownSession(StoreError, LookupError):
    pass


class IdempotencyConflict(StoreError, ValueError):
    """An idempotency key was reused for a different operation (other account/amount/kind)."""


class SchemaTooNew(StoreError):
    """The database was written by a newer engine (higher schema version) than this one."""
