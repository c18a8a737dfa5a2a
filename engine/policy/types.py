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
