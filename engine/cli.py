"""Command line: ``engine serve``, ``engine stream``, ``engine accounts`` / ``sessions`` / ``ledger``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import trio

DEFAULT_DB = "./engine.db"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine", description="Streaming audio session engine.")
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLite database file (default {DEFAULT_DB})")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the engine (WebSocket server)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--config", help="TOML file with plans, models and rules (see docs/configuration.md)")
    s.add_argument(
        "--db", dest="serve_db", default=None, help="SQLite database file (same as the global --db)"
    )

    st = sub.add_parser("stream", help="stream a WAV or raw audio file to a server and print the receipt")
    st.add_argument("file")
    st.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    st.add_argument("--key", required=True, help="API key")
    st.add_argument(
        "--fast", action="store_true", help="send as fast as the server allows, not at real-time pace"
    )
    st.add_argument("--chunk-ms", type=int, default=100)
    st.add_argument("--model")
    st.add_argument("--encoding", help="raw files: pcm_s16le, pcm_f32le or mulaw")
    st.add_argument("--sample-rate", type=int, help="raw files: sample rate in Hz")
    st.add_argument("--channels", type=int, default=1)
    st.add_argument("--quiet", action="store_true", help="no progress bar or status lines")

    try:
        from engine.store.cli import add_store_commands
    except ImportError:  # pragma: no cover
        pass
    else:
        add_store_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        return trio.run(_serve, args)
    if args.command == "stream":
        return trio.run(_stream, args)
    from engine.store.cli import run_store_command

    return run_store_command(args)


async def _serve(args: Any) -> int:
    from engine.policy.config import ConfigError
    from engine.server import Engine, load_settings
    from engine.store.sqlite import SqliteStore

    log = logging.getLogger("engine")
    try:
        config, settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"engine: config: {exc}", file=sys.stderr)
        return 2
    db = args.serve_db or args.db
    store = await SqliteStore.open(db)
    try:
        engine = Engine(config, store, settings=settings)
        async with trio.open_nursery() as nursery:
            server = await nursery.start(engine.serve, args.host, args.port)
            log.info(
                "engine serving ws://%s:%d (protocol v1: /v1/stream, Speechmatics v2: /v2) db %s",
                args.host,
                server.port,
                db,
            )
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("%s: shutting down gracefully", signal.Signals(signum).name)
                    break
            await engine.shutdown()
    finally:
        await store.aclose()
    return 0


async def _stream(args: Any) -> int:
    from trio_websocket import HandshakeError

    from engine.audio import AudioFormatError
    from engine.client import progress_printer, read_audio, stream_audio
    from engine.dialects import v1

    try:
        audio = read_audio(
            args.file, encoding=args.encoding, sample_rate=args.sample_rate, channels=args.channels
        )
    except (AudioFormatError, OSError) as exc:
        print(f"engine stream: {exc}", file=sys.stderr)
        return 2

    def on_message(msg: v1.ServerMessage) -> None:
        if args.quiet:
            return
        if isinstance(msg, v1.SessionStatus | v1.Warning | v1.Throttle | v1.SessionStarted):
            print(f"\n{v1.encode(msg)}", file=sys.stderr)

    try:
        result = await stream_audio(
            args.url,
            args.key,
            audio,
            fast=args.fast,
            chunk_ms=args.chunk_ms,
            model=args.model,
            on_message=on_message,
            on_progress=None if args.quiet else progress_printer(audio.seconds),
        )
    except HandshakeError as exc:
        print(f"engine stream: connection refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"engine stream: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(file=sys.stderr)
    if result.error is not None:
        print(v1.encode(result.error))
    if result.ended is not None:
        print(v1.encode(result.ended))
    print(f"closed: {result.close_code} {result.close_reason or ''}".rstrip(), file=sys.stderr)
    return 0 if result.error is None and result.ended is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
