"""The baseline of ``bench_sessions.py``: a bare trio-websocket server that only reads.

Same tuning as ``engine serve`` (``receive_buffer_size=65536``,
``message_queue_size=64``, 1 MiB max message) and just enough protocol for the
benchmark's client: it answers the first message with a minimal
``session_started``, then reads messages (counting audio bytes, nothing else)
until a text message asking to close, answers with a ``session_ended`` carrying
the wall and audio durations, and closes with 1000. No auth, no policy, no
store, no timers: the floor a session engine built on trio-websocket pays per
message.

    python benchmarks/bare_server.py --port 8765     # prints "listening on PORT" when ready

SIGINT / SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

BYTES_PER_S = 16000 * 2  # the benchmark streams 16 kHz S16 mono
_ids = itertools.count(1)


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    sid = f"bare-{next(_ids)}"
    try:
        await ws.get_message()  # the start message
        t0 = trio.current_time()
        await ws.send_message(
            json.dumps({"type": "session_started", "session_id": sid, "plan": "bare", "model": "none"})
        )
        nbytes = 0
        get = ws.get_message
        while True:
            msg = await get()
            if type(msg) is bytes:
                nbytes += len(msg)
            elif '"close"' in msg:
                break
        await ws.send_message(
            json.dumps(
                {
                    "type": "session_ended",
                    "session_id": sid,
                    "reason": "closed",
                    "duration": round(trio.current_time() - t0, 3),
                    "audio_duration": round(nbytes / BYTES_PER_S, 3),
                }
            )
        )
        await ws.aclose(1000, "session ended")
    except ConnectionClosed:
        pass


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handler,
                host,
                port,
                None,
                handler_nursery=nursery,
                receive_buffer_size=65536,
                message_queue_size=64,
                max_message_size=1 << 20,
                task_status=task_status,
            )
        )
        print(f"listening on {server.port}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    a = p.parse_args()
    trio.run(main, a.host, a.port)
    sys.exit(0)
