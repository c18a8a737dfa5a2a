"""SessionPolicy: billing, balance, limits, timeouts, warnings, windows, resume, end.

Plain synchronous tests: time is a number we pass in. Boundaries are checked
one millisecond / one sample before and at each limit.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy.config import EngineConfig, load_config
from engine.policy.money import cost_micro
from engine.policy.session import SessionPolicy
from engine.policy.types import (
    MICRO,
    AccountSnapshot,
    BalanceCheckDue,
    BillingBasis,
    Code,
    End,
    EndReason,
    Event,
    Plan,
    ResumeState,
    Status,
    Usage,
    Warning,
)

T0 = 1000.0  # monotonic time at session start
SR = 16000
START_UTC = datetime(2026, 3, 10, 12, 20, tzinfo=UTC).timestamp()  # far from any hour boundary
QUIET = {  # timers pushed out of the way for tests about something else
    "idle_timeout_s": 10**6,
    "no_audio_timeout_s": 10**6,
    "keepalive_timeout_s": 10**6,
}
BASE_CFG = load_config(None)

Timed = list[tuple[float, Event]]


def config(**rules: Any) -> EngineConfig:
    return msgspec.structs.replace(BASE_CFG, rules=msgspec.structs.replace(BASE_CFG.rules, **rules))


def snapshot(balance: int = 1000 * MICRO, hour: int = 0, day: int = 0, month: int = 0) -> AccountSnapshot:
    return AccountSnapshot(
        account_id="acct",
        plan="x",
        balance_micro=balance,
        active_sessions=0,
        usage=Usage(hour_ms=hour, day_ms=day, month_ms=month),
    )


def make(
    plan: str | Plan = "free",
    *,
    cfg: EngineConfig | None = None,
    balance: int = 1000 * MICRO,
    usage: tuple[int, int, int] = (0, 0, 0),
    basis: BillingBasis | None = None,
    model: str | None = None,
    sr: int = SR,
    start_utc: float = START_UTC,
    resumed: ResumeState | None = None,
    **plan_overrides: Any,
) -> SessionPolicy:
    cfg = cfg or BASE_CFG
    p = cfg.plan(plan) if isinstance(plan, str) else plan
    if basis is not None:
        plan_overrides["billing_basis"] = basis
    if plan_overrides:
        p = msgspec.structs.replace(p, **plan_overrides)
    return SessionPolicy(
        config=cfg,
        plan=p,
        model=cfg.model(model),
        snapshot=snapshot(balance, *usage),
        now=T0,
        utc_offset=start_utc - T0,
        sample_rate=sr,
        channels=1,
        bytes_per_sample=2,
        resumed=resumed,
    )


def drive(
    p: SessionPolicy,
    until: float,
    *,
    start: float = T0,
    chunk_s: float | None = 0.1,
    speech: bool = True,
    sr: int = SR,
) -> Timed:
    """Stream real-time audio (``chunk_s`` chunks; ``None``: no audio) and tick at every deadline."""
    out: Timed = []
    n = 0 if chunk_s is None else round(chunk_s * sr)
    k = 1
    while not p.ended:
        t_audio = math.inf if chunk_s is None else start + k * chunk_s
        d = p.next_deadline()
        if d <= t_audio and d <= until:
            out.extend((d, e) for e in p.tick(d))
            continue
        if t_audio > until:
            break
        evs = p.on_audio(t_audio, n, 2 * n, round(chunk_s * 1000) if speech and chunk_s else 0)
        if evs:
            out.extend((t_audio, e) for e in evs)
        k += 1
    return out


def of(events: Timed, t: type) -> Timed:
    return [(time, e) for time, e in events if isinstance(e, t)]


def ends(events: Timed) -> list[tuple[float, Code]]:
    return [(round(time, 6), e.code) for time, e in events if isinstance(e, End)]


def warnings(events: Timed) -> list[tuple[float, Code, int]]:
    return [(round(time, 6), e.code, e.seconds_left) for time, e in events if isinstance(e, Warning)]


def end_code(evs: list[Event] | None) -> Code | None:
    for e in evs or []:
        if isinstance(e, End):
            return e.code
    return None


# ============================================================ billing


@pytest.mark.parametrize("sr", [16000, 8000, 44100])
@pytest.mark.parametrize("model", ["standard", "enhanced"])
@pytest.mark.parametrize("chunks", [[1], [3, 7, 1601], [1599, 1, 1, 1, 16001], [160] * 333 + [17]])
def test_audio_billing_is_exact_for_odd_chunks(sr: int, model: str, chunks: list[int]) -> None:
    p = make("enterprise", model=model, sr=sr)
    rate = BASE_CFG.model(model).rate_micro_per_s
    total = 0
    for i, n in enumerate(chunks):
        assert p.on_audio(T0 + i * 0.001, n, 2 * n, 0) is None
        total += n
        assert p.billed_micro == cost_micro(total, sr, rate)
    assert p.samples == total
    assert p.audio_ms == total * 1000 // sr
    assert p.usage_ms == p.audio_ms
    cp = p.checkpoint(T0 + 1)
    assert (cp.billed_micro, cp.samples, cp.audio_ms) == (
        cost_micro(total, sr, rate),
        total,
        total * 1000 // sr,
    )


def test_billing_examples() -> None:
    p = make("enterprise", model="enhanced")  # 3 credits/s at 16 kHz: 187.5 micro-credits a sample
    p.on_audio(T0, 1, 2, 0)
    assert p.billed_micro == 187
    p.on_audio(T0, 1, 2, 0)
    assert p.billed_micro == 375  # cumulative: not 187 + 187
    p.on_audio(T0, 15998, 2, 0)
    assert p.billed_micro == 3 * MICRO


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=0, max_value=40_000), min_size=1, max_size=80),
    checkpoint_every=st.integers(min_value=1, max_value=7),
    sr=st.sampled_from([8000, 11025, 16000, 44100, 48000]),
    model=st.sampled_from(["standard", "enhanced"]),
)
def test_checkpoint_deltas_sum_to_the_cumulative_bill(
    chunks: list[int], checkpoint_every: int, sr: int, model: str
) -> None:
    p = make("enterprise", model=model, sr=sr, balance=10**9 * MICRO)
    rate = BASE_CFG.model(model).rate_micro_per_s
    charged = 0
    last = p.checkpoint(T0)
    for i, n in enumerate(chunks):
        p.on_audio(T0 + i * 0.01, n, 2 * n, 0)
        if i % checkpoint_every == 0:
            cp = p.checkpoint(T0 + i * 0.01)
            assert cp.seq == last.seq + 1
            assert cp.billed_micro >= last.billed_micro and cp.usage_ms >= last.usage_ms
            charged += cp.billed_micro - last.billed_micro
            last = cp
    final = p.end(T0 + 100, EndReason.CLIENT_CLOSE)
    cp = p.checkpoint(T0 + 100)
    charged += cp.billed_micro - last.billed_micro
    assert cp.final
    assert charged == final.billed_micro == cp.billed_micro == cost_micro(sum(chunks), sr, rate)


@settings(max_examples=300, deadline=None)
@given(
    balance=st.integers(min_value=0, max_value=200 * MICRO),
    rate=st.integers(min_value=1, max_value=5 * MICRO),
    sr=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
    chunks=st.lists(st.integers(min_value=0, max_value=3 * 48000), min_size=1, max_size=60),
)
def test_balance_never_goes_negative(balance: int, rate: int, sr: int, chunks: list[int]) -> None:
    cfg = msgspec.structs.replace(
        BASE_CFG, models={"standard": msgspec.structs.replace(BASE_CFG.model(), rate_micro_per_s=rate)}
    )
    p = make("enterprise", cfg=cfg, balance=balance, sr=sr)
    total = 0
    for i, n in enumerate(chunks):
        was_ended = p.ended
        evs = p.on_audio(T0 + i * 0.001, n, 2 * n, 0)  # far faster than real time
        if not was_ended:
            total += n
        assert 0 <= p.billed_micro <= balance
        assert p.credits_remaining_micro >= 0
        over = cost_micro(total, sr, rate) > balance
        # the session ends on exactly the chunk that would overdraw the balance
        assert p.ended is over
        if over and not was_ended:
            assert end_code(evs) is Code.INSUFFICIENT_CREDITS
            assert p.billed_micro == balance
        if was_ended:
            assert evs is None
    r = p.end(T0 + 1, EndReason.CLIENT_CLOSE)
    assert r.billed_micro == min(cost_micro(total, sr, rate), balance)
    assert r.remaining_micro == balance - r.billed_micro >= 0


# ============================================================ balance


def test_audio_balance_exhaustion_at_the_exact_sample() -> None:
    p = make("enterprise", balance=60 * MICRO)  # 30 s of audio at 2 credits/s
    assert p.on_audio(T0 + 1, 30 * SR - 1, 0, 100) is not None  # warnings only
    assert not p.ended
    assert p.on_audio(T0 + 1, 1, 0, 0) is None
    assert p.billed_micro == 60 * MICRO and p.credits_remaining_micro == 0 and not p.ended
    evs = p.on_audio(T0 + 1, 1, 0, 0)
    assert end_code(evs) is Code.INSUFFICIENT_CREDITS
    r = p.end(T0 + 2, EndReason.CLIENT_CLOSE)
    assert (r.reason, r.code, r.billed_micro, r.remaining_micro) == (
        EndReason.POLICY,
        Code.INSUFFICIENT_CREDITS,
        60 * MICRO,
        0,
    )
    assert r.samples == 30 * SR + 1


def test_wall_basis_balance_exhaustion_at_the_exact_ms() -> None:
    p = make("enterprise", basis=BillingBasis.WALL, balance=60 * MICRO, cfg=config(**QUIET))
    assert p.basis is BillingBasis.WALL
    ev = p.tick(T0 + 30.0)
    assert not p.ended and end_code(ev) is None
    assert p.billed_micro == 60 * MICRO
    assert p.next_deadline() == pytest.approx(T0 + 30.001, abs=1e-9)
    ev = p.tick(T0 + 30.001)
    assert end_code(ev) is Code.INSUFFICIENT_CREDITS
    r = p.end(T0 + 99, EndReason.CLIENT_CLOSE)
    assert (r.duration_ms, r.billed_micro, r.remaining_micro) == (30_001, 60 * MICRO, 0)


def test_wall_basis_bills_wall_time_not_audio() -> None:
    p = make("pro", basis=BillingBasis.WALL, cfg=config(**QUIET))
    p.on_audio(T0 + 0.5, 10 * SR, 0, 0)  # 10 s of audio in half a second
    assert p.checkpoint(T0 + 1.2345).billed_micro == cost_micro(1234, 1000, 2 * MICRO) == 2_468_000
    st_ = p.status(T0 + 2.0)
    assert (st_.duration_ms, st_.audio_ms, st_.billed_micro) == (2000, 10_000, 4 * MICRO)
    assert p.checkpoint(T0 + 2.0).usage_ms == 2000  # usage counts the billed basis
    r = p.end(T0 + 3.0015, EndReason.CLIENT_CLOSE)
    assert (r.duration_ms, r.billed_micro, r.usage_ms) == (3001, 6_002_000, 3001)


def test_model_basis_and_plan_override() -> None:
    cfg = msgspec.structs.replace(
        BASE_CFG,
        models={
            **BASE_CFG.models,
            "wallish": msgspec.structs.replace(
                BASE_CFG.model(), name="wallish", billing_basis=BillingBasis.WALL
            ),
        },
    )
    assert make("pro", cfg=cfg, model="wallish").basis is BillingBasis.WALL
    assert make("pro", cfg=cfg, model="wallish", basis=BillingBasis.AUDIO).basis is BillingBasis.AUDIO
    assert make("pro", cfg=cfg).basis is BillingBasis.AUDIO


def test_balance_warnings_in_audio_seconds() -> None:
    p = make("enterprise", balance=100 * MICRO)  # 50 s of audio
    out: Timed = []
    for i in range(1, 60):
        evs = p.on_audio(T0 + i * 0.1, SR, 0, 1000)  # 1 s chunks at 10x real time
        out.extend((i, e) for e in evs or [])
    assert warnings(out) == [(20, Code.INSUFFICIENT_CREDITS, 30), (40, Code.INSUFFICIENT_CREDITS, 10)]
    assert ends(out) == [(51, Code.INSUFFICIENT_CREDITS)]


def _stream(p: SessionPolicy, seconds: int, t: float) -> None:
    for _ in range(seconds):
        p.on_audio(t, SR, 0, 1000)


def test_refresh_with_persisted_seq_is_exact() -> None:
    p = make("pro", balance=100_000 * MICRO, usage=(60_000, 60_000, 60_000))
    _stream(p, 10, T0 + 10)
    cp = p.checkpoint(T0 + 10)
    assert (cp.seq, cp.billed_micro, cp.usage_ms) == (1, 20 * MICRO, 10_000)
    _stream(p, 5, T0 + 15)  # not persisted yet
    # the store applied seq 1: balance and usage include it
    evs = p.refresh_account(T0 + 15, snapshot(99_980 * MICRO, 70_000, 70_000, 70_000), persisted_seq=1)
    assert end_code(evs) is None
    assert p.credits_remaining_micro == 100_000 * MICRO - 30 * MICRO
    assert p.billed_micro == 30 * MICRO
    # hourly limit 3600 s: 60 s used before the session -> ends after 3540 s of audio
    assert p.on_audio(T0 + 16, 3540 * SR - 15 * SR - 1, 0, 1000) is not None  # warnings
    assert not p.ended
    assert end_code(p.on_audio(T0 + 16, 1, 0, 0)) is Code.HOURLY_LIMIT


def test_refresh_without_persisted_seq_assumes_every_checkpoint_is_persisted() -> None:
    p = make("pro", balance=100_000 * MICRO, usage=(60_000, 60_000, 60_000))
    _stream(p, 10, T0 + 10)
    p.checkpoint(T0 + 10)  # flushed to the store before the snapshot: seq 1 is in it
    _stream(p, 5, T0 + 15)
    p.refresh_account(T0 + 15, snapshot(99_980 * MICRO, 70_000, 70_000, 70_000))
    assert p.credits_remaining_micro == 100_000 * MICRO - 30 * MICRO
    p.on_audio(T0 + 16, 3540 * SR - 15 * SR - 1, 0, 1000)
    assert not p.ended
    assert end_code(p.on_audio(T0 + 16, 1, 0, 0)) is Code.HOURLY_LIMIT


def test_refresh_with_a_checkpoint_still_queued() -> None:
    p = make("pro", balance=100_000 * MICRO, usage=(60_000, 60_000, 60_000))
    _stream(p, 10, T0 + 10)
    assert p.checkpoint(T0 + 10).seq == 1
    _stream(p, 5, T0 + 15)
    assert p.checkpoint(T0 + 15).seq == 2  # queued, not committed when the snapshot is read
    snap = snapshot(99_980 * MICRO, 70_000, 70_000, 70_000)  # reflects seq 1 only
    p.refresh_account(T0 + 15, snap, persisted_seq=1)
    assert p.credits_remaining_micro == 100_000 * MICRO - 30 * MICRO  # exact
    q = make("pro", balance=100_000 * MICRO, usage=(60_000, 60_000, 60_000))
    _stream(q, 10, T0 + 10)
    q.checkpoint(T0 + 10)
    _stream(q, 5, T0 + 15)
    q.checkpoint(T0 + 15)
    q.refresh_account(T0 + 15, snap)  # without persisted_seq: misses the queued 5 s
    assert q.credits_remaining_micro == 100_000 * MICRO - 20 * MICRO


def test_refresh_persisted_seq_older_than_known_is_ignored() -> None:
    p = make("pro", balance=1000 * MICRO)
    _stream(p, 10, T0 + 10)
    p.checkpoint(T0 + 10)
    p.refresh_account(T0 + 10, snapshot(980 * MICRO), persisted_seq=1)
    p.refresh_account(T0 + 11, snapshot(980 * MICRO), persisted_seq=0)  # a stale answer
    assert p.credits_remaining_micro == 980 * MICRO


def test_refresh_unknown_seq_is_an_error() -> None:
    p = make("pro")
    p.checkpoint(T0)
    with pytest.raises(ValueError, match="never issued"):
        p.refresh_account(T0, snapshot(), persisted_seq=2)


def test_other_sessions_spending_end_this_one_at_once() -> None:
    p = make("pro", balance=100 * MICRO)
    _stream(p, 10, T0 + 10)  # 20 credits, nothing persisted
    evs = p.refresh_account(T0 + 10, snapshot(15 * MICRO))  # others spent 85
    assert end_code(evs) is Code.INSUFFICIENT_CREDITS
    r = p.end(T0 + 11, EndReason.CLIENT_CLOSE)
    assert r.billed_micro == 20 * MICRO  # the bill never goes down: audio received is billed
    assert r.remaining_micro == -5 * MICRO


def test_refresh_with_less_balance_moves_the_limit_earlier() -> None:
    p = make("pro", balance=100 * MICRO)
    _stream(p, 10, T0 + 10)  # 20 credits
    evs = p.refresh_account(T0 + 10, snapshot(40 * MICRO))  # others spent 40: 20 left = 10 s
    assert [(e.code, e.seconds_left) for e in evs if isinstance(e, Warning)] == [
        (Code.INSUFFICIENT_CREDITS, 10)
    ]
    assert len(evs) == 1
    p.on_audio(T0 + 11, 10 * SR, 0, 1000)  # 20 more credits: exactly the 40 left
    assert not p.ended
    assert end_code(p.on_audio(T0 + 11, 1, 0, 0)) is Code.INSUFFICIENT_CREDITS


def test_top_up_re_arms_balance_warnings() -> None:
    p = make("pro", balance=100 * MICRO)  # 50 s of audio
    out: list[Event] = []
    for _ in range(45):
        out += p.on_audio(T0 + 1, SR, 0, 1000) or []
    assert [(e.code, e.seconds_left) for e in out if isinstance(e, Warning)] == [
        (Code.INSUFFICIENT_CREDITS, 30),
        (Code.INSUFFICIENT_CREDITS, 10),
    ]
    assert p.refresh_account(T0 + 2, snapshot(1090 * MICRO)) == []  # topped up: 545 s left
    out = []
    for _ in range(600):
        out += p.on_audio(T0 + 3, SR, 0, 1000) or []
    assert [(e.code, e.seconds_left) for e in out if isinstance(e, Warning)] == [
        (Code.INSUFFICIENT_CREDITS, 30),
        (Code.INSUFFICIENT_CREDITS, 10),
    ]
    assert end_code(out) is Code.INSUFFICIENT_CREDITS


def test_balance_check_due_every_30_s_and_after_refresh() -> None:
    p = make("pro", cfg=config(**QUIET, status_interval_s=10**6))
    assert p.next_deadline() == T0 + 30
    assert p.tick(T0 + 29.999) == []
    assert p.tick(T0 + 30) == [BalanceCheckDue()]
    assert p.next_deadline() == T0 + 60
    p.refresh_account(T0 + 31, snapshot())
    assert p.next_deadline() == T0 + 61
    assert p.tick(T0 + 61) == [BalanceCheckDue()]


# ============================================================ status


def test_status_every_10_s() -> None:
    p = make("pro", cfg=config(**QUIET))
    out = drive(p, T0 + 30.05)
    statuses = of(out, Status)
    assert [round(t, 6) for t, _ in statuses] == [T0 + 10, T0 + 20, T0 + 30]
    s = statuses[0][1]
    # drive() ticks before the audio chunk due at the same moment: 9.9 s of audio so far
    assert s == Status(
        duration_ms=10_000,
        audio_ms=9900,
        speech_ms=9900,
        billed_micro=19_800_000,
        remaining_micro=980_200_000,
    )
    assert p.status(T0 + 15.5).duration_ms == 15_500


# ============================================================ session length


@pytest.mark.parametrize(
    ("plan", "hard_cap", "cap_s"),
    [
        ("free", 48 * 3600, 300),
        ("basic", 48 * 3600, 600),
        ("pro", 48 * 3600, 1800),
        ("enterprise", 48 * 3600, 7200),
        ("enterprise", 100, 100),
        ("free", 299, 299),
    ],
)
def test_session_limit_at_the_exact_ms(plan: str, hard_cap: int, cap_s: int) -> None:
    p = make(plan, cfg=config(**QUIET, hard_cap_s=hard_cap))
    assert end_code(p.tick(T0 + cap_s - 0.001)) is None
    assert end_code(p.tick(T0 + cap_s)) is Code.SESSION_LIMIT_REACHED
    r = p.end(T0 + cap_s + 1, EndReason.CLIENT_CLOSE)
    assert r.duration_ms == cap_s * 1000 and r.code is Code.SESSION_LIMIT_REACHED


def test_late_tick_ends_the_session_at_the_deadline() -> None:
    p = make("free", basis=BillingBasis.WALL, cfg=config(**QUIET))
    assert end_code(p.tick(T0 + 305.5)) is Code.SESSION_LIMIT_REACHED
    r = p.receipt
    assert r is not None
    assert (r.duration_ms, r.billed_micro) == (300_000, 600 * MICRO)  # not 305.5 s


def test_client_close_after_the_cap_is_clamped_to_the_cap() -> None:
    p = make("free", basis=BillingBasis.WALL, cfg=config(**QUIET))
    r = p.end(T0 + 400, EndReason.CLIENT_CLOSE)
    assert (r.duration_ms, r.billed_micro, r.code) == (300_000, 600 * MICRO, None)


def test_session_limit_warnings_exactly_once() -> None:
    p = make("free", cfg=config(**QUIET))
    out: Timed = []
    t = T0
    while not p.ended:  # tick far more often than needed, and at every deadline
        t = min(round(t + 0.25, 6), p.next_deadline())
        out.extend((t, e) for e in p.tick(t))
    assert warnings(out) == [
        (T0 + 270, Code.SESSION_LIMIT_REACHED, 30),
        (T0 + 290, Code.SESSION_LIMIT_REACHED, 10),
    ]
    assert ends(out) == [(T0 + 300, Code.SESSION_LIMIT_REACHED)]


def test_late_tick_sends_only_the_most_urgent_warning() -> None:
    p = make("free", cfg=config(**QUIET))
    assert warnings([(0, e) for e in p.tick(T0 + 295)]) == [(0, Code.SESSION_LIMIT_REACHED, 5)]
    assert p.tick(T0 + 296) == []


def test_warn_levels_are_configurable() -> None:
    p = make("free", cfg=config(**QUIET, warn_before_s=(5, 60, 120)))
    out = drive(p, T0 + 400, chunk_s=None)
    assert warnings(out) == [
        (T0 + 180, Code.SESSION_LIMIT_REACHED, 120),
        (T0 + 240, Code.SESSION_LIMIT_REACHED, 60),
        (T0 + 295, Code.SESSION_LIMIT_REACHED, 5),
    ]


# ============================================================ idle / no audio / keepalive


def test_next_deadline_schedule_of_an_idle_session() -> None:
    p = make("free")
    out = drive(p, T0 + 1000, chunk_s=None)
    assert ends(out) == [(T0 + 60, Code.IDLE_TIMEOUT)]
    assert warnings(out) == [(T0 + 30, Code.IDLE_TIMEOUT, 30), (T0 + 50, Code.IDLE_TIMEOUT, 10)]
    assert [round(t, 6) for t, _ in of(out, Status)] == [T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50]
    assert [round(t, 6) for t, _ in of(out, BalanceCheckDue)] == [T0 + 30]
    assert p.next_deadline() == math.inf


@pytest.mark.parametrize(("tick_at", "ended"), [(59.999, False), (60.0, True)])
def test_idle_timeout_boundary(tick_at: float, ended: bool) -> None:
    p = make("free")
    for i in range(1, 599):  # audio without speech does not reset the idle timer
        assert end_code(p.on_audio(T0 + i * 0.1, 1600, 3200, 0)) is None
    assert (end_code(p.tick(T0 + tick_at)) is Code.IDLE_TIMEOUT) is ended
    if ended:
        assert p.receipt is not None and p.receipt.duration_ms == 60_000


def test_non_speech_audio_does_not_reset_idle() -> None:
    p = make("free")
    out = drive(p, T0 + 200, speech=False)
    assert ends(out) == [(T0 + 60, Code.IDLE_TIMEOUT)]


def test_speech_resets_idle_and_re_arms_its_warnings() -> None:
    p = make("free")
    out = drive(p, T0 + 40, speech=False)
    assert p.on_audio(T0 + 40, 1600, 3200, 30) is None  # 30 ms of speech
    out += drive(p, T0 + 1000, start=T0 + 40, speech=False)
    assert warnings(out) == [
        (T0 + 30, Code.IDLE_TIMEOUT, 30),
        (T0 + 70, Code.IDLE_TIMEOUT, 30),
        (T0 + 90, Code.IDLE_TIMEOUT, 10),
    ]
    assert ends(out) == [(T0 + 100, Code.IDLE_TIMEOUT)]
    assert p.speech_ms == 30


def test_continuous_speech_never_idles() -> None:
    p = make("free")
    out = drive(p, T0 + 1000)
    assert ends(out) == [(T0 + 300, Code.SESSION_LIMIT_REACHED)]
    assert all(w[1] is Code.SESSION_LIMIT_REACHED for w in warnings(out))


@pytest.mark.parametrize(("tick_at", "ended"), [(3599.999, False), (3600.0, True)])
def test_no_audio_timeout_boundary_pings_do_not_count(tick_at: float, ended: bool) -> None:
    p = make(
        "enterprise",
        cfg=config(idle_timeout_s=10**6, keepalive_timeout_s=10**6, hard_cap_s=10**6),
        max_session_s=10**6,
    )
    for k in range(1, 360):
        p.on_ping(T0 + k * 10)
    assert (end_code(p.tick(T0 + tick_at)) is Code.NO_AUDIO_TIMEOUT) is ended


def test_audio_resets_no_audio_timeout() -> None:
    p = make("enterprise", cfg=config(idle_timeout_s=10**6, keepalive_timeout_s=10**6), max_session_s=10**6)
    p.on_audio(T0 + 1000, 160, 320, 0)
    out = drive(p, T0 + 10**5, chunk_s=None)
    assert ends(out) == [(T0 + 4600, Code.NO_AUDIO_TIMEOUT)]
    assert warnings(out) == [(T0 + 4570, Code.NO_AUDIO_TIMEOUT, 30), (T0 + 4590, Code.NO_AUDIO_TIMEOUT, 10)]


@pytest.mark.parametrize(
    ("ping_at", "audio_at", "ends_at"),
    [
        (None, None, 180.0),
        (100.0, None, 280.0),
        (None, 150.0, 330.0),
        (100.0, 50.0, 280.0),
        (50.0, 100.0, 280.0),
    ],
)
def test_keepalive_timeout(ping_at: float | None, audio_at: float | None, ends_at: float) -> None:
    p = make("enterprise", cfg=config(idle_timeout_s=10**6))
    if ping_at is not None:
        p.on_ping(T0 + ping_at)
    if audio_at is not None:
        p.on_audio(T0 + audio_at, 160, 320, 0)
    assert end_code(p.tick(T0 + ends_at - 0.001)) is None
    assert end_code(p.tick(T0 + ends_at)) is Code.KEEPALIVE_TIMEOUT


def test_keepalive_warnings_re_arm_on_ping() -> None:
    p = make("enterprise", cfg=config(idle_timeout_s=10**6))
    out = drive(p, T0 + 175, chunk_s=None)
    p.on_ping(T0 + 175)
    out += drive(p, T0 + 1000, chunk_s=None)
    assert warnings(out) == [
        (T0 + 150, Code.KEEPALIVE_TIMEOUT, 30),
        (T0 + 170, Code.KEEPALIVE_TIMEOUT, 10),
        (T0 + 325, Code.KEEPALIVE_TIMEOUT, 30),
        (T0 + 345, Code.KEEPALIVE_TIMEOUT, 10),
    ]
    assert ends(out) == [(T0 + 355, Code.KEEPALIVE_TIMEOUT)]


def test_warning_levels_longer_than_the_timer_are_skipped() -> None:
    p = make("enterprise", cfg=config(idle_timeout_s=20, warn_before_s=(30, 10)))
    out = drive(p, T0 + 100, chunk_s=None)
    assert warnings(out) == [(T0 + 10, Code.IDLE_TIMEOUT, 10)]
    assert ends(out) == [(T0 + 20, Code.IDLE_TIMEOUT)]


def test_simultaneous_triggers_prefer_the_earliest_then_credits() -> None:
    # idle (60 s) and the session cap (60 s) at the same moment: the cap wins the tie
    p = make("free", cfg=config(hard_cap_s=60))
    assert end_code(p.tick(T0 + 60)) is Code.SESSION_LIMIT_REACHED
    # a late tick reports the trigger that fired first
    p = make("free", cfg=config(idle_timeout_s=50, keepalive_timeout_s=55))
    assert end_code(p.tick(T0 + 100)) is Code.IDLE_TIMEOUT
    assert p.receipt is not None and p.receipt.duration_ms == 50_000


# ============================================================ usage windows


@pytest.mark.parametrize(
    ("plan", "usage", "code"),
    [
        ("free", (540_000, 540_000, 540_000), Code.HOURLY_LIMIT),  # 9 of 10 min used
        ("free", (0, 1_740_000, 1_740_000), Code.DAILY_LIMIT),  # 29 of 30 min
        ("free", (0, 0, 14_340_000), Code.MONTHLY_LIMIT),  # 3 h 59 of 4 h
        ("pro", (3_540_000, 3_540_000, 3_540_000), Code.HOURLY_LIMIT),
        ("pro", (0, 28_740_000, 28_740_000), Code.DAILY_LIMIT),
        ("basic", (0, 0, 179_940_000), Code.MONTHLY_LIMIT),
    ],
)
def test_usage_limit_mid_session_at_the_exact_sample(
    plan: str, usage: tuple[int, int, int], code: Code
) -> None:
    """60 s left in one window; a client at 10x real time is stopped on the sample."""
    p = make(plan, usage=usage)
    out: Timed = []
    for i in range(1, 60):
        out.extend((i, e) for e in p.on_audio(T0 + i * 0.1, SR, 0, 1000) or [])
    assert warnings(out) == [(30, code, 30), (50, code, 10)]  # in seconds of audio left
    assert p.on_audio(T0 + 6, SR - 1, 0, 1000) is None
    assert not p.ended
    assert end_code(p.on_audio(T0 + 6, 1, 0, 0)) is code
    assert p.receipt is not None and p.receipt.usage_ms == 60_000


@pytest.mark.parametrize(("at", "ended"), [(9.999, False), (10.0, True)])
def test_wall_basis_usage_limit_at_the_exact_ms(at: float, ended: bool) -> None:
    p = make("free", basis=BillingBasis.WALL, usage=(590_000, 590_000, 590_000))
    assert (end_code(p.tick(T0 + at)) is Code.HOURLY_LIMIT) is ended


def hour_plan() -> Plan:
    return Plan(
        name="hourly100",
        max_session_s=10**5,
        concurrent_streams=1,
        hourly_s=100,
        daily_s=10**5,
        monthly_s=None,
    )


ROLL_START = datetime(2026, 3, 10, 12, 59, 30, tzinfo=UTC).timestamp()  # 30 s before the top of the hour


def test_hour_rollover_restarts_the_hourly_window_audio_basis() -> None:
    """60 of 100 s used this hour, started 30 s before the hour: without the
    rollover it would end 40 s in; the new hour counts only this session's audio
    after the boundary, so it ends 100 s after the boundary."""
    p = make(hour_plan(), usage=(60_000, 60_000, 60_000), start_utc=ROLL_START)
    assert p.next_deadline() == T0 + 10  # status
    out = drive(p, T0 + 200)
    # the tick at the boundary comes before the chunk that arrives at the boundary: 29.9 s of
    # audio belong to the old hour, 100 s more are allowed in the new one
    assert ends(out) == [(T0 + 129.9, Code.HOURLY_LIMIT)]
    # no warning at 10 s in for the old hour (30 s left but the hour ends in 20 s)
    assert warnings(out) == [(T0 + 99.9, Code.HOURLY_LIMIT, 30), (T0 + 119.9, Code.HOURLY_LIMIT, 10)]
    assert p.receipt is not None and p.receipt.audio_ms == 129_900


def test_hour_rollover_audio_basis_one_sample() -> None:
    p = make(hour_plan(), usage=(60_000, 60_000, 60_000), start_utc=ROLL_START)
    p.on_audio(T0 + 29, 30 * SR, 0, 1000)
    assert end_code(p.tick(T0 + 30)) is None  # the hour rolls over: usage restarts at 30 s of audio
    p.on_audio(T0 + 31, 100 * SR - 1, 0, 1000)
    assert not p.ended
    assert end_code(p.on_audio(T0 + 31, 1, 0, 0)) is Code.HOURLY_LIMIT


def test_rollover_is_applied_by_on_audio_before_the_tick() -> None:
    p = make(hour_plan(), usage=(60_000, 60_000, 60_000), start_utc=ROLL_START)
    p.on_audio(T0 + 29, 30 * SR, 0, 1000)
    # no tick at the boundary: audio after it must not be judged by the old hour
    evs = p.on_audio(T0 + 30.5, 15 * SR, 0, 1000)
    assert end_code(evs) is None and not p.ended


@pytest.mark.parametrize(("at", "ended"), [(129.999, False), (130.0, True)])
def test_hour_rollover_wall_basis_exact(at: float, ended: bool) -> None:
    p = make(
        hour_plan(),
        basis=BillingBasis.WALL,
        usage=(60_000, 60_000, 60_000),
        start_utc=ROLL_START,
        cfg=config(**QUIET),
    )
    out = drive(p, T0 + at, chunk_s=None, speech=False)
    assert (ends(out) == [(T0 + 130, Code.HOURLY_LIMIT)]) is ended
    if not ended:
        assert not p.ended and p.next_deadline() == pytest.approx(T0 + 130)


def test_fresh_numbers_after_rollover_count_other_sessions() -> None:
    p = make(
        hour_plan(),
        basis=BillingBasis.WALL,
        usage=(60_000, 60_000, 60_000),
        start_utc=ROLL_START,
        cfg=config(**QUIET),
    )
    drive(p, T0 + 35, chunk_s=None)
    assert not p.ended
    # 5 s into the new hour, other sessions have used 50 s of it (this one's 5 s are not persisted)
    evs = p.refresh_account(T0 + 35, snapshot(hour=50_000, day=150_000, month=150_000))
    assert end_code(evs) is None
    out = drive(p, T0 + 200, start=T0 + 35, chunk_s=None)
    assert ends(out) == [(T0 + 80, Code.HOURLY_LIMIT)]


def test_day_rollover_restarts_the_daily_window() -> None:
    plan = Plan(
        name="daily100",
        max_session_s=10**5,
        concurrent_streams=1,
        hourly_s=None,
        daily_s=100,
        monthly_s=10**6,
    )
    start = datetime(2026, 3, 31, 23, 59, 0, tzinfo=UTC).timestamp()  # a month boundary too
    p = make(plan, basis=BillingBasis.WALL, usage=(0, 30_000, 30_000), start_utc=start, cfg=config(**QUIET))
    out = drive(p, T0 + 500, chunk_s=None, speech=False)
    # the old day would have ended at 70 s; the new day starts at 60 s and allows 100 s
    assert ends(out) == [(T0 + 160, Code.DAILY_LIMIT)]


def test_monthly_usage_continues_across_an_hour_boundary() -> None:
    plan = Plan(
        name="m", max_session_s=10**5, concurrent_streams=1, hourly_s=None, daily_s=None, monthly_s=100
    )
    p = make(plan, basis=BillingBasis.WALL, usage=(0, 0, 60_000), start_utc=ROLL_START, cfg=config(**QUIET))
    out = drive(p, T0 + 500, chunk_s=None, speech=False)
    assert ends(out) == [(T0 + 40, Code.MONTHLY_LIMIT)]


# ============================================================ resume


def resume_state() -> ResumeState:
    return ResumeState(
        seq=7,
        duration_ms=100_000,
        samples=100 * SR,
        audio_ms=100_000,
        speech_ms=50_000,
        usage_ms=100_000,
        billed_micro=200 * MICRO,
    )


def test_resume_continues_duration_billing_and_seq() -> None:
    p = make("free", resumed=resume_state(), usage=(100_000, 100_000, 100_000), balance=800 * MICRO)
    assert p.samples == 100 * SR and p.billed_micro == 200 * MICRO and p.speech_ms == 50_000
    out = drive(p, T0 + 1000)
    # free plan: 300 s per session, 100 s of which were before the resume
    assert ends(out) == [(T0 + 200, Code.SESSION_LIMIT_REACHED)]
    assert [w for w in warnings(out) if w[1] is Code.SESSION_LIMIT_REACHED] == [
        (T0 + 170, Code.SESSION_LIMIT_REACHED, 30),
        (T0 + 190, Code.SESSION_LIMIT_REACHED, 10),
    ]
    first_status = next(e for _, e in out if isinstance(e, Status))
    assert first_status.duration_ms == 110_000 and first_status.audio_ms == 109_900
    cp = p.checkpoint(T0 + 1000)
    assert cp.seq == 8
    # the cap's tick comes before the chunk due at the same moment: 199.9 s of new audio
    assert (cp.wall_ms, cp.audio_ms, cp.samples) == (300_000, 299_900, 100 * SR + 199_900 * SR // 1000)
    assert cp.billed_micro == 200 * MICRO + 399_800_000 and cp.usage_ms == 299_900
    assert cp.speech_ms == 50_000 + 199_900
    assert p.receipt is not None and p.receipt.remaining_micro == 800 * MICRO - 399_800_000


def test_resume_balance_and_window_count_only_the_new_part() -> None:
    # the snapshot already reflects the resumed part (balance charged, usage counted)
    p = make("pro", resumed=resume_state(), usage=(100_000, 100_000, 100_000), balance=100 * MICRO)
    p.on_audio(T0 + 1, 50 * SR, 0, 1000)  # 100 more credits: all that is left
    assert not p.ended and p.billed_micro == 300 * MICRO and p.credits_remaining_micro == 0
    assert end_code(p.on_audio(T0 + 1, 1, 0, 0)) is Code.INSUFFICIENT_CREDITS
    p = make("free", resumed=resume_state(), usage=(100_000, 100_000, 100_000))
    p.on_audio(T0 + 1, 500 * SR - 1, 0, 1000)  # free hourly 600 s - 100 s already used
    assert not p.ended
    assert end_code(p.on_audio(T0 + 1, 1, 0, 0)) is Code.HOURLY_LIMIT


def test_resume_state_from_checkpoint_round_trip() -> None:
    p = make("pro")
    p.on_audio(T0 + 5, 5 * SR + 3, 0, 1200)
    cp = p.checkpoint(T0 + 6)
    q = make("pro", resumed=ResumeState.from_checkpoint(cp))
    q.on_audio(T0 + 1, SR - 3, 0, 0)
    r = q.end(T0 + 2, EndReason.CLIENT_CLOSE)
    # each part is floored on its own: at most 1 ms / 1 micro-credit less per resume
    assert (r.samples, r.audio_ms, r.speech_ms, r.duration_ms) == (6 * SR, 5999, 1200, 8000)
    assert r.billed_micro == cost_micro(5 * SR + 3, SR, 2 * MICRO) + cost_micro(SR - 3, SR, 2 * MICRO)
    assert q.checkpoint(T0 + 2).seq == cp.seq + 1


# ============================================================ end


def test_end_is_idempotent_and_freezes_everything() -> None:
    p = make("pro", basis=BillingBasis.WALL, cfg=config(**QUIET))
    p.on_audio(T0 + 1, SR, 2 * SR, 500)
    r1 = p.end(T0 + 2, EndReason.CLIENT_CLOSE)
    r2 = p.end(T0 + 50, EndReason.DISCONNECT, Code.INTERNAL_ERROR)
    assert r1 is r2 and p.receipt is r1
    assert (r1.reason, r1.code, r1.duration_ms, r1.billed_micro, r1.audio_ms) == (
        EndReason.CLIENT_CLOSE,
        None,
        2000,
        4 * MICRO,
        1000,
    )
    assert p.ended and p.next_deadline() == math.inf
    assert p.on_audio(T0 + 3, SR, 0, 1000) is None
    assert p.on_message(T0 + 3, 10**9) is None
    assert p.tick(T0 + 10**6) == []
    assert p.refresh_account(T0 + 4, snapshot(balance=-5)) == []
    assert (p.samples, p.speech_ms, p.billed_micro, p.wall_ms(T0 + 100)) == (SR, 500, 4 * MICRO, 2000)
    c1, c2 = p.checkpoint(T0 + 5), p.checkpoint(T0 + 500)
    assert c1.final and c2.final and c2.seq == c1.seq + 1
    assert msgspec.structs.replace(c1, seq=0) == msgspec.structs.replace(c2, seq=0)
    assert p.status(T0 + 1000).duration_ms == 2000


def test_policy_end_then_end_returns_the_policy_receipt() -> None:
    p = make("free", cfg=config(**QUIET))
    assert end_code(p.tick(T0 + 300)) is Code.SESSION_LIMIT_REACHED
    r = p.end(T0 + 301, EndReason.DISCONNECT)
    assert (r.reason, r.code) == (EndReason.POLICY, Code.SESSION_LIMIT_REACHED)


def test_end_messages_are_clear() -> None:
    p = make("free", cfg=config(**QUIET))
    evs = p.tick(T0 + 300)
    assert isinstance(evs[0], End) and "5 min" in evs[0].message and "'free'" in evs[0].message
    p = make("free", usage=(600_000 - 1, 0, 0))
    evs = p.on_audio(T0, 16, 0, 0) or []
    assert isinstance(evs[0], End) and evs[0].code is Code.HOURLY_LIMIT and "10 min" in evs[0].message
    p = make("free")
    evs = p.tick(T0 + 60)
    assert isinstance(evs[0], End) and "no speech for 1 min" in evs[0].message


# ============================================================ checkpoints, properties


def test_checkpoint_fields() -> None:
    p = make("pro", cfg=config(**QUIET))
    p.on_audio(T0 + 0.5, 8000, 16000, 200)
    cp = p.checkpoint(T0 + 1.25)
    assert (cp.seq, cp.samples, cp.audio_ms, cp.speech_ms, cp.wall_ms) == (1, 8000, 500, 200, 1250)
    assert (cp.billed_micro, cp.usage_ms, cp.final) == (MICRO, 500, False)
    assert cp.utc == pytest.approx(START_UTC + 1.25)
    assert p.checkpoint(T0 + 2).seq == 2 and p.seq == 2
    assert p.bytes_received == 16000 and p.realtime_bytes_per_s == 32000


def test_bad_audio_format_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        make("pro", sr=0)


def test_wall_basis_no_warning_for_a_limit_the_rollover_will_restart() -> None:
    p = make(
        hour_plan(),
        basis=BillingBasis.WALL,
        usage=(60_000, 60_000, 60_000),
        start_utc=ROLL_START,
        cfg=config(**QUIET),
    )
    out = drive(p, T0 + 1000, chunk_s=None)
    # 40 s left in an hour that ends in 30 s: nothing to warn about until the new hour's approach
    assert warnings(out) == [(T0 + 100, Code.HOURLY_LIMIT, 30), (T0 + 120, Code.HOURLY_LIMIT, 10)]
    assert ends(out) == [(T0 + 130, Code.HOURLY_LIMIT)]


# ============================================================ next_deadline never misses anything


_ACTIONS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=400),
        st.sampled_from(["speech", "noise", "ping", "burst", "refresh"]),
        st.integers(min_value=0, max_value=300),
    ),
    max_size=25,
)


def _run(p: SessionPolicy, actions: list[tuple[int, str, int]], dense: bool) -> list[tuple[Code, int] | Code]:
    """Apply actions (gaps in quarter seconds); tick at every deadline, or on a 0.25 s grid."""
    seen: list[tuple[Code, int] | Code] = []

    def note(evs: list[Event] | None) -> None:
        for e in evs or []:
            if isinstance(e, Warning):
                seen.append((e.code, e.seconds_left))
            elif isinstance(e, End):
                seen.append(e.code)

    grid = 0
    last = T0  # time of the last action

    def advance(to: float) -> None:
        nonlocal grid
        if dense:
            while not p.ended and T0 + grid * 0.25 <= to:
                note(p.tick(T0 + grid * 0.25))
                grid += 1
        else:  # like the actor: sleep until the deadline (a past one means now), then tick
            while not p.ended and p.next_deadline() <= to:
                note(p.tick(max(p.next_deadline(), last)))

    t = T0
    for gap, kind, arg in actions:
        t += gap * 0.25
        advance(t)
        last = t
        if p.ended:
            break
        if kind == "ping":
            p.on_ping(t)
        elif kind == "refresh":
            note(p.refresh_account(t, snapshot(balance=arg * MICRO, hour=arg * 1000)))
        else:
            n = 16 * SR if kind == "burst" else 1600
            note(p.on_audio(t, n, 2 * n, 100 if kind == "speech" else 0))
    advance(math.inf if not dense else t + 10**5)
    return seen


@settings(max_examples=200, deadline=None)
@given(
    actions=_ACTIONS,
    balance=st.integers(min_value=1, max_value=400),
    hourly=st.integers(1, 400),
    basis=st.sampled_from([BillingBasis.AUDIO, BillingBasis.WALL]),
    to_the_hour=st.integers(min_value=1, max_value=3600),
)
def test_ticking_at_next_deadline_equals_ticking_densely(
    actions: list[tuple[int, str, int]], balance: int, hourly: int, basis: BillingBasis, to_the_hour: int
) -> None:
    """Driving the policy only at next_deadline() sees every warning and end a dense
    ticker sees (events land on the 0.25 s grid, so both agree exactly)."""
    cfg = config(idle_timeout_s=60, keepalive_timeout_s=90, no_audio_timeout_s=120)
    kw: dict[str, Any] = dict(
        cfg=cfg,
        balance=balance * MICRO,
        max_session_s=600,
        hourly_s=hourly,
        basis=basis,
        start_utc=ROLL_START + 30 - to_the_hour,
    )
    a, b = make("pro", **kw), make("pro", **kw)
    seen_a, seen_b = _run(a, actions, dense=False), _run(b, actions, dense=True)
    assert seen_a == seen_b
    assert a.ended and b.ended
    assert a.receipt == b.receipt
    assert isinstance(seen_a[-1], Code)
    r = a.receipt
    assert r is not None and r.billed_micro >= 0
