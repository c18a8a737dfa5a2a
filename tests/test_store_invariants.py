"""Store: ledger invariants under any sequence of operations (hypothesis).

Any interleaving of top-ups (with retried keys), session starts, cumulative
checkpoints, retried/stale checkpoints, flushes, ends (and repeated ends),
crashes (close without flush, reopen), recoveries and resumes keeps:

* balance == sum(ledger) for every account, and every balance_after is right;
* no idempotency key applied twice (each top-up key: exactly one entry);
* each session's billed total == its charges, and never more than the largest
  cumulative total the engine ever sent for it;
* after a flush or an end, what the engine sent for an open session is durable.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.policy.types import MICRO, EndReason
from engine.store.base import Account, Admitted, Checkpoint, SessionEnd
from engine.store.sqlite import SqliteStore
from engine.store.testing import T0, allow, audit, cp, query, start

N_ACCOUNTS = 2

_pick = st.integers(0, 7)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("topup"), st.integers(0, N_ACCOUNTS - 1), st.integers(0, 3)),
        *[st.tuples(st.just("begin"), st.integers(0, N_ACCOUNTS - 1))] * 2,
        *[st.tuples(st.just("cp"), _pick, st.integers(0, 3000), st.integers(0, 200))] * 4,
        st.tuples(st.just("retry"), _pick, st.integers(0, 20)),
        st.tuples(st.just("flush")),
        *[st.tuples(st.just("end"), _pick, st.booleans())] * 2,
        st.tuples(st.just("end_again"), _pick),
        st.tuples(st.just("crash")),
        st.tuples(st.just("recover"), st.integers(0, 400)),
        *[st.tuples(st.just("resume"), _pick)] * 2,
    ),
    min_size=10,
    max_size=60,
)


@dataclass
class Live:
    """What the engine process holds for one open session."""

    seq: int
    billed: int
    usage: int


@dataclass
class Model:
    db: Path
    accounts: list[str] = field(default_factory=list)
    now: float = T0
    sessions: list[str] = field(default_factory=list)  # every session id ever started
    live: dict[str, Live] = field(default_factory=dict)  # this process's open sessions
    sent: dict[str, list[Checkpoint]] = field(default_factory=dict)
    ends: dict[str, tuple[SessionEnd, int]] = field(default_factory=dict)
    topup_keys: set[str] = field(default_factory=set)
    hook_calls: int = 0


def hook_for(model: Model) -> Any:
    def hook(account: Account, balance: int, key: str) -> int | None:
        model.hook_calls += 1
        return 5_000

    return hook


async def open_store(model: Model) -> SqliteStore:
    return await SqliteStore.open(
        model.db, commit_interval=3600, synchronous="NORMAL", topup_hook=hook_for(model)
    )


def db_row(model: Model, sid: str) -> tuple[Any, ...]:
    return query(model.db, "SELECT billed_micro, ended_utc, seq FROM sessions WHERE session_id = ?", sid)[0]


def check_invariants(model: Model) -> None:
    assert audit(model.db) == []
    for key in model.topup_keys:
        assert query(model.db, "SELECT COUNT(*) FROM ledger WHERE idempotency_key = ?", key) == [(1,)]
    # every auto top-up is something the host's hook collected, once
    ((autos,),) = query(model.db, "SELECT COUNT(*) FROM ledger WHERE kind = 'auto_topup'")
    assert isinstance(autos, int) and autos <= model.hook_calls
    for sid in model.sessions:
        billed = db_row(model, sid)[0]
        most = max((c.billed_micro for c in model.sent.get(sid, [])), default=0)
        assert billed <= most, (sid, billed, most)


def check_durable(model: Model) -> None:
    for sid, live in model.live.items():
        billed, ended, _ = db_row(model, sid)
        if ended is None:
            assert billed == live.billed, (sid, billed, live.billed)


async def run(model: Model, program: list[tuple[Any, ...]]) -> None:
    store = await open_store(model)
    try:
        for i in range(N_ACCOUNTS):
            acct, _ = await store.create_account(
                plan="free",
                credits_micro=MICRO // 100,
                auto_topup_threshold_micro=9_500 if i == 1 else None,
                auto_topup_amount_micro=5_000 if i == 1 else None,
            )
            model.accounts.append(acct.account_id)
        for op in program:
            model.now += 1
            name = op[0]
            pick = op[1] if len(op) > 1 else 0
            # choose among the sessions the operation makes sense for
            if name in ("cp", "end"):
                pool = sorted(model.live)
            elif name == "resume":
                pool = [s for s in model.sessions if s not in model.live]
            elif name == "end_again":
                pool = [s for s in model.ends if s not in model.live]
            else:
                pool = model.sessions
            sid = pool[pick % len(pool)] if pool else None
            if name == "topup":
                key = f"{model.accounts[op[1]]}:k{op[2]}"
                await store.topup(model.accounts[op[1]], (op[2] + 1) * 1000, key)
                model.topup_keys.add(key)
            elif name == "begin":
                new = f"s{len(model.sessions)}"
                r = await store.begin_session(
                    start(model.accounts[op[1]], new, now=model.now, lease_s=60), allow
                )
                assert isinstance(r, Admitted)
                model.sessions.append(new)
                model.live[new] = Live(seq=-1, billed=0, usage=0)
            elif name == "cp" and sid in model.live:
                live = model.live[sid]
                live.seq += 1
                live.billed += op[2]
                live.usage += op[3]
                c = cp(sid, live.seq, now=model.now, billed=live.billed, usage_ms=live.usage)
                model.sent.setdefault(sid, []).append(c)
                await store.checkpoint(c)
            elif name == "retry" and sid is not None and model.sent.get(sid):
                sent = model.sent[sid]
                await store.checkpoint(sent[op[2] % len(sent)])
            elif name == "flush":
                await store.flush()
                check_durable(model)
            elif name == "end" and sid in model.live:
                live = model.live.pop(sid)
                was_open = db_row(model, sid)[1] is None
                final = cp(sid, live.seq + 1, now=model.now, billed=live.billed + 7, usage_ms=live.usage + 1)
                model.sent.setdefault(sid, []).append(final)
                end = SessionEnd(
                    checkpoint=final,
                    reason=EndReason.DISCONNECT if op[2] else EndReason.CLIENT_CLOSE,
                    resumable=op[2],
                )
                balance = await store.end_session(end)
                model.ends[sid] = (end, balance)
                billed, ended, _ = db_row(model, sid)
                assert ended is not None
                if was_open:
                    assert billed == final.billed_micro
            elif name == "end_again" and sid in model.ends and sid not in model.live:
                end, balance = model.ends[sid]
                await store.flush()  # other sessions' queued checkpoints are not this end's
                n = query(model.db, "SELECT COUNT(*) FROM ledger")
                before = db_row(model, sid)
                if before[1] is not None:
                    event("repeated end")
                    assert await store.end_session(end) == balance
                    assert query(model.db, "SELECT COUNT(*) FROM ledger") == n
                    assert db_row(model, sid) == before
            elif name == "crash":
                await store.aclose(flush=False)
                model.live.clear()  # the engine process died with its sessions
                store = await open_store(model)
            elif name == "recover":
                model.now += op[1]
                if model.live:
                    await store.renew_leases("proc-a", list(model.live), model.now + 60)
                if await store.recover(model.now):
                    event("recover settled sessions")
            elif name == "resume" and sid is not None and sid not in model.live:
                owner_acct = query(model.db, "SELECT account_id FROM sessions WHERE session_id = ?", sid)[0][
                    0
                ]
                r = await store.begin_session(
                    start(str(owner_acct), resume_id=sid, now=model.now, lease_s=60), allow
                )
                event(f"resume {'admitted' if isinstance(r, Admitted) else 'refused'}")
                if isinstance(r, Admitted):
                    assert r.resumed is not None
                    billed, ended, seq = db_row(model, sid)
                    assert ended is None and r.resumed.billed_micro == billed and r.resumed.seq == seq
                    model.live[sid] = Live(seq=seq, billed=billed, usage=r.resumed.usage_ms)
                    model.ends.pop(sid, None)  # its next end is a new one
            check_invariants(model)
        await store.flush()
        check_durable(model)
        check_invariants(model)
        if model.hook_calls:
            event("auto top-up hook called")
    finally:
        await store.aclose()
    check_invariants(model)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(program=ops)
def test_ledger_invariants_hold_for_any_history(program: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(db=Path(tmp) / "engine.db")
        trio.run(run, model, program)
