"""The store interface: the only thing that writes durable state.

The session engine and the CLI talk to a :class:`Store`. Every method is async
(Trio); implementations run blocking database work off the Trio loop. Money is
integer micro-credits, durations integer milliseconds, times unix seconds (UTC).

Billing is written as *cumulative checkpoints*: each one carries the session's
running totals and a sequence number; the store turns the difference from the
previous checkpoint into one ledger entry whose idempotency key is
``f"{session_id}:{seq}"``, so a retried batch is applied once and a crash
loses at most the audio since the last checkpoint (never bills audio that did
not arrive).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from engine.policy.types import AccountSnapshot, Code, EndReason
from engine.policy.types import Refusal as Refusal  # re-exported: the store's refusal type


class Account(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    name: str
    plan: str
    balance_micro: int
    auto_topup_threshold_micro: int | None = None
    auto_topup_amount_micro: int | None = None


class SessionStart(msgspec.Struct, frozen=True, kw_only=True):
    """A request to open a session (inside the admission transaction)."""

    session_id: str
    account_id: str
    model: str
    encoding: str
    sample_rate: int
    channels: int
    owner: str  # the process that runs it (for leases)
    lease_s: float  # the lease lasts this long unless renewed
    now_utc: float
    resume_window_s: float = 300.0
    resume_id: str | None = None  # resume this earlier session instead of a new one


class ResumeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a resumed session continues from (its last checkpoint)."""

    session_id: str
    seq: int
    duration_ms: int
    audio_ms: int
    speech_ms: int
    samples: int
    billed_micro: int
    usage_ms: int


class Admitted(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    snapshot: AccountSnapshot  # excludes this session itself
    resumed: ResumeInfo | None = None


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative totals of one session at one moment (see module docstring)."""

    session_id: str
    seq: int
    now_utc: float
    billed_micro: int
    usage_ms: int
    audio_ms: int
    speech_ms: int
    duration_ms: int
    samples: int


class SessionEnd(msgspec.Struct, frozen=True, kw_only=True):
    """The final checkpoint of a session plus why it ended."""

    checkpoint: Checkpoint
    reason: EndReason
    code: Code | None = None
    resumable: bool = False  # dropped without close: keep it resumable for the resume window


class SessionRow(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    account_id: str
    model: str
    encoding: str
    sample_rate: int
    channels: int
    started_utc: float
    ended_utc: float | None
    end_reason: str | None
    end_code: str | None
    audio_ms: int
    speech_ms: int
    duration_ms: int
    billed_micro: int
    owner: str | None
    lease_until_utc: float | None
    resume_until_utc: float | None


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    entry_id: int
    account_id: str
    kind: str  # "charge" | "topup" | "refund" | "auto_topup"
    amount_micro: int  # signed: charges negative
    balance_after_micro: int
    idempotency_key: str
    session_id: str | None
    created_utc: float


AdmissionCheck = Callable[[AccountSnapshot], Refusal | None]
"""Policy callback the store runs inside its admission transaction."""

TopupHook = Callable[[Account, int, str], "int | None"]
"""Auto top-up hook provided by the host: (account, balance_micro, idempotency_key) ->
micro-credits actually collected by the host's payment system, or None (nothing collected).
The store records it in the ledger under ``idempotency_key``; the host should pass the same
key to its payment provider, so that a payment retried after a crash is collected once."""


class Store(Protocol):
    async def create_account(
        self, *, plan: str, credits_micro: int = 0, name: str = ""
    ) -> tuple[Account, str]:
        """Create an account; returns it and its API key (stored only as a hash)."""
        ...

    async def authenticate(self, api_key: str) -> Account | None: ...

    async def get_account(self, account_id: str) -> Account | None: ...

    async def topup(self, account_id: str, amount_micro: int, idempotency_key: str) -> int:
        """Add credits; returns the new balance. Applied once per key."""
        ...

    async def begin_session(self, req: SessionStart, check: AdmissionCheck) -> Admitted | Refusal:
        """Atomically: expire dead leases, snapshot the account, run ``check``, insert.

        Serialised with every other admission for the same account, across
        processes sharing the database, so concurrent starts cannot exceed limits.
        """
        ...

    async def snapshot(
        self, account_id: str, now_utc: float, exclude_session: str | None
    ) -> AccountSnapshot: ...

    async def session_snapshot(self, session_id: str, now_utc: float) -> tuple[AccountSnapshot, int]:
        """The session's account snapshot (excluding the session from active counts) and,
        read in the same transaction, the seq of its last committed checkpoint (the
        ``persisted_seq`` that ``SessionPolicy.refresh_account`` takes)."""
        ...

    async def checkpoint(self, cp: Checkpoint) -> None:
        """Queue a checkpoint for the next group commit (at most ~1 s later)."""
        ...

    async def renew_leases(self, owner: str, session_ids: list[str], until_utc: float) -> None: ...

    async def end_session(self, end: SessionEnd) -> int:
        """Settle a session exactly once (durably, before returning); returns the balance after."""
        ...

    async def recover(self, now_utc: float) -> int:
        """Settle sessions whose lease expired (their process died); returns how many."""
        ...

    async def flush(self) -> None:
        """Write every queued checkpoint now."""
        ...

    async def aclose(self) -> None: ...
