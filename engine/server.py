"""The engine: authenticates connections, picks a dialect, runs session actors.

Embedding in a Trio host::

    engine = Engine(load_config(None), await SqliteStore.open("engine.db"))
    server = await nursery.start(engine.serve, "127.0.0.1", 8000)   # server.port
    ...
    await engine.shutdown()   # stop accepting, end sessions (1001) after settling

Hosts with their own transport call :meth:`Engine.run_connection` with any
:class:`engine.transport.Connection` (e.g. one end of
:func:`engine.transport.memory_connection_pair`): same dialects, same policy.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import trio
from trio_websocket import WebSocketRequest, WebSocketServer, serve_websocket

from engine.audio import VadConfig
from engine.dialects.base import Dialect
from engine.dialects.v1 import V1Dialect
from engine.policy.config import ConfigError, EngineConfig, config_from_dict, load_config
from engine.policy.types import Code, EndReason, Plan
from engine.session import AudioFrame, SessionActor
from engine.store.base import Store
from engine.transport import Connection, install_ping_hook

log = logging.getLogger("engine.server")

Sink = Callable[[AudioFrame], Awaitable[None]]


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Process-level knobs (not plan policy), the ``[server]`` table of the config file.

    Seconds unless named.
    """

    start_timeout_s: float = 10.0  # the start message must come this soon
    lease_s: float = 30.0  # a session's lease; renewed every lease_renew_s
    lease_renew_s: float = 10.0
    recover_interval_s: float = 15.0  # settle sessions of dead processes this often
    checkpoint_interval_s: float = 1.0  # billing checkpoints to the store's group commit
    close_timeout_s: float = 2.0
    shutdown_grace_s: float = 10.0
    max_message_size: int = 1 << 20  # larger WebSocket messages close the connection with 1009
    message_queue_size: int = 64
    receive_buffer_size: int = 65536
    sink_queue: int = 16


def load_settings(path: str | None) -> tuple[EngineConfig, ServerSettings]:
    """The config file: plans, models and rules (see engine.policy.config), plus an
    optional ``[server]`` table of :class:`ServerSettings`. Raises ConfigError."""
    if path is None:
        return load_config(None), ServerSettings()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: invalid TOML: {e}") from None
    server = data.pop("server", {})
    try:
        settings = msgspec.convert(server, ServerSettings)
    except msgspec.ValidationError as e:
        raise ConfigError("server", str(e)) from None
    return config_from_dict(data), settings


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            parts = value.decode("latin-1").strip().split(None, 1)
            if len(parts) == 2 and parts[0].lower() == "bearer":
                return parts[1].strip()
    return None


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        *,
        settings: ServerSettings | None = None,
        vad: VadConfig | None = None,
        sink: Sink | None = None,
        owner: str | None = None,
        utc_offset: float | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.settings = settings or ServerSettings()
        self.vad = vad or VadConfig()
        self.sink = sink
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._utc_offset = utc_offset
        self.sessions: dict[str, SessionActor] = {}  # started sessions by id
        self._actors: set[SessionActor] = set()  # every live actor, started or not
        self._listen_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._closing = False
        self._background: trio.CancelScope | None = None
        self._drained = trio.Event()  # set when the last actor ends during shutdown

    # ---- time ---------------------------------------------------------------

    @property
    def utc_offset(self) -> float:
        """Unix time minus Trio's clock, fixed once (so MockClock tests can pin it)."""
        if self._utc_offset is None:
            self._utc_offset = time.time() - trio.current_time()
        return self._utc_offset

    def utc(self, now: float) -> float:
        return now + self.utc_offset

    # ---- serving ----------------------------------------------------------

    def dialect_for(self, path: str) -> Dialect | None:
        if path in ("/v1/stream", "/v1/stream/"):
            return V1Dialect()
        if path == "/v2" or path.startswith("/v2/"):
            # Speechmatics Real-Time v2: /v2 or /v2/<language> (speechmatics-python appends it)
            from engine.dialects.speechmatics import V2Dialect

            language = path[4:].strip("/")
            if "/" not in language:
                return V2Dialect(language=language or None)
        return None

    def limits_for(self, plan: Plan) -> dict[str, int | None]:
        r = self.config.rules
        return {
            "max_session_s": min(plan.max_session_s, r.hard_cap_s),
            "concurrent_streams": plan.concurrent_streams,
            "hourly_s": plan.hourly_s,
            "daily_s": plan.daily_s,
            "monthly_s": plan.monthly_s,
            "ws_messages_per_s": plan.ws_messages_per_s,
            "audio_bytes_per_s": plan.audio_bytes_per_s,
            "idle_timeout_s": r.idle_timeout_s,
            "no_audio_timeout_s": r.no_audio_timeout_s,
            "keepalive_timeout_s": r.keepalive_timeout_s,
            "status_interval_s": r.status_interval_s,
        }

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve WebSocket sessions until :meth:`shutdown` (supports ``nursery.start``)."""
        install_ping_hook()
        self.utc_offset  # noqa: B018 - pin the clock offset now
        recovered = await self.store.recover(self.utc(trio.current_time()))
        if recovered:
            log.info("settled %d session(s) left by processes that died", recovered)
        self._ensure_background()
        s = self.settings
        async with trio.open_nursery() as nursery:
            self._listen_scope = trio.CancelScope()
            server = await nursery.start(
                partial(
                    self._listen,
                    host,
                    port,
                    handler_nursery=nursery,
                    message_queue_size=s.message_queue_size,
                    max_message_size=s.max_message_size,
                    receive_buffer_size=s.receive_buffer_size,
                )
            )
            task_status.started(server)
            await self._stopped.wait()
            nursery.cancel_scope.cancel()

    async def _listen(
        self, host: str, port: int, *, task_status: trio.TaskStatus[WebSocketServer], **kw: Any
    ) -> None:
        assert self._listen_scope is not None
        with self._listen_scope:
            await serve_websocket(self.handle_request, host, port, None, task_status=task_status, **kw)

    async def handle_request(self, request: WebSocketRequest) -> None:
        """trio-websocket handler: route by path, authenticate, run the session."""
        if self._closing:
            await request.reject(503, body=_error_body(Code.SERVER_SHUTDOWN, "server shutting down"))
            return
        url = urlsplit(request.path)
        dialect = self.dialect_for(url.path)
        if dialect is None:
            await request.reject(404, body=_error_body(Code.PROTOCOL_ERROR, f"no such endpoint: {url.path}"))
            return
        query = parse_qs(url.query)
        tokens = query.get("token") or query.get("jwt") or []
        key = _bearer(request.headers) or (tokens[0] if tokens else None)
        account = await self.store.authenticate(key) if key else None
        if account is None:
            msg = "missing API key" if not key else "invalid API key"
            await request.reject(
                401,
                extra_headers=[(b"WWW-Authenticate", b'Bearer realm="engine"')],
                body=_error_body(Code.UNAUTHORIZED, msg),
            )
            return
        conn = await request.accept()
        await self._run_actor(SessionActor(self, conn, dialect, account))

    async def run_connection(self, conn: Connection, *, api_key: str, dialect: str = "v1") -> None:
        """Run one session over any Connection (transport-free embedding)."""
        d = self.dialect_for("/v1/stream" if dialect == "v1" else dialect)
        if d is None:
            raise ValueError(f"unknown dialect {dialect!r}")
        account = await self.store.authenticate(api_key)
        if account is None:
            msgs, code, reason = d.finish(
                session_id=None, receipt=None, code=Code.UNAUTHORIZED, message="invalid API key"
            )
            for m in msgs:
                await conn.send_message(m)
            await conn.aclose(code, reason)
            return
        await self._run_actor(SessionActor(self, conn, d, account))

    def _ensure_background(self) -> None:
        """Lease renewal, checkpoints and recovery run whenever sessions may run, whether through
        :meth:`serve` or :meth:`run_connection` (as Trio system tasks, ended by shutdown)."""
        if self._background is not None:
            return
        self._background = trio.CancelScope()

        async def background() -> None:
            assert self._background is not None
            with self._background:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._lease_loop)
                    nursery.start_soon(self._recover_loop)
                    nursery.start_soon(self._checkpoint_loop)

        trio.lowlevel.spawn_system_task(background, name="engine background")

    async def _run_actor(self, actor: SessionActor) -> None:
        self._ensure_background()
        self._actors.add(actor)
        try:
            if self._closing:
                actor.request_end(EndReason.SHUTDOWN, Code.SERVER_SHUTDOWN, "server shutting down")
            await actor.run()
        finally:
            self._actors.discard(actor)
            if self._closing and not self._actors:
                self._drained.set()

    async def _lease_loop(self) -> None:
        s = self.settings
        while True:
            await trio.sleep(s.lease_renew_s)
            if self.sessions:
                now = self.utc(trio.current_time())
                try:
                    await self.store.renew_leases(self.owner, list(self.sessions), now + s.lease_s)
                except Exception:
                    log.exception("lease renewal failed")

    async def _checkpoint_loop(self) -> None:
        """Every ``checkpoint_interval_s``, queue every live session's cumulative totals
        for the store's group commit: one timer for the process, not one per session."""
        interval = self.settings.checkpoint_interval_s
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for actor in list(self.sessions.values()):
                cp = actor.checkpoint_now(now)
                if cp is not None:
                    try:
                        await self.store.checkpoint(cp)
                    except Exception:
                        log.exception("checkpoint of session %s failed", actor.session_id)

    async def _recover_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.recover_interval_s)
            try:
                await self.store.recover(self.utc(trio.current_time()))
            except Exception:
                log.exception("recovery failed")

    async def shutdown(self) -> None:
        """Stop accepting; end every session with SERVER_SHUTDOWN (1001) after settling it."""
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        for actor in list(self._actors):
            actor.request_end(EndReason.SHUTDOWN, Code.SERVER_SHUTDOWN, "server shutting down")
        if self._actors:
            with trio.move_on_after(self.settings.shutdown_grace_s):
                await self._drained.wait()
        try:
            await self.store.flush()
        finally:
            if self._background is not None:
                self._background.cancel()
            self._stopped.set()


def _error_body(code: Code, message: str) -> bytes:
    return json.dumps({"error": {"code": str(code), "message": message}}).encode()
