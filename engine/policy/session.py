"""The per-session policy state machine: metering, billing, limits and timeouts.

Sans-IO: no trio, no sockets, no clock reads. The session's actor feeds it
what happened (audio, messages, pings, fresh account snapshots) together with
the current monotonic time, calls :meth:`SessionPolicy.tick` when
:meth:`SessionPolicy.next_deadline` is reached, and acts on the returned
events (:class:`Warning`, :class:`End`, :class:`Status`, :class:`Throttle`,
:class:`BalanceCheckDue`).

Time
    ``now`` is monotonic seconds (``trio.current_time()``); calendar windows use
    ``utc = now + utc_offset``. Wall durations are integer milliseconds since the
    session (or its resumed segment) started; wall-time triggers fire when
    ``now >= deadline`` and the session ends *at the deadline* (so a late tick
    never stretches a session or its wall-basis bill).

Billing basis
    ``plan.billing_basis`` if set, else ``model.billing_basis``. AUDIO bills
    ``cost_micro(samples, sample_rate, rate)`` (pro-rated to the sample), WALL
    bills ``cost_micro(wall_ms, 1000, rate)``; both from cumulative totals, so
    chunking never changes the bill. Usage counted against the hourly / daily /
    monthly windows is the billed basis in ms (audio ms floored to the ms).
    A resumed session bills ``resumed.billed_micro + cost(new part)`` (and
    counts audio ms the same way), so each resume may round down by at most
    one micro-credit / ms more than one uninterrupted session would.

Balance
    The session may bill at most ``cap = included_billed + max(0, balance)``,
    where ``balance`` is the latest snapshot's and ``included_billed`` is the
    part of this session's bill that the snapshot already reflects (see
    *snapshots* below). The first sample (audio) or millisecond (wall) whose
    cost would exceed the cap ends the session with INSUFFICIENT_CREDITS, and
    the bill is capped there, so a session alone never takes the balance below
    zero. Other sessions of the account spending concurrently are seen at the
    next balance check (``BalanceCheckDue`` every ``rules.balance_check_s``);
    if they overdrew it the session ends at once (the bill never goes down:
    audio already received stays billed).

Snapshots
    Every :class:`AccountSnapshot` given to the policy reflects this session's
    *persisted* checkpoints (the store's numbers) and excludes the rest. The
    constructor's snapshot reflects the resumed totals (or nothing of a fresh
    session). :meth:`SessionPolicy.refresh_account` takes ``persisted_seq``, the
    ``seq`` of this session's last checkpoint applied in the store when the
    snapshot was read (the store knows it from its idempotency keys). When
    omitted, the policy assumes every checkpoint it has issued is reflected,
    which is exact if the store was flushed before the snapshot was read;
    otherwise the checkpoints still queued are missed, so the session may
    overrun the balance or a usage limit by that much (a commit interval).

Usage windows
    Calendar UTC hour, day and month (:mod:`engine.policy.windows`). The
    account's usage in a window is the snapshot's usage plus this session's
    usage not yet reflected in it. When a window rolls over mid-session its
    usage restarts from this session's usage after the boundary (other
    sessions' usage is unknown until the next refresh).

Limits and timeouts (all from the config; ``>=`` at the exact ms / sample)
    INSUFFICIENT_CREDITS (above), SESSION_LIMIT_REACHED at
    ``min(plan.max_session_s, rules.hard_cap_s)`` of session wall time (a
    resumed session continues its duration), HOURLY/DAILY/MONTHLY_LIMIT when
    the window usage reaches the plan limit, IDLE_TIMEOUT after
    ``idle_timeout_s`` without speech (audio without speech does not count),
    NO_AUDIO_TIMEOUT after ``no_audio_timeout_s`` without audio,
    KEEPALIVE_TIMEOUT after ``keepalive_timeout_s`` with neither audio nor
    ping. When several trip at once, the earliest deadline wins; ties go to
    credits, then the hourly, daily and monthly limits, the session length,
    keepalive, no audio and idle, in that order.

Warnings
    A :class:`Warning` at each of ``rules.warn_before_s`` seconds before each
    limit and timeout, once per approach: a timer re-arms its warnings when it
    is reset (speech, audio, ping), a limit when it moves away (a top-up, a
    window rollover). If one evaluation crosses several levels at once only
    the most urgent is sent; levels not shorter than a timer (or the session
    cap) are skipped. Limits on the AUDIO basis warn in seconds of *audio* left,
    which equals wall time for a real-time client and is still the useful
    figure for a faster one. No warning is sent for a usage limit that would
    only be reached after its calendar window ends (at real-time pace on the
    AUDIO basis), since the rollover restarts it.

Audio thresholds
    On the AUDIO basis every limit and its warnings are sample counts; the
    smallest one not yet passed is kept in ``_audio_threshold`` so that
    :meth:`SessionPolicy.on_audio` catches a crossing within the very chunk
    that makes it, whatever the streaming speed, with one comparison.

Rate limits
    :meth:`SessionPolicy.on_message` runs two token buckets, messages
    (``plan.ws_messages_per_s``) and audio bytes (``plan.audio_bytes_per_s``),
    each holding one second's worth (the burst) and refilled continuously.
    Over the limit it returns a :class:`Throttle` with the pause after which
    the same message would fit (once per pause, not for every message); a
    client that ignores it and runs more than ``rules.rate_abuse_s`` seconds'
    worth into debt (e.g. twice the rate for about that many seconds past the
    burst) is ended with RATE_LIMITED.

After :meth:`SessionPolicy.end` (or an :class:`End` event) nothing more is
billed or counted; :meth:`SessionPolicy.end` returns the same
:class:`Receipt` every time and :meth:`SessionPolicy.checkpoint` the final
totals (``final=True``).
"""

from __future__ import annotations

import math

from engine.policy.admission import format_duration
from engine.policy.config import EngineConfig
from engine.policy.money import format_credits, max_units_within
from engine.policy.types import (
    AccountSnapshot,
    BalanceCheckDue,
    BillingBasis,
    Checkpoint,
    Code,
    End,
    EndReason,
    Event,
    Model,
    Plan,
    Receipt,
    ResumeState,
    Status,
    Throttle,
    Warning,
)
from engine.policy.windows import next_boundaries, next_boundary, window_starts

__all__ = [
    "BalanceCheckDue",
    "Checkpoint",
    "End",
    "Event",
    "Receipt",
    "ResumeState",
    "SessionPolicy",
    "Status",
    "Throttle",
    "Warning",
]

_NEVER = 1 << 62  # an audio threshold that is never reached
_INF = math.inf
_HISTORY_MAX = 4096  # checkpoints remembered for persisted_seq look-ups
_BALANCE_CHECK_DUE = BalanceCheckDue()
_WINDOW_CODES = (Code.HOURLY_LIMIT, Code.DAILY_LIMIT, Code.MONTHLY_LIMIT)
_WINDOW_NAMES = ("hourly", "daily", "monthly")
_WINDOW_NEXT = ("the next UTC hour", "the next UTC day", "the next UTC month")
_WINDOW_INDEX = {code: i for i, code in enumerate(_WINDOW_CODES)}


def _ms(dt: float) -> int:
    """Seconds -> whole milliseconds, floored (robust to float noise)."""
    return math.floor(dt * 1000.0 + 1e-6)


def _ceil_s(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-6))


# A basis limit: (code, fires at, warnings count down to); positions are segment
# samples (AUDIO basis) or monotonic deadlines (WALL basis). Warnings count down
# to the moment the limit is used up (credits: the balance reaches exactly 0),
# the end fires one sample / ms later for credits, at that moment for windows.
_BasisLimit = tuple[Code, float, float]
# A wall-time trigger: (code, deadline, warnings count down to, timer reference
# or None for a limit, warning levels)
_WallTrigger = tuple[Code, float, float, float | None, tuple[int, ...]]


class SessionPolicy:
    """Policy state of one streaming session (see the module docstring)."""

    __slots__ = (
        "_abuse_s",
        "_audio_basis",
        "_audio_threshold",
        "_balance",
        "_base_audio",
        "_base_billed",
        "_base_duration",
        "_base_samples",
        "_base_usage",
        "_basis",
        "_basis_limits",
        "_byte_rate",
        "_byte_t",
        "_byte_tokens",
        "_bytes",
        "_bytes_per_sample",
        "_cap_at",
        "_cap_billed",
        "_cap_ms",
        "_channels",
        "_check_at",
        "_check_every",
        "_config",
        "_end_t",
        "_ended",
        "_history",
        "_idle_s",
        "_included_billed",
        "_included_seq",
        "_included_usage",
        "_keepalive_s",
        "_last_audio",
        "_last_ping",
        "_last_seen",
        "_last_speech",
        "_levels",
        "_lv_cap",
        "_lv_idle",
        "_lv_keepalive",
        "_lv_noaudio",
        "_model",
        "_msg_rate",
        "_msg_t",
        "_msg_tokens",
        "_noaudio_s",
        "_plan",
        "_rate",
        "_receipt",
        "_rollover_at",
        "_seg_samples",
        "_seq",
        "_speech_ms",
        "_sr",
        "_status_at",
        "_status_every",
        "_t0",
        "_throttle_until",
        "_utc_offset",
        "_warn_idx",
        "_warn_ref",
        "_win_acct",
        "_win_end",
        "_win_limit_ms",
        "_win_mark",
        "_win_start",
        "_win_w0",
    )

    def __init__(
        self,
        *,
        config: EngineConfig,
        plan: Plan,
        model: Model,
        snapshot: AccountSnapshot,
        now: float,
        utc_offset: float,
        sample_rate: int,
        channels: int,
        bytes_per_sample: int,
        resumed: ResumeState | None = None,
    ) -> None:
        if sample_rate <= 0 or channels <= 0 or bytes_per_sample <= 0:
            raise ValueError(
                f"bad audio format: sample_rate={sample_rate}, channels={channels}, "
                f"bytes_per_sample={bytes_per_sample}"
            )
        if model.rate_micro_per_s <= 0:
            raise ValueError(f"model {model.name!r} has a non-positive rate")
        rules = config.rules
        self._config = config
        self._plan = plan
        self._model = model
        self._basis = config.billing_basis(plan, model)
        self._audio_basis = self._basis is BillingBasis.AUDIO
        self._rate = model.rate_micro_per_s
        self._sr = sample_rate
        self._channels = channels
        self._bytes_per_sample = bytes_per_sample
        self._t0 = now
        self._utc_offset = utc_offset

        r = resumed
        self._base_duration = r.duration_ms if r else 0
        self._base_samples = r.samples if r else 0
        self._base_audio = r.audio_ms if r else 0
        self._base_usage = r.usage_ms if r else 0
        self._base_billed = r.billed_micro if r else 0

        self._seg_samples = 0
        self._speech_ms = r.speech_ms if r else 0
        self._bytes = 0
        self._last_audio = now
        self._last_speech = now
        self._last_ping = now
        self._last_seen = now
        self._audio_threshold = _NEVER

        self._ended = False
        self._end_t = now
        self._receipt: Receipt | None = None

        self._seq = r.seq if r else 0
        self._history: dict[int, tuple[int, int]] = {}
        self._included_seq = self._seq
        self._included_billed = self._base_billed
        self._included_usage = self._base_usage
        self._balance = snapshot.balance_micro
        self._cap_billed = self._base_billed + max(0, snapshot.balance_micro)

        self._win_limit_ms: tuple[int | None, int | None, int | None] = (
            None if plan.hourly_s is None else plan.hourly_s * 1000,
            None if plan.daily_s is None else plan.daily_s * 1000,
            None if plan.monthly_s is None else plan.monthly_s * 1000,
        )
        utc = now + utc_offset
        self._win_start = list(window_starts(utc))
        self._win_end = [b - utc_offset for b in next_boundaries(utc)]
        self._win_acct = [snapshot.usage.hour_ms, snapshot.usage.day_ms, snapshot.usage.month_ms]
        self._win_w0 = [self._base_usage] * 3
        self._win_mark = [self._base_usage] * 3
        has_windows = any(lim is not None for lim in self._win_limit_ms)
        self._rollover_at = next_boundary(utc) - utc_offset if has_windows else _INF

        levels = tuple(sorted(set(rules.warn_before_s), reverse=True))
        self._levels = levels
        self._cap_ms = config.max_session_s(plan) * 1000
        self._idle_s = float(rules.idle_timeout_s)
        self._noaudio_s = float(rules.no_audio_timeout_s)
        self._keepalive_s = float(rules.keepalive_timeout_s)
        self._lv_cap = tuple(w for w in levels if w * 1000 < self._cap_ms)
        self._lv_idle = tuple(w for w in levels if w < rules.idle_timeout_s)
        self._lv_noaudio = tuple(w for w in levels if w < rules.no_audio_timeout_s)
        self._lv_keepalive = tuple(w for w in levels if w < rules.keepalive_timeout_s)
        self._cap_at = self._at_ms(self._cap_ms - self._base_duration)
        self._basis_limits: list[_BasisLimit] = []
        self._warn_idx: dict[Code, int] = {}
        self._warn_ref: dict[Code, float] = {}

        self._status_every = float(rules.status_interval_s)
        self._status_at = now + self._status_every
        self._check_every = float(rules.balance_check_s)
        self._check_at = now + self._check_every

        self._msg_rate = float(plan.ws_messages_per_s or 0)
        self._msg_tokens = self._msg_rate
        self._msg_t = now
        self._byte_rate = float(plan.audio_bytes_per_s or 0)
        self._byte_tokens = self._byte_rate
        self._byte_t = now
        self._throttle_until = -_INF
        self._abuse_s = float(rules.rate_abuse_s)

        self._recompute_limits()

    # ------------------------------------------------------------ hot path

    def on_audio(self, now: float, n_samples: int, nbytes: int, speech_ms: int) -> list[Event] | None:
        """Count one decoded audio chunk; ``None`` unless something happened.

        ``n_samples``: complete sample frames (per channel) in the chunk;
        ``speech_ms``: ms of it the VAD judged speech (0 if none).
        """
        if self._ended:
            return None
        s = self._seg_samples + n_samples
        self._seg_samples = s
        self._bytes += nbytes
        self._last_audio = now
        if speech_ms:
            self._speech_ms += speech_ms
            self._last_speech = now
        if s >= self._audio_threshold:
            self._last_seen = now
            return self._evaluate(now, periodic=False) or None
        return None

    def on_message(self, now: float, nbytes: int) -> Event | None:
        """Meter one client WebSocket message against the plan's rates.

        Call it for every message (audio or control). ``nbytes`` is the audio
        payload it carries (decoded bytes; 0 for control messages). Returns a
        :class:`Throttle` when the client should pause, an :class:`End`
        (RATE_LIMITED) for a client that keeps ignoring that, else ``None``.
        """
        if self._ended:
            return None
        msg_over = byte_over = 0.0
        rate = self._msg_rate
        if rate:
            t = self._msg_tokens + (now - self._msg_t) * rate
            if t > rate:
                t = rate
            t -= 1.0
            self._msg_tokens = t
            self._msg_t = now
            if t < 0.0:
                msg_over = -t / rate
        rate = self._byte_rate
        if rate and nbytes:
            t = self._byte_tokens + (now - self._byte_t) * rate
            if t > rate:
                t = rate
            t -= nbytes
            self._byte_tokens = t
            self._byte_t = now
            if t < 0.0:
                byte_over = -t / rate
        if msg_over or byte_over:
            return self._over_rate(now, msg_over, byte_over, nbytes)
        return None

    def on_ping(self, now: float) -> None:
        """A client ping (JSON or WebSocket): keeps the session alive."""
        if not self._ended:
            self._last_ping = now

    # ------------------------------------------------------------ timers

    def tick(self, now: float) -> list[Event]:
        """Timer-driven checks; call it at (or after) :meth:`next_deadline`."""
        if self._ended:
            return []
        self._last_seen = max(self._last_seen, now)
        return self._evaluate(now, periodic=True)

    def next_deadline(self) -> float:
        """Monotonic time at which :meth:`tick` must next be called (``inf`` once ended).

        Audio, pings and messages only move it later; re-read it after
        :meth:`tick` and :meth:`refresh_account`.
        """
        if self._ended:
            return _INF
        if self._seg_samples >= self._audio_threshold:
            return self._last_seen  # a new session already within an audio warning: tick now
        d = min(self._status_at, self._check_at, self._rollover_at)
        warn_idx = self._warn_idx
        warn_ref = self._warn_ref
        for code, deadline, warn_at, ref, lv in self._wall_triggers():
            if deadline < d:
                d = deadline
            idx = warn_idx.get(code, 0) if ref is None or warn_ref.get(code) == ref else 0
            if idx < len(lv) and warn_at - lv[idx] < d:
                d = warn_at - lv[idx]
        return d

    # ------------------------------------------------------------ account

    def refresh_account(
        self, now: float, snap: AccountSnapshot, persisted_seq: int | None = None
    ) -> list[Event]:
        """Apply a fresh snapshot from the store; may warn or end the session.

        ``persisted_seq``: seq of this session's last checkpoint the snapshot
        reflects (see the module docstring); ``None``: every checkpoint issued
        so far (exact when the store was flushed before the snapshot was read).
        """
        if self._ended:
            return []
        self._last_seen = max(self._last_seen, now)
        if now >= self._rollover_at:
            self._roll(now)
        if persisted_seq is None:
            persisted_seq = self._seq
        if persisted_seq > self._included_seq:
            if persisted_seq > self._seq:
                raise ValueError(f"persisted_seq {persisted_seq} was never issued (last seq {self._seq})")
            entry = self._history.get(persisted_seq)
            if entry is not None:
                self._included_seq = persisted_seq
                self._included_billed, self._included_usage = entry
                for seq in [s for s in self._history if s <= persisted_seq]:
                    del self._history[seq]
        billed_now = self._billed_at(now)
        self._balance = snap.balance_micro
        cap = self._included_billed + max(0, snap.balance_micro)
        overdrawn = cap < billed_now  # other sessions spent what this one already used
        self._cap_billed = max(cap, billed_now)  # the bill never goes down
        self._win_acct = [snap.usage.hour_ms, snap.usage.day_ms, snap.usage.month_ms]
        self._win_mark = [max(w0, self._included_usage) for w0 in self._win_w0]
        self._check_at = now + self._check_every
        self._recompute_limits()
        if overdrawn:
            return [self._policy_end(now, Code.INSUFFICIENT_CREDITS)]
        return self._evaluate(now, periodic=False)

    # ------------------------------------------------------------ end, checkpoints

    def end(self, now: float, reason: EndReason, code: Code | None = None) -> Receipt:
        """End the session (idempotent: later calls return the first Receipt)."""
        if self._receipt is not None:
            return self._receipt
        return self._finish(min(now, self._cap_at), reason, code)

    def checkpoint(self, now: float) -> Checkpoint:
        """Cumulative totals for the store; ``seq`` increments on every call."""
        t = self._end_t if self._ended else now
        self._seq += 1
        billed = self._billed_at(t)
        usage = self._usage_at(t)
        hist = self._history
        hist[self._seq] = (billed, usage)
        if len(hist) > _HISTORY_MAX:
            del hist[next(iter(hist))]
        return Checkpoint(
            seq=self._seq,
            billed_micro=billed,
            usage_ms=usage,
            audio_ms=self.audio_ms,
            speech_ms=self._speech_ms,
            wall_ms=self.wall_ms(t),
            samples=self.samples,
            utc=t + self._utc_offset,
            final=self._ended,
        )

    def status(self, now: float) -> Status:
        """A :class:`Status` event for ``now`` (frozen once ended)."""
        t = self._end_t if self._ended else now
        billed = self._billed_at(t)
        return Status(
            duration_ms=self.wall_ms(t),
            audio_ms=self.audio_ms,
            speech_ms=self._speech_ms,
            billed_micro=billed,
            remaining_micro=self._balance - (billed - self._included_billed),
        )

    # ------------------------------------------------------------ read-only state

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def receipt(self) -> Receipt | None:
        """The final Receipt once the session ended, else ``None``."""
        return self._receipt

    @property
    def basis(self) -> BillingBasis:
        return self._basis

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def model(self) -> Model:
        return self._model

    @property
    def seq(self) -> int:
        """The seq of the last checkpoint issued."""
        return self._seq

    @property
    def samples(self) -> int:
        """Sample frames received (per channel), including any resumed part."""
        return self._base_samples + self._seg_samples

    @property
    def bytes_received(self) -> int:
        """Audio bytes received by this process (not including a resumed part)."""
        return self._bytes

    @property
    def audio_ms(self) -> int:
        return self._base_audio + self._seg_samples * 1000 // self._sr

    @property
    def speech_ms(self) -> int:
        return self._speech_ms

    def wall_ms(self, now: float) -> int:
        """Session wall time in ms, including any resumed part (frozen once ended)."""
        t = self._end_t if self._ended else now
        return self._base_duration + max(0, _ms(t - self._t0))

    @property
    def usage_ms(self) -> int:
        """Billed-basis usage in ms, as of the latest time the policy was told."""
        return self._usage_at(self._end_t if self._ended else self._last_seen_time())

    @property
    def billed_micro(self) -> int:
        """Cumulative bill, as of the latest time the policy was told (wall basis)."""
        return self._billed_at(self._end_t if self._ended else self._last_seen_time())

    @property
    def credits_remaining_micro(self) -> int:
        """The account balance as this session sees it (snapshot minus unpersisted bill)."""
        return self._balance - (self.billed_micro - self._included_billed)

    @property
    def realtime_bytes_per_s(self) -> int:
        """Bytes per second of this session's audio format streamed in real time."""
        return self._sr * self._channels * self._bytes_per_sample

    # ------------------------------------------------------------ internals

    def _last_seen_time(self) -> float:
        return max(self._last_seen, self._last_audio, self._last_ping)

    def _at_ms(self, ms: int) -> float:
        """The earliest monotonic time at which ``ms`` of segment wall time have passed."""
        t0 = self._t0
        d = t0 + ms / 1000.0
        while _ms(d - t0) < ms:
            d = math.nextafter(d, _INF)
        return d

    def _raw_billed_at(self, t: float) -> int:
        if self._audio_basis:
            return self._base_billed + self._seg_samples * self._rate // self._sr
        return self._base_billed + max(0, _ms(t - self._t0)) * self._rate // 1000

    def _billed_at(self, t: float) -> int:
        raw = self._raw_billed_at(t)
        cap = self._cap_billed
        return raw if raw < cap else cap

    def _usage_at(self, t: float) -> int:
        if self._audio_basis:
            return self._base_usage + self._seg_samples * 1000 // self._sr
        return self._base_usage + max(0, _ms(t - self._t0))

    def _recompute_limits(self) -> None:
        """Positions of the basis limits: segment samples (audio) or deadlines (wall)."""
        audio = self._audio_basis
        sr = self._sr
        budget = self._cap_billed - self._base_billed
        units = sr if audio else 1000
        last_paid = max_units_within(budget, units, self._rate)  # >= 0: the cap covers the bill
        limits: list[_BasisLimit] = [
            (Code.INSUFFICIENT_CREDITS, last_paid + 1, last_paid)
            if audio
            else (Code.INSUFFICIENT_CREDITS, self._at_ms(last_paid + 1), self._at_ms(last_paid))
        ]
        for i, code in enumerate(_WINDOW_CODES):
            lim = self._win_limit_ms[i]
            if lim is None:
                continue
            seg_target = max(0, lim - self._win_acct[i] + self._win_mark[i] - self._base_usage)
            pos = -(-seg_target * sr // 1000) if audio else self._at_ms(seg_target)
            limits.append((code, pos, pos))
        self._basis_limits = limits
        self._recompute_audio_threshold()

    def _recompute_audio_threshold(self) -> None:
        if not self._audio_basis:
            self._audio_threshold = _NEVER
            return
        thr: float = _NEVER
        levels = self._levels
        sr = self._sr
        for code, pos, warn_at in self._basis_limits:
            if pos < thr:
                thr = pos
            idx = self._warn_idx.get(code, 0)
            if idx < len(levels) and warn_at - levels[idx] * sr < thr:
                thr = warn_at - levels[idx] * sr
        self._audio_threshold = int(thr)

    def _wall_triggers(self) -> list[_WallTrigger]:
        ka_ref = max(self._last_audio, self._last_ping)
        out: list[_WallTrigger] = []
        if not self._audio_basis:
            levels = self._levels
            out.extend((code, at, warn_at, None, levels) for code, at, warn_at in self._basis_limits)
        cap = self._cap_at
        out.append((Code.SESSION_LIMIT_REACHED, cap, cap, None, self._lv_cap))
        d = ka_ref + self._keepalive_s
        out.append((Code.KEEPALIVE_TIMEOUT, d, d, ka_ref, self._lv_keepalive))
        audio = self._last_audio
        d = audio + self._noaudio_s
        out.append((Code.NO_AUDIO_TIMEOUT, d, d, audio, self._lv_noaudio))
        speech = self._last_speech
        d = speech + self._idle_s
        out.append((Code.IDLE_TIMEOUT, d, d, speech, self._lv_idle))
        return out

    def _roll(self, now: float) -> None:
        """Calendar windows that ended since the last look restart from this session's usage."""
        off = self._utc_offset
        utc = now + off
        starts = window_starts(utc)
        changed = False
        for i in range(3):
            if starts[i] != self._win_start[i]:
                self._win_start[i] = starts[i]
                self._win_acct[i] = 0
                if self._audio_basis:
                    w0 = self._usage_at(now)
                else:
                    w0 = self._base_usage + max(0, _ms(starts[i] - off - self._t0))
                self._win_w0[i] = w0
                self._win_mark[i] = max(w0, self._included_usage)
                self._warn_idx[_WINDOW_CODES[i]] = 0  # a new window: a new approach
                changed = True
        self._rollover_at = next_boundary(utc) - off
        self._win_end = [b - off for b in next_boundaries(utc)]
        if changed:
            self._recompute_limits()

    def _evaluate(self, now: float, *, periodic: bool) -> list[Event]:
        if now >= self._rollover_at:
            self._roll(now)
        wall = self._wall_triggers()
        fired: tuple[float, Code] | None = None
        if self._audio_basis:
            s = self._seg_samples
            for code, pos, _warn_at in self._basis_limits:
                if s >= pos:
                    fired = (now, code)
                    break
        for code, deadline, _warn_at, _ref, _lv in wall:
            if now >= deadline and (fired is None or deadline < fired[0]):
                fired = (deadline, code)
        if fired is not None:
            return [self._policy_end(*fired)]

        events: list[Event] = []
        warn_idx = self._warn_idx
        if self._audio_basis:
            s = self._seg_samples
            sr = self._sr
            levels = self._levels
            for code, _pos, warn_at in self._basis_limits:
                c = 0
                for w in levels:
                    if s < warn_at - w * sr:
                        break
                    c += 1
                if c > warn_idx.get(code, 0):
                    left = max(1, -(-(int(warn_at) - s) // sr))
                    if not self._outlived(code, now + left):
                        events.append(self._warning(code, left))
                warn_idx[code] = c
        warn_ref = self._warn_ref
        for code, _deadline, warn_at, ref, lv in wall:
            idx = warn_idx.get(code, 0)
            if ref is not None and warn_ref.get(code) != ref:
                warn_ref[code] = ref
                idx = 0
            c = 0
            for w in lv:
                if now < warn_at - w:
                    break
                c += 1
            if c > idx and not self._outlived(code, warn_at):
                events.append(self._warning(code, _ceil_s(warn_at - now)))
            warn_idx[code] = c
        self._recompute_audio_threshold()

        if periodic:
            if now >= self._status_at:
                events.append(self.status(now))
                self._status_at = self._advance(self._status_at, self._status_every, now)
            if now >= self._check_at:
                events.append(_BALANCE_CHECK_DUE)
                self._check_at = self._advance(self._check_at, self._check_every, now)
        return events

    def _outlived(self, code: Code, at: float) -> bool:
        """Would a usage-limit ``code`` be reached only after its window rolls over?"""
        i = _WINDOW_INDEX.get(code)
        return i is not None and at >= self._win_end[i]

    @staticmethod
    def _advance(at: float, every: float, now: float) -> float:
        at += every
        if at <= now:
            at += (math.floor((now - at) / every) + 1) * every
        return at

    def _over_rate(self, now: float, msg_over: float, byte_over: float, nbytes: int) -> Event | None:
        if max(msg_over, byte_over) > self._abuse_s:
            return self._policy_end(now, Code.RATE_LIMITED)
        if now < self._throttle_until:
            return None  # already told to pause
        # pause until the same message would fit again
        wait = 0.0
        if msg_over:
            wait = msg_over + 1.0 / self._msg_rate
        if byte_over:
            wait = max(wait, byte_over + nbytes / self._byte_rate)
        wait_ms = max(1, math.ceil(wait * 1000.0 - 1e-6))
        self._throttle_until = now + wait_ms / 1000.0
        plan = self._plan
        limits = []
        if plan.ws_messages_per_s:
            limits.append(f"{plan.ws_messages_per_s} messages/s")
        if plan.audio_bytes_per_s:
            limits.append(f"{plan.audio_bytes_per_s} audio bytes/s")
        return Throttle(
            wait_ms=wait_ms,
            message=f"message rate exceeded (plan {plan.name!r} allows {' and '.join(limits)}); "
            f"pause sending for {wait_ms} ms",
        )

    def _finish(self, t: float, reason: EndReason, code: Code | None) -> Receipt:
        billed = self._billed_at(t)
        self._ended = True
        self._end_t = t
        self._receipt = Receipt(
            reason=reason,
            code=code,
            duration_ms=self.wall_ms(t),
            audio_ms=self.audio_ms,
            speech_ms=self._speech_ms,
            billed_micro=billed,
            remaining_micro=self._balance - (billed - self._included_billed),
            samples=self.samples,
            usage_ms=self._usage_at(t),
        )
        return self._receipt

    def _policy_end(self, t: float, code: Code) -> End:
        receipt = self._finish(t, EndReason.POLICY, code)
        return End(code=code, message=self._end_message(code, receipt))

    # ------------------------------------------------------------ messages

    def _end_message(self, code: Code, receipt: Receipt) -> str:
        plan = self._plan
        rules = self._config.rules
        if code is Code.INSUFFICIENT_CREDITS:
            return (
                f"credits exhausted: balance {format_credits(receipt.remaining_micro)} credits cannot pay "
                f"for more at {format_credits(self._rate)} credits/s; add credits and reconnect"
            )
        if code is Code.SESSION_LIMIT_REACHED:
            return (
                f"maximum session length of {format_duration(self._cap_ms // 1000)} reached "
                f"(plan {plan.name!r}); start a new session"
            )
        if code in _WINDOW_CODES:
            i = _WINDOW_CODES.index(code)
            lim = self._win_limit_ms[i] or 0
            return (
                f"{_WINDOW_NAMES[i]} usage limit of {format_duration(lim // 1000)} reached "
                f"(plan {plan.name!r}); wait for {_WINDOW_NEXT[i]} or upgrade"
            )
        if code is Code.IDLE_TIMEOUT:
            return f"no speech for {format_duration(rules.idle_timeout_s)}: session closed as idle"
        if code is Code.NO_AUDIO_TIMEOUT:
            return f"no audio for {format_duration(rules.no_audio_timeout_s)}: session closed"
        if code is Code.KEEPALIVE_TIMEOUT:
            return f"neither audio nor ping for {format_duration(rules.keepalive_timeout_s)}: session closed"
        if code is Code.RATE_LIMITED:
            return (
                f"message rate limit of plan {plan.name!r} exceeded for more than "
                f"{format_duration(rules.rate_abuse_s)} despite throttling"
            )
        return f"session ended: {code.value}"  # pragma: no cover - every policy code is handled above

    def _warning(self, code: Code, seconds_left: int) -> Warning:
        audio = " of audio" if self._audio_basis else ""
        rules = self._config.rules
        if code is Code.INSUFFICIENT_CREDITS:
            what = f"credits run out in {seconds_left} s{audio}; add credits to keep streaming"
        elif code is Code.SESSION_LIMIT_REACHED:
            what = (
                f"the session reaches its maximum length of {format_duration(self._cap_ms // 1000)} "
                f"in {seconds_left} s"
            )
        elif code in _WINDOW_CODES:
            i = _WINDOW_CODES.index(code)
            lim = self._win_limit_ms[i] or 0
            what = (
                f"the {_WINDOW_NAMES[i]} usage limit of {format_duration(lim // 1000)} is reached "
                f"in {seconds_left} s{audio}"
            )
        elif code is Code.IDLE_TIMEOUT:
            what = (
                f"no speech detected: the session closes in {seconds_left} s "
                f"(idle timeout {format_duration(rules.idle_timeout_s)})"
            )
        elif code is Code.NO_AUDIO_TIMEOUT:
            what = f"no audio received: the session closes in {seconds_left} s unless audio is sent"
        else:
            what = f"no audio or ping received: the session closes in {seconds_left} s"
        return Warning(code=code, seconds_left=seconds_left, message=what)
