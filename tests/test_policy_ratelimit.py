"""SessionPolicy.on_message: per-plan message and audio-byte rate limits (token buckets)."""

from __future__ import annotations

import pytest

from engine.policy.types import Code, End, Event, Throttle
from tests.test_policy_session import QUIET, T0, config, make

FRAME_S16 = 3200  # 100 ms of 16 kHz mono S16
FRAME_F32 = 6400  # 100 ms of 16 kHz mono F32


def realtime(plan: str, frame_bytes: int, seconds: int, bunch: int) -> list[Event]:
    """Real-time 100 ms frames arriving ``bunch`` at a time (network jitter), a ping every 10 s."""
    p = make(plan, cfg=config(**QUIET))
    out: list[Event] = []
    for k in range(0, seconds * 10, bunch):
        t = T0 + (k + bunch) * 0.1
        for _ in range(bunch):
            ev = p.on_message(t, frame_bytes)
            if ev is not None:
                out.append(ev)
        if k % 100 == 0:
            ev = p.on_message(t, 0)  # a JSON ping: a message without audio
            if ev is not None:
                out.append(ev)
    return out


@pytest.mark.parametrize("plan", ["free", "basic", "pro", "enterprise"])
@pytest.mark.parametrize("bunch", [1, 5, 10])
def test_realtime_16k_s16_is_never_throttled(plan: str, bunch: int) -> None:
    assert realtime(plan, FRAME_S16, 300, bunch) == []


@pytest.mark.parametrize(
    ("plan", "throttled"), [("free", True), ("basic", False), ("pro", False), ("enterprise", False)]
)
def test_realtime_16k_f32_fits_basic_and_above(plan: str, throttled: bool) -> None:
    out = realtime(plan, FRAME_F32, 60, 1)
    assert bool(out) is throttled
    assert all(isinstance(e, Throttle) for e in out[:3])


def test_throttle_wait_is_until_the_message_fits_again() -> None:
    p = make("free")  # 100 messages/s, a burst of 100
    for _ in range(100):
        assert p.on_message(T0, 0) is None
    ev = p.on_message(T0, 0)
    assert isinstance(ev, Throttle) and ev.wait_ms == 20  # 1 message of debt + 1 to send: 2 / 100 s
    assert "100 messages/s" in ev.message and "pause" in ev.message
    assert p.on_message(T0 + 0.001, 0) is None  # told once per pause, not for every message
    assert p.on_message(T0 + 0.5, 0) is None  # refilled: fine again


def test_byte_throttle() -> None:
    p = make("free")  # 32768 audio bytes/s
    assert p.on_message(T0, 32768) is None
    ev = p.on_message(T0, 3200)
    assert isinstance(ev, Throttle)
    assert ev.wait_ms == 196  # (3200 debt + 3200 to send) / 32768 s, rounded up
    assert p.on_message(T0 + 0.2, 3200) is None


def abuse(
    plan: str, msgs_per_s: int, nbytes: int, seconds: float
) -> tuple[list[tuple[float, Event]], float | None]:
    p = make(plan, cfg=config(**QUIET))
    out: list[tuple[float, Event]] = []
    n = int(seconds * msgs_per_s)
    for k in range(1, n + 1):
        t = T0 + k / msgs_per_s
        ev = p.on_message(t, nbytes)
        if ev is not None:
            out.append((t, ev))
        if p.ended:
            return out, t - T0
    return out, None


def test_twice_the_message_rate_is_throttled_then_rate_limited() -> None:
    out, ended_after = abuse("free", 200, 0, 20)
    throttles = [t for t, e in out if isinstance(e, Throttle)]
    assert throttles and throttles[0] - T0 == pytest.approx(1.0, abs=0.02)  # after the 1 s burst
    assert len(throttles) < 50  # once per pause, not once per message
    assert isinstance(out[-1][1], End) and out[-1][1].code is Code.RATE_LIMITED
    # 100 messages/s over the limit: 1 s of burst + 5 s (rate_abuse_s) worth of debt
    assert ended_after == pytest.approx(6.0, abs=0.05)


def test_twice_the_audio_byte_rate_is_rate_limited() -> None:
    out, ended_after = abuse("free", 20, 3277, 20)  # 65540 B/s against 32768
    assert any(isinstance(e, Throttle) for _, e in out)
    assert ended_after == pytest.approx(6.0, abs=0.1)
    assert isinstance(out[-1][1], End) and out[-1][1].code is Code.RATE_LIMITED


def test_abuse_threshold_is_configurable() -> None:
    p = make("free", cfg=config(**QUIET, rate_abuse_s=1))
    t = T0
    while not p.ended:
        t += 1 / 200
        p.on_message(t, 0)
    assert t - T0 == pytest.approx(2.0, abs=0.05)


def test_a_client_that_obeys_throttle_is_never_rate_limited() -> None:
    p = make("free", cfg=config(**QUIET))
    t = T0
    sent = 0
    while t < T0 + 60:
        ev = p.on_message(t, FRAME_S16)
        sent += 1
        assert not isinstance(ev, End)
        t += ev.wait_ms / 1000 if isinstance(ev, Throttle) else 0.01  # wants 320 KB/s, pauses when told
    assert not p.ended
    assert sent * FRAME_S16 / 60 == pytest.approx(32768, rel=0.05)  # the plan's rate, no more


def test_network_stall_burst_is_not_rate_limited() -> None:
    p = make("free", cfg=config(**QUIET))
    for k in range(1, 101):
        assert p.on_message(T0 + k * 0.1, FRAME_S16) is None
    # a 2 s stall, then the 20 buffered frames arrive at once
    evs = [p.on_message(T0 + 12, FRAME_S16) for _ in range(20)]
    assert not p.ended and not any(isinstance(e, End) for e in evs)
    for k in range(1, 101):
        p.on_message(T0 + 12 + k * 0.1, FRAME_S16)
    assert not p.ended


def test_unlimited_plan_never_throttles() -> None:
    p = make("enterprise", cfg=config(**QUIET))
    assert all(p.on_message(T0, 10**6) is None for _ in range(10_000))
