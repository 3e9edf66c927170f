"""One client connection of the realtime server: vLLM's event flow plus the limits vLLM lacks.

The flow is vLLM's (``session.created`` on accept; ``session.update`` validates the model and
answers only on error; appends queue audio; the first non-final commit starts an engine request
and a second one while it runs is ignored; the final commit ends the audio; deltas, then
``done``; afterwards a new commit starts a fresh request, and a final commit with no audio
since then starts nothing). On top of it:

* the audio queue is bounded; while an engine request drains it, a full queue pauses reading
  the socket (back-pressure through TCP) instead of growing, and ``audio_buffer_full`` closes
  the session only when nothing is draining it;
* an idle timeout and a maximum session length, each announced by an ``error`` event before
  the close;
* a binary frame earns ``invalid_frame`` and the session goes on;
* whatever ends the session (client gone, timeout, server shutdown), the engine request is
  cancelled and awaited before the slot is given back.

Three tasks run per session: the socket reader, the watchdog (timeouts) and, while one runs,
the engine request. The reader and the request both send; a lock keeps frames whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from components.core.audio import pcm16_seconds, pcm16_to_float
from components.core.protocol import (
    NO_OPTIONS,
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    ProtocolError,
    ServerEvent,
    SessionCreated,
    SessionOptions,
    SessionUpdate,
    TranscriptEvent,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
    Usage,
    parse_client_event,
    serialize,
)
from components.engines.audio_queue import AudioQueue
from components.engines.base import Engine, EngineError, check_engine_options, engine_extensions

if TYPE_CHECKING:
    from components.server.state import ServerState

logger = logging.getLogger("components.server.app")

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
SEND_TIMEOUT = 5.0
"""How long the final error and close may take before the session gives up on a stuck client."""


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the session id (also passed as ``extra["session"]``)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return f"[{(self.extra or {}).get('session')}] {msg}", kwargs


class ClientGone(Exception):
    """The client closed the socket (or it broke) while the server was sending."""


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a session ends, and what the client is told first (nothing when ``code`` is None)."""

    reason: str
    code: ErrorCode | None = None
    message: str = ""
    close_code: int = CLOSE_NORMAL


CLIENT_CLOSED = Ending("client_closed")
SERVER_SHUTDOWN = Ending("server_shutdown")
INTERNAL_ERROR = Ending(
    "internal_error",
    ErrorCode.PROCESSING_ERROR,
    "Internal server error; the server log has the details",
    CLOSE_INTERNAL_ERROR,
)


class RealtimeSession:
    """The state of one ``/v1/realtime`` connection; :meth:`run` serves it to the end."""

    def __init__(
        self,
        websocket: WebSocket,
        engine: Engine,
        state: ServerState,
        *,
        models: Collection[str],
    ) -> None:
        self.ws = websocket
        self.engine = engine
        self.state = state
        self.settings = state.settings
        self.models = tuple(models)
        now = int(time.time())
        created = SessionCreated(
            created=now,
            expires_at=now + int(state.settings.max_session_seconds),
            extensions=engine_extensions(engine),
        )
        self._created = created
        self.id = created.id
        self.log = SessionLog(logger, {"session": self.id})
        self._buffer_bytes = self.settings.audio_buffer_bytes
        self._max_append = min(self.settings.max_append_bytes, self._buffer_bytes)
        self._buffer_samples = self._buffer_bytes // 2  # PCM16
        self._send_lock = asyncio.Lock()
        self._validated = False
        self._partials = False
        self._options = NO_OPTIONS
        self._queue = AudioQueue(self._buffer_samples)
        self._request: asyncio.Task[None] | None = None
        self._request_queue: AudioQueue | None = None
        self._paused = False
        self._started = time.monotonic()
        self._last_activity = self._started
        self.audio_bytes = 0
        self.text_chars = 0
        self.requests = 0
        self.reason = "unknown"

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Accept, serve until something ends the session, and release everything."""
        await self.ws.accept()
        client = self.ws.client
        peer = f"{client.host}:{client.port}" if client else "?"
        self.log.info("session start peer=%s model=%s", peer, ",".join(self.models))
        ending = CLIENT_CLOSED
        try:
            await self._send(self._created)
            ending = await self._serve()
        except ClientGone:
            ending = CLIENT_CLOSED
        except Exception:  # a bug: tell the client plainly, keep the traceback in the log
            self.log.exception("session failed")
            ending = INTERNAL_ERROR
        finally:
            await self._stop_request()
            await self._say_goodbye(ending)
            self.reason = ending.reason
            self.log.info(
                "session end reason=%s audio_s=%.2f text_chars=%d requests=%d duration_s=%.1f",
                ending.reason,
                pcm16_seconds(self.audio_bytes),
                self.text_chars,
                self.requests,
                time.monotonic() - self._started,
            )

    async def _serve(self) -> Ending:
        reader = asyncio.create_task(self._read_loop(), name=f"{self.id}-reader")
        watchdog = asyncio.create_task(self._watchdog(), name=f"{self.id}-watchdog")
        try:
            done, _ = await asyncio.wait({reader, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in (reader, watchdog):
                task.cancel()
            await asyncio.gather(reader, watchdog, return_exceptions=True)

    async def _say_goodbye(self, ending: Ending) -> None:
        """Tell the client why (an ``error`` event), then close; bounded in time."""
        if ending in (CLIENT_CLOSED, SERVER_SHUTDOWN):
            return
        if ending.code is not None:
            self.log.warning("closing: %s (%s)", ending.message, ending.code)
        with contextlib.suppress(ClientGone, TimeoutError):
            if ending.code is not None:
                await asyncio.wait_for(
                    self._send(ErrorEvent(error=ending.message, code=str(ending.code))),
                    SEND_TIMEOUT,
                )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.ws.close(ending.close_code, ending.reason.replace("_", " ")), SEND_TIMEOUT
            )

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    # ------------------------------------------------------------------ timeouts

    async def _watchdog(self) -> Ending:
        """Return the first deadline that passes: the session length or the idle timeout.

        Idle means no frame from the client. It does not count while the server itself is
        busy for the client: finishing a request after the final commit, or holding the
        client back because the engine has not yet drained the audio queue.
        """
        idle = self.settings.idle_timeout
        longest = self.settings.max_session_seconds
        deadline = self._started + longest
        while True:
            now = time.monotonic()
            if now >= deadline:
                return Ending(
                    "session_too_long",
                    ErrorCode.SESSION_TOO_LONG,
                    f"The session reached the maximum length of {longest:g} s; "
                    "open a new session to continue",
                    CLOSE_POLICY,
                )
            if self._idle_exempt():
                wake = now + idle
            else:
                idle_at = self._last_activity + idle
                if now >= idle_at:
                    return Ending(
                        "idle_timeout",
                        ErrorCode.IDLE_TIMEOUT,
                        f"No event from the client for {idle:g} s; the session was closed",
                        CLOSE_POLICY,
                    )
                wake = idle_at
            await asyncio.sleep(max(0.01, min(wake, deadline) - now))

    def _idle_exempt(self) -> bool:
        finishing = self._request is not None and self._request_queue is not self._queue
        return self._paused or finishing

    # ------------------------------------------------------------------ client events

    async def _read_loop(self) -> Ending:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == CLOSE_SERVICE_RESTART:
                    return SERVER_SHUTDOWN  # uvicorn closes every socket when it stops
                return CLIENT_CLOSED
            self._touch()
            text = message.get("text")
            if text is None:
                await self._send_error(
                    ErrorCode.INVALID_FRAME,
                    "Binary frames are not part of the protocol: send JSON text frames "
                    "(audio goes base64-encoded in input_audio_buffer.append)",
                )
                continue
            try:
                event = parse_client_event(
                    text,
                    max_audio_bytes=self._max_append,
                    max_prompt_chars=self.settings.max_prompt_chars,
                )
            except ProtocolError as exc:
                await self._send_error(exc.code, exc.message)
                continue
            try:
                ending = await self._handle(event)
            except ClientGone:
                raise
            except Exception as exc:  # a bug must not kill the session silently
                self.log.exception("failed to handle %s", event.type)
                await self._send_error(ErrorCode.PROCESSING_ERROR, f"Internal error: {exc}")
                continue
            if ending is not None:
                return ending

    async def _handle(
        self, event: SessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit
    ) -> Ending | None:
        match event:
            case SessionUpdate(model=model, partials=partials):
                if model not in self.models:
                    await self._send_error(
                        ErrorCode.MODEL_NOT_FOUND,
                        f"The model `{model}` does not exist. This server serves: "
                        f"{', '.join(self.models)}",
                    )
                    return None
                try:
                    check_engine_options(self.engine, event.options)
                except EngineError as exc:
                    # Refused as a whole: the session keeps what it had, and stays open.
                    await self._send_error(exc.code, exc.message)
                    return None
                self._validated = True
                self._partials = partials
                self._options = event.options
                self.log.debug(
                    "session.update model=%s partials=%s language=%s prompt=%d chars "
                    "context=%d chars",
                    model,
                    partials,
                    event.language,
                    len(event.prompt or ""),
                    len(event.context or ""),
                )
            case InputAudioBufferAppend(audio=audio):
                return await self._append(audio)
            case InputAudioBufferCommit(final=final):
                if not self._validated:
                    await self._send_error(
                        ErrorCode.MODEL_NOT_VALIDATED,
                        "Model not validated. Make sure to validate the model by sending a "
                        "session.update event.",
                    )
                    return None
                self._commit(final)
        return None

    async def _append(self, audio: bytes) -> Ending | None:
        samples = pcm16_to_float(audio)
        while not self._queue.fits(len(samples)):
            queue = self._queue
            if self._request is None or self._request_queue is not queue:
                return Ending(
                    "audio_buffer_full",
                    ErrorCode.AUDIO_BUFFER_FULL,
                    f"More than {self.settings.audio_buffer_seconds:g} s of audio is queued "
                    "with no transcription running to take it: send input_audio_buffer.commit "
                    "to start one (the server limit is LIVE_CAPTIONS_AUDIO_BUFFER_SECONDS)",
                    CLOSE_POLICY,
                )
            # Hold the client back until the engine takes audio: not reading the socket
            # meanwhile lets TCP push back on the sender.
            self._paused = True
            try:
                await asyncio.wait_for(
                    queue.wait_for_space(len(samples)), self.settings.idle_timeout
                )
            except TimeoutError:
                return Ending(
                    "audio_buffer_full",
                    ErrorCode.AUDIO_BUFFER_FULL,
                    f"The engine took no audio for {self.settings.idle_timeout:g} s while "
                    f"{self.settings.audio_buffer_seconds:g} s were queued",
                    CLOSE_POLICY,
                )
            finally:
                self._paused = False
                self._touch()
        self._queue.put_nowait(samples)
        self.audio_bytes += len(audio)
        self.state.metrics.audio_seconds.inc(len(audio) / (2 * SAMPLE_RATE))  # PCM16
        return None

    def _commit(self, final: bool) -> None:
        running = self._request is not None
        if not final:
            if running:
                self.log.debug("commit ignored: a transcription is already running")
                return
            self._start_request()
            return
        if not running:
            if not self._queue.total:
                # Nothing was said since the last transcription ended (a repeated final
                # commit that lost the race with ``done``): like vLLM, start nothing.
                self.log.debug("final commit ignored: no audio since the last transcription")
                return
            self._start_request()
        if self._request_queue is self._queue:
            # The running request's audio ends here; audio sent from now on waits for the
            # next commit in a fresh queue.
            self._queue.end()
            self._queue = AudioQueue(self._buffer_samples)
        else:
            self.log.debug("final commit ignored: the running transcription is already final")

    # ------------------------------------------------------------------ engine request

    def _start_request(self) -> None:
        queue = self._queue
        self._request_queue = queue
        self.requests += 1
        self.state.requests_active += 1
        self.log.debug("request %d started", self.requests)
        task = asyncio.create_task(
            self._run_request(queue, self._partials, self._options),
            name=f"{self.id}-request-{self.requests}",
        )
        self._request = task
        # A done callback runs even for a task cancelled before its first step, which a
        # ``finally`` inside the coroutine would not: the bookkeeping cannot leak.
        task.add_done_callback(lambda t: self._request_finished(t, queue))

    def _request_finished(self, task: asyncio.Task[None], queue: AudioQueue) -> None:
        self.state.requests_active -= 1
        queue.close()
        if self._queue is queue:
            # Ended before the final commit: like vLLM, drop the audio it left behind.
            self._queue = AudioQueue(self._buffer_samples)
        if self._request is task:
            self._request = None
            self._request_queue = None
        self._touch()

    async def _run_request(
        self, queue: AudioQueue, partials: bool, options: SessionOptions
    ) -> None:
        parts: list[str] = []
        started = time.monotonic()
        done: TranscriptionDone | None = None
        events: AsyncIterator[TranscriptEvent | ErrorEvent] | None = None
        try:
            events = self.engine.transcribe(queue.chunks(), partials=partials, options=options)
            async for event in events:
                match event:
                    case TranscriptionDelta(delta=delta):
                        if not parts:
                            self.state.metrics.first_caption.observe(time.monotonic() - started)
                        parts.append(delta)
                        await self._send(event)
                    case TranscriptionPartial():
                        if partials:
                            await self._send(event)
                    case TranscriptionDone():
                        done = event
                        break
                    case ErrorEvent(code=code, error=message):
                        self.log.warning("engine warning: %s (%s)", message, code)
                        await self._send(event)
            if done is None:
                done = TranscriptionDone(text="".join(parts), usage=Usage())
            elif done.usage is None:  # vLLM always reports usage
                done = TranscriptionDone(text=done.text, usage=Usage())
            await self._send(done)
            self.log.debug("request %d done chars=%d", self.requests, len(done.text))
        except ClientGone:
            pass
        except EngineError as exc:
            self.log.warning("engine error: %s (%s)", exc.message, exc.code)
            with contextlib.suppress(ClientGone):
                await self._send_error(exc.code, exc.message)
        except Exception as exc:
            self.log.exception("transcription failed")
            with contextlib.suppress(ClientGone):
                await self._send_error(ErrorCode.PROCESSING_ERROR, f"Transcription failed: {exc}")
        finally:
            # The text this request produced, whether it finished or was cut short.
            self.text_chars += len(done.text) if done is not None else sum(map(len, parts))
            aclose = getattr(events, "aclose", None) if events is not None else None
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _stop_request(self) -> None:
        """Cancel the running engine request (if any) and wait until it has let go."""
        task = self._request
        self._queue.close()
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # ------------------------------------------------------------------ sending

    async def _send(self, event: ServerEvent) -> None:
        if isinstance(event, ErrorEvent):
            self.state.metrics.errors.labels(code=event.code or "error").inc()
        frame = serialize(event)
        async with self._send_lock:
            try:
                await self.ws.send_text(frame)
            except (WebSocketDisconnect, OSError, RuntimeError) as exc:
                raise ClientGone() from exc

    async def _send_error(self, code: ErrorCode | str, message: str) -> None:
        self.log.info("error sent: %s (%s)", message, code)
        await self._send(ErrorEvent(error=message, code=str(code)))
