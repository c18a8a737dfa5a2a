"""Plain data shared by the policy core, the store and the actors.

Everything here is immutable, integer-valued where it is money or time, and
free of I/O. Money is in micro-credits (1 credit = 1_000_000 micro-credits);
usage and durations are in integer milliseconds.
"""

from __future__ import annotations

import enum

import msgspec

MICRO = 1_000_000
"""Micro-credits per credit: the integer unit all money is kept in."""


class Code(enum.StrEnum):
    """Error / end codes shown to clients (seed 000 plus the rest we need)."""

    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
    SESSION_LIMIT_REACHED = "SESSION_LIMIT_REACHED"
    CONCURRENT_LIMIT = "CONCURRENT_LIMIT"
    HOURLY_LIMIT = "HOURLY_LIMIT"
    DAILY_LIMIT = "DAILY_LIMIT"
    MONTHLY_LIMIT = "MONTHLY_LIMIT"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    NO_AUDIO_TIMEOUT = "NO_AUDIO_TIMEOUT"
    KEEPALIVE_TIMEOUT = "KEEPALIVE_TIMEOUT"
    RATE_LIMITED = "RATE_LIMITED"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    INVALID_AUDIO_FORMAT = "INVALID_AUDIO_FORMAT"
    UNAUTHORIZED = "UNAUTHORIZED"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVER_SHUTDOWN = "SERVER_SHUTDOWN"


class EndReason(enum.StrEnum):
    """Why a session ended, for the receipt and the store (not an error)."""

    CLIENT_CLOSE = "client_close"
    DISCONNECT = "disconnect"
    POLICY = "policy"  # see the accompanying Code
    PROTOCOL = "protocol"
    INTERNAL = "internal"
    SHUTDOWN = "shutdown"
    EXPIRED = "expired"  # settled after its process died / resume window passed


class BillingBasis(enum.StrEnum):
    AUDIO = "audio"  # seconds of audio received (seed 000, default)
    WALL = "wall"  # session wall time (seed 001)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A plan's limits. ``None`` means unlimited. Seconds unless named otherwise."""

    name: str
    max_session_s: int
    concurrent_streams: int | None
    hourly_s: int | None
    daily_s: int | None
    monthly_s: int | None
    ws_messages_per_s: int | None = None
    audio_bytes_per_s: int | None = None
    requests_per_minute: int | None = None
    billing_basis: BillingBasis | None = None  # overrides the model's basis


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """A recognition model and its price."""

    name: str
    rate_micro_per_s: int  # micro-credits per second of billed basis
    billing_basis: BillingBasis = BillingBasis.AUDIO


class SessionRules(msgspec.Struct, frozen=True, kw_only=True):
    """Rules common to all plans (seeds 000 and 003). Seconds unless named."""

    min_balance_micro: int = 60 * MICRO
    balance_check_s: int = 30
    status_interval_s: int = 10
    idle_timeout_s: int = 60  # no *speech* (VAD) for this long
    no_audio_timeout_s: int = 3600  # no audio at all
    keepalive_timeout_s: int = 180  # neither audio nor ping
    hard_cap_s: int = 48 * 3600  # absolute max session length
    warn_before_s: tuple[int, ...] = (30, 10)
    resume_window_s: int = 300
    # Added by the policy core: a client that stays over its plan's message or
    # audio-byte rate by more than this many seconds' worth (beyond the 1 s
    # burst), ignoring Throttle, is ended with RATE_LIMITED.
    rate_abuse_s: int = 5


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Billed-basis usage (ms) in the current calendar UTC hour, day and month."""

    hour_ms: int = 0
    day_ms: int = 0
    month_ms: int = 0


class AccountSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What admission and the in-session checks need to know of an account.

    Produced by the store (atomically, inside the admission transaction);
    ``active_sessions`` and ``usage`` exclude the session being checked.
    """

    account_id: str
    plan: str
    balance_micro: int
    active_sessions: int
    usage: Usage


# --------------------------------------------------------------------------
# Added by the policy core: results, events and totals shared with the
# actors (which map events to protocol messages) and the store.
# --------------------------------------------------------------------------


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """Why admission refused a session: no session is created, nothing charged."""

    code: Code
    message: str


class Warning(msgspec.Struct, frozen=True, kw_only=True, tag="warning"):
    """A timeout or limit is approaching: the session ends in ``seconds_left``.

    For limits on the audio basis, ``seconds_left`` is seconds of *audio*
    (equal to wall seconds for a client streaming in real time).
    """

    code: Code
    seconds_left: int
    message: str


SessionWarning = Warning
"""Alias of :class:`Warning` for code that must not shadow the builtin."""


class End(msgspec.Struct, frozen=True, kw_only=True, tag="end"):
    """The policy ended the session (``code`` is the client-facing error code)."""

    code: Code
    message: str


class Status(msgspec.Struct, frozen=True, kw_only=True, tag="status"):
    """Periodic session status (every ``rules.status_interval_s``)."""

    duration_ms: int  # session wall time, including any resumed part
    audio_ms: int
    speech_ms: int
    billed_micro: int  # cumulative for the session
    remaining_micro: int  # the account's balance as the session sees it


class Throttle(msgspec.Struct, frozen=True, kw_only=True, tag="throttle"):
    """The client exceeds its plan's message or audio-byte rate: pause ``wait_ms``."""

    wait_ms: int
    message: str


class BalanceCheckDue(msgspec.Struct, frozen=True, kw_only=True, tag="balance_check_due"):
    """Fetch a fresh AccountSnapshot and pass it to ``refresh_account``."""


Event = Warning | End | Status | Throttle | BalanceCheckDue
"""Everything the session policy can ask its actor to do or tell the client."""


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """Final totals of a session (cumulative, including any resumed part)."""

    reason: EndReason
    code: Code | None
    duration_ms: int
    audio_ms: int
    speech_ms: int
    billed_micro: int
    remaining_micro: int
    samples: int
    usage_ms: int = 0  # billed-basis ms counted against the usage windows


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative totals of a session at one moment, for the store.

    The store turns consecutive checkpoints into ledger deltas (this minus the
    previous one) with the idempotency key ``f"{session_id}:{seq}"``; because
    every field is cumulative, a lost or retried checkpoint never makes the
    totals drift. ``utc`` (unix seconds) tells the store which calendar usage
    windows the delta belongs to. ``final`` is true once the session ended (the
    totals no longer change).
    """

    seq: int
    billed_micro: int
    usage_ms: int
    audio_ms: int
    speech_ms: int
    wall_ms: int
    samples: int
    utc: float
    final: bool = False


class ResumeState(msgspec.Struct, frozen=True, kw_only=True):
    """Totals of a dropped session, from its last persisted checkpoint.

    A resumed session continues its duration, billing and checkpoint
    sequence from here; the account snapshot it is started with must already
    reflect these totals (they are persisted).
    """

    seq: int
    duration_ms: int
    samples: int
    audio_ms: int
    speech_ms: int
    usage_ms: int
    billed_micro: int

    @classmethod
    def from_checkpoint(cls, cp: Checkpoint) -> ResumeState:
        return cls(
            seq=cp.seq,
            duration_ms=cp.wall_ms,
            samples=cp.samples,
            audio_ms=cp.audio_ms,
            speech_ms=cp.speech_ms,
            usage_ms=cp.usage_ms,
            billed_micro=cp.billed_micro,
        )
