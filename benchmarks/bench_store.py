"""Benchmark: the store's cost of N active sessions each checkpointing once per second.

Simulates the checkpoint stream quickly instead of waiting real seconds: for
every simulated second, each of the N sessions queues one cumulative
checkpoint and the group commit that the store's timer would run once per
second is forced with ``flush()``. Measured per simulated second: process CPU
time (``time.process_time``, all threads: the Trio loop *and* the store's
worker thread) and wall time. Side by side, the same stream written with one
transaction per checkpoint.

    python benchmarks/bench_store.py            # 2,000 sessions; exit 1 if over 20 % of a core
    python benchmarks/bench_store.py --quick    # CI smoke run: small, never fails on timing

Target (issue 4): 2,000 sessions ticking with the store under 20 % of one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.policy.types import MICRO
from engine.store.base import Admitted, Checkpoint
from engine.store.sqlite import SqliteStore
from engine.store.testing import allow, audit, start

T0 = 1_700_000_000.0
RATE_MICRO_PER_S = 2 * MICRO  # 2 credits per second of audio
TARGET_CPU = 0.20


@dataclass
class Result:
    mode: str
    checkpoints: int
    sim_seconds: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_per_sim_s(self) -> float:
        return self.cpu_s / self.sim_seconds

    @property
    def rate(self) -> float:
        return self.checkpoints / self.wall_s if self.wall_s else float("inf")

    def line(self) -> str:
        return (
            f"{self.mode:<22} {self.checkpoints:>8} cps in {self.wall_s:7.2f} s wall"
            f"  -> {self.rate:>10,.0f} checkpoints/s sustained;"
            f"  CPU {self.cpu_per_sim_s * 100:6.1f} % of a core"
            f" at {self.checkpoints // self.sim_seconds} cps/s"
        )


async def setup(store: SqliteStore, n: int, per_account: int) -> list[str]:
    sids: list[str] = []
    accounts = []
    for _ in range((n + per_account - 1) // per_account):
        acct, _ = await store.create_account(plan="enterprise", credits_micro=10**9 * MICRO)
        accounts.append(acct.account_id)
    for i in range(n):
        sid = f"sess-{i:05d}"
        r = await store.begin_session(
            start(accounts[i // per_account], sid, now=T0, owner="bench", lease_s=1e9), allow
        )
        assert isinstance(r, Admitted)
        sids.append(sid)
    return sids


def tick(sids: list[str], second: int) -> list[Checkpoint]:
    """One cumulative checkpoint per session for simulated second ``second`` (1-based)."""
    now = T0 + second
    ms = second * 1000
    return [
        Checkpoint(
            session_id=sid,
            seq=second,
            now_utc=now,
            billed_micro=second * RATE_MICRO_PER_S,
            usage_ms=ms,
            audio_ms=ms,
            speech_ms=ms // 2,
            duration_ms=ms,
            samples=ms * 16,
        )
        for sid in sids
    ]


async def run_mode(
    store: SqliteStore, sids: list[str], first: int, seconds: int, *, per_checkpoint: bool, renew_every: int
) -> Result:
    cpu = wall = 0.0
    count = 0
    for s in range(first, first + seconds):
        batch = tick(sids, s)  # the engine's work, not the store's: outside the timing
        c0, w0 = time.process_time(), time.perf_counter()
        if per_checkpoint:
            for c in batch:
                await store.checkpoint(c)
                await store.flush()  # one transaction per checkpoint
        else:
            for c in batch:
                await store.checkpoint(c)
            await store.flush()  # the once-a-second group commit
        if renew_every and s % renew_every == 0:
            await store.renew_leases("bench", sids, T0 + s + 1e9)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        count += len(batch)
    mode = "one txn per checkpoint" if per_checkpoint else "group commit (1/s)"
    return Result(mode, count, seconds, cpu, wall)


async def bench(args: argparse.Namespace, db: Path) -> tuple[Result, Result]:
    store = await SqliteStore.open(db, commit_interval=3600, synchronous=args.synchronous)
    try:
        t = time.perf_counter()
        sids = await setup(store, args.sessions, args.per_account)
        print(
            f"setup: {len(sids)} sessions on {len(sids) // args.per_account} accounts"
            f" in {time.perf_counter() - t:.1f} s ({db})"
        )
        await run_mode(store, sids, 1, 1, per_checkpoint=False, renew_every=0)  # warm-up
        group = await run_mode(
            store, sids, 2, args.seconds, per_checkpoint=False, renew_every=args.renew_every
        )
        print(group.line())
        single = await run_mode(
            store, sids, 2 + args.seconds, args.per_tx_seconds, per_checkpoint=True, renew_every=0
        )
        print(single.line())
        st = store.stats
        print(
            f"store: {st.transactions} transactions, {st.checkpoints_applied} checkpoints applied,"
            f" {st.checkpoints_ignored} ignored"
        )
    finally:
        await store.aclose()
    problems = audit(db)
    if problems:
        raise SystemExit(f"ledger audit failed: {problems[:5]}")
    return group, single


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--seconds", type=int, default=10, help="simulated seconds of group commit")
    p.add_argument("--per-tx-seconds", type=int, default=2, help="simulated seconds, one txn per checkpoint")
    p.add_argument("--per-account", type=int, default=5, help="sessions per account")
    p.add_argument("--renew-every", type=int, default=10, help="lease renewal every N simulated seconds")
    p.add_argument("--synchronous", default="FULL", choices=("OFF", "NORMAL", "FULL"))
    p.add_argument("--db", default=None, help="database file (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="small CI smoke run; never fails on timing")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.seconds, args.per_tx_seconds = min(args.sessions, 200), 3, 1
    print(
        f"bench_store: {args.sessions} sessions x 1 checkpoint/s, synchronous={args.synchronous},"
        f" python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "bench.db"
        group, single = trio.run(bench, args, db)
    print(
        f"result: group commit {group.cpu_per_sim_s * 100:.1f} % of a core"
        f" vs one txn per checkpoint {single.cpu_per_sim_s * 100:.1f} %"
        f" ({single.cpu_per_sim_s / max(group.cpu_per_sim_s, 1e-9):.0f}x);"
        f" target < {TARGET_CPU * 100:.0f} % for {args.sessions} sessions"
    )
    ok = group.cpu_per_sim_s < TARGET_CPU
    if args.quick:
        print("quick mode: timing not enforced")
        return 0
    print("PASS" if ok else "FAIL: over the CPU target")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
