"""Store: several OS processes on one database file, and a process killed by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from engine.policy.types import MICRO
from engine.store.base import Admitted
from engine.store.sqlite import open_sqlite_store
from engine.store.testing import allow, audit, query, start

REPO = Path(__file__).resolve().parents[1]

RACER = """
import json, sys, time, uuid
from pathlib import Path
import trio
from engine.store.sqlite import open_sqlite_store
from engine.store.testing import max_concurrent, start

db, account, go, attempts, limit, name = sys.argv[1:7]

async def main():
    async with open_sqlite_store(db) as store:
        print("ready", flush=True)
        while not Path(go).exists():
            time.sleep(0.001)  # spin: start as close to the others as possible
        now = time.time()
        results = []

        async def one(i):
            r = await store.begin_session(
                start(account, f"{name}-{i}", now=now, owner=name), max_concurrent(int(limit))
            )
            results.append(type(r).__name__)

        async with trio.open_nursery() as nursery:
            for i in range(int(attempts)):
                nursery.start_soon(one, i)
    print(json.dumps(results), flush=True)

trio.run(main)
"""

STREAMER = """
import sys, time
import trio
from engine.store.sqlite import open_sqlite_store
from engine.store.testing import allow, cp, start

db, account, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    async with open_sqlite_store(db, commit_interval=0.05) as store:
        sids = [f"k{i}" for i in range(n)]
        for sid in sids:
            await store.begin_session(start(account, sid, now=time.time(), lease_s=2.0), allow)
        print("ready", flush=True)
        seq = 0
        while True:
            seq += 1
            now = time.time()
            for sid in sids:  # cumulative: 10 ms of audio, 1000 micro-credits per tick
                await store.checkpoint(cp(sid, seq, now=now, billed=seq * 1000, usage_ms=seq * 10))
            if seq % 10 == 0:
                await store.flush()
                print(f"durable {seq}", flush=True)
            await trio.sleep(0.005)

trio.run(main)
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def _expect_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"child exited before {prefix!r}: {err}")
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} line in time")


@pytest.mark.parametrize("existing", [2, 0])
def test_processes_racing_for_the_last_slots(tmp_path: Path, existing: int) -> None:
    """4 processes x 3 simultaneous starts against a limit of 3: exactly the free slots admitted."""
    db = tmp_path / "engine.db"
    limit = 3

    async def setup() -> str:
        async with open_sqlite_store(db) as store:
            acct, _ = await store.create_account(plan="basic", credits_micro=100 * MICRO)
            for i in range(existing):
                r = await store.begin_session(
                    start(acct.account_id, f"old{i}", now=time.time(), lease_s=600), allow
                )
                assert isinstance(r, Admitted)
            return acct.account_id

    account = trio.run(setup)
    go = tmp_path / "go"
    procs = [_spawn(RACER, str(db), account, str(go), "3", str(limit), f"p{i}") for i in range(4)]
    try:
        for p in procs:
            _expect_line(p, "ready")
        go.touch()
        results: list[str] = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            results += json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert len(results) == 12
    assert results.count("Admitted") == limit - existing
    assert results.count("Refusal") == 12 - (limit - existing)
    (open_now,) = query(db, "SELECT COUNT(*) FROM sessions WHERE ended_utc IS NULL")[0]
    assert open_now == limit
    assert audit(db) == []


def test_sigkill_mid_stream_then_recover_settles_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"

    async def setup() -> str:
        async with open_sqlite_store(db) as store:
            acct, _ = await store.create_account(plan="pro", credits_micro=1000 * MICRO)
            return acct.account_id

    account = trio.run(setup)
    n = 3
    proc = _spawn(STREAMER, str(db), account, str(n))
    try:
        _expect_line(proc, "ready")
        durable = 0
        while durable < 40:
            durable = int(_expect_line(proc, "durable").split()[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    async def after() -> None:
        async with open_sqlite_store(db) as store:
            rows = {r.session_id: r for r in await store.list_sessions(account)}
            assert set(rows) == {f"k{i}" for i in range(n)}
            for r in rows.values():
                assert r.ended_utc is None  # nobody ended them: the process died
                # everything flushed before the kill is there; never more than was sent
                assert r.billed_micro >= durable * 1000
                assert r.billed_micro == r.audio_ms * 100  # consistent cumulative totals
            # before the leases (2 s, never renewed) ran out there is nothing to settle
            assert await store.recover(time.time() - 10) == 0
            later = time.time() + 5
            assert await store.recover(later) == n
            assert await store.recover(later) == 0  # exactly once
            for r in await store.list_sessions(account):
                assert r.end_reason == "expired"
            ledger = await store.ledger(account)
            charged = -sum(e.amount_micro for e in ledger if e.kind == "charge")
            assert charged == sum(r.billed_micro for r in rows.values())
            acct = await store.get_account(account)
            assert acct is not None and acct.balance_micro == 1000 * MICRO - charged
            assert await store.check_integrity() == []

    trio.run(after)
    assert audit(db) == []
