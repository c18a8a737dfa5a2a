"""One supervised actor per session: the Trio shell around the policy core.

A :class:`SessionActor` owns one connection and one nursery with these tasks
(billing checkpoints of all sessions are queued by one engine-wide task, see
``Engine._checkpoint_loop``, rather than by a timer per session):

- **receiver** (the hot path): reads a message, lets the dialect decode it,
  feeds audio to the native decoder (decode + energy + VAD in one call) and
  tells the policy core; the policy returns events only when something
  happens. No channel hop per frame.
- **timer**: sleeps until the policy's next deadline and runs ``tick``
  (idle detection from the VAD decisions, timeouts, warnings, status, balance
  checks against the store).
- **sink** (optional): passes decoded frames with their VAD flags to the host's
  recognizer through a bounded channel (a slow sink slows the receiver, and
  TCP slows the client: memory stays bounded).

Every session is its own error boundary: whatever fails inside it ends that
session only (error message, close code, settlement exactly once), is logged,
and the server and other sessions go on.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from trio_websocket import ConnectionClosed

from engine.audio import AudioFormatError, StreamDecoder, bytes_per_sample
from engine.dialects.base import (
    AudioChunk,
    ClientClose,
    ClientPing,
    Dialect,
    ProtocolViolation,
    SessionInfo,
    StartRequest,
)
from engine.policy import admission
from engine.policy.money import format_credits
from engine.policy.session import BalanceCheckDue, End, ResumeState, SessionPolicy, Status, Throttle, Warning
from engine.policy.types import Code, EndReason
from engine.store.base import Account, Admitted, Refusal, SessionEnd, SessionStart
from engine.store.base import Checkpoint as StoreCheckpoint
from engine.transport import Connection, connection_on_ping

if TYPE_CHECKING:
    from engine.server import Engine

log = logging.getLogger("engine.session")


class AudioFrame(msgspec.Struct, frozen=True, kw_only=True):
    """Decoded audio offered to the sink (the host's recognizer)."""

    session_id: str
    samples: Any  # float32 numpy array, interleaved channels
    sample_rate: int
    channels: int
    speech_frames: int  # VAD speech frames completed by this chunk
    in_speech: bool


class _Ended(Exception):
    """Raised inside the nursery to unwind once the session's end is decided."""


class SessionActor:
    def __init__(self, engine: Engine, conn: Connection, dialect: Dialect, account: Account) -> None:
        self.engine = engine
        self.conn = conn
        self.dialect = dialect
        self.account = account
        self.session_id: str | None = None
        self.policy: SessionPolicy | None = None
        self.decoder: StreamDecoder | None = None
        self._end: tuple[EndReason, Code | None, str] | None = None
        self._scope: trio.CancelScope | None = None
        self._throttled_until = 0.0
        self._checking = False
        self._nursery: trio.Nursery | None = None
        self.settled = trio.Event()

    # ---- public ----------------------------------------------------------

    def request_end(self, reason: EndReason, code: Code | None, message: str) -> None:
        """Decide the session's end (first decision wins) and unwind its tasks."""
        if self._end is None:
            self._end = (reason, code, message)
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Run the whole session; never raises (the session's error boundary)."""
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._end is not None:
                    scope.cancel()
                start = await self._await_start()
                if start is not None:
                    await self._run_started(start)
        except ProtocolViolation as exc:
            self.request_end(EndReason.PROTOCOL, exc.code, exc.message)
        except AudioFormatError as exc:
            self.request_end(EndReason.PROTOCOL, Code.INVALID_AUDIO_FORMAT, str(exc))
        except ConnectionClosed:
            self.request_end(EndReason.DISCONNECT, None, "client disconnected")
        except trio.Cancelled:
            # the host cancelled us without a graceful shutdown: settle, then re-raise
            self.request_end(EndReason.SHUTDOWN, Code.SERVER_SHUTDOWN, "server shutting down")
            with trio.CancelScope(shield=True):
                await self._settle_and_close()
            raise
        except Exception:
            log.exception("session %s failed", self.session_id)
            self.request_end(
                EndReason.INTERNAL, Code.INTERNAL_ERROR, "internal error; the session was settled"
            )
        try:
            with trio.CancelScope(shield=True):
                await self._settle_and_close()
        except Exception:  # pragma: no cover - last line of defence
            log.exception("session %s: settlement failed", self.session_id)

    # ---- start ------------------------------------------------------------

    async def _await_start(self) -> StartRequest | None:
        timeout = self.engine.settings.start_timeout_s
        with trio.move_on_after(timeout) as scope:
            while True:
                msg = await self.conn.get_message()
                ev = self.dialect.decode(msg)
                if type(ev) is StartRequest:
                    return ev
                if type(ev) is ClientPing:
                    pong = self.dialect.pong()
                    if pong is not None:
                        await self.conn.send_message(pong)
                    continue
                if type(ev) is ClientClose:
                    self.request_end(EndReason.CLIENT_CLOSE, None, "closed before start")
                    return None
                raise ProtocolViolation(Code.PROTOCOL_ERROR, "audio received before the start message")
        if scope.cancelled_caught:
            raise ProtocolViolation(Code.PROTOCOL_ERROR, f"no start message within {timeout:g} s")
        return None  # pragma: no cover

    async def _run_started(self, start: StartRequest) -> None:
        engine = self.engine
        config = engine.config
        model_name = start.model or config.default_model
        model = config.models.get(model_name)
        if model is None:
            names = ", ".join(sorted(config.models))
            raise ProtocolViolation(Code.PROTOCOL_ERROR, f"unknown model {model_name!r}; available: {names}")
        plan = config.plans.get(self.account.plan)
        if plan is None:
            raise RuntimeError(f"account {self.account.account_id} has unknown plan {self.account.plan!r}")
        fmt = start.audio
        # validates the format (AudioFormatError -> INVALID_AUDIO_FORMAT) before admission
        decoder = StreamDecoder(fmt.encoding, fmt.sample_rate, fmt.channels, engine.vad)

        session_id = start.resume or uuid.uuid4().hex
        now = trio.current_time()
        result = await engine.store.begin_session(
            SessionStart(
                session_id=session_id,
                account_id=self.account.account_id,
                model=model.name,
                encoding=fmt.encoding,
                sample_rate=fmt.sample_rate,
                channels=fmt.channels,
                owner=engine.owner,
                lease_s=engine.settings.lease_s,
                now_utc=engine.utc(now),
                resume_window_s=config.rules.resume_window_s,
                resume_id=start.resume,
            ),
            lambda snap: admission.check_admission(config, plan, model, snap),
        )
        if isinstance(result, Refusal):
            self.request_end(EndReason.POLICY, result.code, result.message)
            return
        assert isinstance(result, Admitted)
        self.session_id = result.session_id
        resumed = None
        if result.resumed is not None:
            # the store's ResumeInfo carries the policy's ResumeState fields (plus the id)
            fields = msgspec.structs.asdict(result.resumed)
            del fields["session_id"]
            resumed = ResumeState(**fields)
        now = trio.current_time()
        policy = SessionPolicy(
            config=config,
            plan=plan,
            model=model,
            snapshot=result.snapshot,
            now=now,
            utc_offset=engine.utc_offset,
            sample_rate=fmt.sample_rate,
            channels=fmt.channels,
            bytes_per_sample=bytes_per_sample(fmt.encoding),
            resumed=resumed,
        )
        self.policy = policy
        self.decoder = decoder
        engine.sessions[result.session_id] = self
        try:
            info = SessionInfo(
                session_id=result.session_id,
                plan=plan.name,
                model=model.name,
                limits=engine.limits_for(plan),
                credits_remaining=format_credits(policy.credits_remaining_micro),
                active_sessions=result.snapshot.active_sessions + 1,
                concurrent_limit=plan.concurrent_streams,
                resumed=resumed is not None,
            )
            for m in self.dialect.started(info):
                await self.conn.send_message(m)
            connection_on_ping(self.conn, self._on_transport_ping)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer)
                if engine.sink is not None:
                    send, recv = trio.open_memory_channel[AudioFrame](engine.settings.sink_queue)
                    nursery.start_soon(self._sink_task, recv)
                    async with send:
                        await self._receiver(send)
                else:
                    await self._receiver(None)
                nursery.cancel_scope.cancel()
        finally:
            connection_on_ping(self.conn, None)

    # ---- tasks ------------------------------------------------------------

    async def _receiver(self, sink: trio.MemorySendChannel[AudioFrame] | None) -> None:
        conn = self.conn
        get = conn.get_message
        decode = self.dialect.decode
        ack = self.dialect.audio_received
        policy = self.policy
        decoder = self.decoder
        assert policy is not None and decoder is not None
        feed = decoder.feed
        frame_ms = decoder.frame_ms
        clock = trio.current_time
        last_samples = decoder.samples
        while True:
            try:
                msg = await get()
            except ConnectionClosed:
                self.request_end(EndReason.DISCONNECT, None, "client disconnected")
                return
            now = clock()
            if type(msg) is bytes:
                data = msg
            else:
                try:
                    ev = decode(msg)
                except ProtocolViolation as exc:
                    self.request_end(EndReason.PROTOCOL, exc.code, exc.message)
                    return
                tev = type(ev)
                if tev is AudioChunk:
                    data = ev.data  # type: ignore[union-attr]
                elif tev is ClientPing:
                    policy.on_message(now, 0)
                    policy.on_ping(now)
                    pong = self.dialect.pong()
                    if pong is not None:
                        await conn.send_message(pong)
                    continue
                elif tev is ClientClose:
                    self.request_end(EndReason.CLIENT_CLOSE, None, "closed by client")
                    return
                else:
                    self.request_end(EndReason.PROTOCOL, Code.PROTOCOL_ERROR, "session already started")
                    return
            nbytes = len(data)
            throttle = policy.on_message(now, nbytes)
            if throttle is not None:
                await self._on_event(throttle)
                if self._end is not None:
                    return
            if sink is None:
                speech = feed(data)
            else:
                samples_out, speech = decoder.feed_decode(data)
                if samples_out.size:
                    await sink.send(
                        AudioFrame(
                            session_id=self.session_id or "",
                            samples=samples_out,
                            sample_rate=decoder.sample_rate,
                            channels=decoder.channels,
                            speech_frames=speech,
                            in_speech=decoder.in_speech,
                        )
                    )
            samples = decoder.samples
            events = policy.on_audio(now, samples - last_samples, nbytes, speech * frame_ms)
            last_samples = samples
            if events:
                for ev2 in events:
                    await self._on_event(ev2)
                if self._end is not None:
                    return
            if ack is not None:
                a = ack()
                if a is not None:
                    await conn.send_message(a)

    async def _timer(self) -> None:
        policy = self.policy
        assert policy is not None
        while True:
            await trio.sleep_until(policy.next_deadline())
            for ev in policy.tick(trio.current_time()):
                await self._on_event(ev)

    async def _sink_task(self, recv: trio.MemoryReceiveChannel[AudioFrame]) -> None:
        sink = self.engine.sink
        assert sink is not None
        async with recv:
            async for frame in recv:
                await sink(frame)

    # ---- events -------------------------------------------------------------

    async def _on_event(self, ev: object) -> None:
        t = type(ev)
        if t is Status:
            msg = self.dialect.status(ev)
        elif t is Warning:
            msg = self.dialect.warning(ev)
        elif t is End:
            self.request_end(EndReason.POLICY, ev.code, ev.message)  # type: ignore[attr-defined]
            return
        elif t is Throttle:
            await self._throttle(ev)  # type: ignore[arg-type]
            return
        elif t is BalanceCheckDue:
            # in its own task: the timer must never wait on store I/O, or deadlines slip
            if not self._checking and self._nursery is not None:
                self._checking = True
                self._nursery.start_soon(self._balance_check)
            return
        else:  # pragma: no cover - a policy event this shell does not know
            log.warning("session %s: unhandled policy event %r", self.session_id, ev)
            return
        if msg is not None:
            await self.conn.send_message(msg)

    async def _throttle(self, ev: Throttle) -> None:
        """Tell the client (once per wait), then stop reading for the wait: TCP slows it down."""
        now = trio.current_time()
        if now >= self._throttled_until:
            msg = self.dialect.throttle(ev.wait_ms, ev.message)
            if msg is not None:
                await self.conn.send_message(msg)
        self._throttled_until = max(self._throttled_until, now + ev.wait_ms / 1000)
        await trio.sleep(ev.wait_ms / 1000)

    async def _balance_check(self) -> None:
        try:
            await self._refresh_balance()
        finally:
            self._checking = False

    async def _refresh_balance(self) -> None:
        policy = self.policy
        assert policy is not None and self.session_id is not None
        # the snapshot reflects this session's checkpoints up to persisted_seq (read in
        # the same transaction); the policy adds what is still queued: exact, no flush
        snap, persisted_seq = await self.engine.store.session_snapshot(
            self.session_id, self.engine.utc(trio.current_time())
        )
        for ev in policy.refresh_account(trio.current_time(), snap, persisted_seq):
            await self._on_event(ev)

    def _store_checkpoint(self, now: float) -> StoreCheckpoint:
        policy = self.policy
        assert policy is not None and self.session_id is not None
        cp = policy.checkpoint(now)
        return StoreCheckpoint(
            session_id=self.session_id,
            seq=cp.seq,
            now_utc=self.engine.utc(now),
            billed_micro=cp.billed_micro,
            usage_ms=cp.usage_ms,
            audio_ms=cp.audio_ms,
            speech_ms=cp.speech_ms,
            duration_ms=cp.wall_ms,
            samples=cp.samples,
        )

    def checkpoint_now(self, now: float) -> StoreCheckpoint | None:
        """This session's cumulative totals for the engine's checkpoint loop (None once ended)."""
        if self.policy is None or self.policy.ended or self.session_id is None:
            return None
        return self._store_checkpoint(now)

    def _on_transport_ping(self) -> None:
        if self.policy is not None:
            self.policy.on_ping(trio.current_time())

    # ---- end --------------------------------------------------------------

    async def _settle_and_close(self) -> None:
        """Settle exactly once, then send the dialect's last messages and close."""
        if self.settled.is_set():
            return
        reason, code, message = self._end or (EndReason.INTERNAL, Code.INTERNAL_ERROR, "ended")
        receipt = None
        engine = self.engine
        if self.policy is not None and self.session_id is not None:
            now = trio.current_time()
            receipt = self.policy.end(now, reason, code)
            final = self._store_checkpoint(now)
            try:  # no timeout: this is money, and it runs shielded
                await engine.store.end_session(
                    SessionEnd(
                        checkpoint=final,
                        reason=reason,
                        code=code,
                        resumable=reason is EndReason.DISCONNECT,
                    )
                )
            except Exception:
                # the last queued checkpoint is durable within a commit interval, and
                # store.recover() settles the session from it once its lease expires
                log.exception("session %s: could not settle now; recovery will", self.session_id)
            engine.sessions.pop(self.session_id, None)
            log.info(
                "session %s ended: %s %s audio=%dms billed=%d",
                self.session_id,
                reason,
                code or "",
                receipt.audio_ms,
                receipt.billed_micro,
            )
        self.settled.set()
        msgs, close_code, close_reason = self.dialect.finish(
            session_id=self.session_id, receipt=receipt, code=code, message=message
        )
        with trio.move_on_after(engine.settings.close_timeout_s):
            try:
                for m in msgs:
                    await self.conn.send_message(m)
                await self.conn.aclose(close_code, close_reason)
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
