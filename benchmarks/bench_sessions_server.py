"""``engine serve`` with instrumentation and knobs, for diagnosing ``bench_sessions.py`` runs.

Runs the same :class:`engine.server.Engine` on the same SQLite store as
``engine --db DB serve --port P --config FILE`` (nothing in ``engine/`` is
changed), and every ``--stats-every`` seconds logs:

- the Trio loop's lateness (a task sleeping 50 ms: how late it wakes, mean / max);
- the store: requests, mean / max latency from call to answer (queueing in the
  store actor included), and the worker thread's wall vs CPU time per
  transaction (wall far above CPU while the main thread is busy means the
  thread waits for the GIL).

Knobs for A/B experiments: ``--checkpoint-interval`` (ServerSettings) and
``--switch-interval`` (``sys.setswitchinterval``).

    python benchmarks/bench_sessions.py --engine-helper "--switch-interval 0.0005"
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.policy.config import load_config
from engine.server import Engine, ServerSettings
from engine.store.sqlite import SqliteStore

log = logging.getLogger("bench.server")


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.call_s = 0.0
        self.call_max = 0.0
        self.txns = 0
        self.txn_wall = 0.0
        self.txn_cpu = 0.0
        self.txn_wall_max = 0.0
        self.lag_n = 0
        self.lag_s = 0.0
        self.lag_max = 0.0


STATS = Stats()


class TimedStore(SqliteStore):
    async def _call(self, fn: Any, *, write: bool) -> Any:
        t = time.perf_counter()
        try:
            return await super()._call(fn, write=write)
        finally:
            d = time.perf_counter() - t
            STATS.calls += 1
            STATS.call_s += d
            STATS.call_max = max(STATS.call_max, d)

    async def _run(self, fn: Any, *args: Any) -> Any:
        def timed(*a: Any) -> Any:
            w, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a)
            finally:
                dw = time.perf_counter() - w
                STATS.txns += 1
                STATS.txn_wall += dw
                STATS.txn_cpu += time.thread_time() - c
                STATS.txn_wall_max = max(STATS.txn_wall_max, dw)

        return await super()._run(timed, *args)


async def lag_probe() -> None:
    while True:
        t = trio.current_time()
        await trio.sleep(0.05)
        lag = trio.current_time() - t - 0.05
        STATS.lag_n += 1
        STATS.lag_s += lag
        STATS.lag_max = max(STATS.lag_max, lag)


async def reporter(engine: Engine, every: float) -> None:
    while True:
        await trio.sleep(every)
        s = STATS
        log.info(
            "sessions %d | loop lag mean %.1f ms max %.1f ms | store calls %d mean %.1f ms max %.1f ms"
            " | txns %d wall %.2f s (max %.1f ms) cpu %.2f s",
            len(engine.sessions),
            1000 * s.lag_s / max(1, s.lag_n),
            1000 * s.lag_max,
            s.calls,
            1000 * s.call_s / max(1, s.calls),
            1000 * s.call_max,
            s.txns,
            s.txn_wall,
            1000 * s.txn_wall_max,
            s.txn_cpu,
        )
        s.reset()


async def serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = await TimedStore.open(args.db)
    settings = ServerSettings(checkpoint_interval_s=args.checkpoint_interval)
    try:
        engine = Engine(config, store, settings=settings)
        async with trio.open_nursery() as nursery:
            server = await nursery.start(engine.serve, args.host, args.port)
            log.info("engine serving ws://%s:%d/v1/stream (db %s)", args.host, server.port, args.db)
            nursery.start_soon(lag_probe)
            nursery.start_soon(reporter, engine, args.stats_every)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            await engine.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--config")
    p.add_argument("--checkpoint-interval", type=float, default=ServerSettings().checkpoint_interval_s)
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (default 0.005)")
    p.add_argument("--stats-every", type=float, default=5.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("engine.session").setLevel(logging.WARNING)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    return trio.run(serve, args)


if __name__ == "__main__":
    sys.exit(main())
