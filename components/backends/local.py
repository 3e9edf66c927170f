"""The in-process backend: a RealtimeStream straight onto an Engine, with no JSON on the way.

The page and the CLI use this when the engine runs in the same process. Audio goes from
``send_audio`` into a queue bounded by duration (``max_buffer_seconds``); when the engine falls
that far behind, ``send_audio`` waits instead of dropping audio, so a fast producer (a file
replayed as fast as possible) is slowed to the engine's pace and a live microphone sees the
delay as caption lag, never as missing words. The engine runs in a task of its own from
``open()`` on; its events go through a second bounded queue to whoever iterates the stream.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from components.core.audio import pcm16_to_float
from components.core.errors import Busy, ConnectionLost, InvalidOption
from components.core.protocol import (
    NO_OPTIONS,
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    ServerEvent,
    SessionOptions,
    TranscriptionDone,
)
from components.engines.audio_queue import AudioQueue
from components.engines.base import Engine, EngineError, check_engine_options, engine_extensions

log = logging.getLogger(__name__)

EVENT_QUEUE_SIZE = 1024
"""Events buffered for a slow reader before the engine task waits for it."""


class LocalStream:
    """One transcription request running on an in-process engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        partials: bool,
        max_buffer_seconds: float,
        options: SessionOptions = NO_OPTIONS,
    ) -> None:
        self.id = f"local-{uuid.uuid4().hex[:12]}"
        self.extensions = engine_extensions(engine)
        """The negotiated extensions its engine reads (as a server's ``session.created`` says)."""
        self._engine = engine
        self._audio = AudioQueue(int(max_buffer_seconds * SAMPLE_RATE))
        self._events: asyncio.Queue[ServerEvent | None] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._finished = False
        self._cancelled = False
        self._ended = False
        self._iterating = False
        self._task = asyncio.create_task(self._run(partials, options), name=f"engine {self.id}")

    @property
    def queued_samples(self) -> int:
        """Audio (16 kHz samples) sent and not yet taken by the engine."""
        return self._audio.queued

    async def _run(self, partials: bool, options: SessionOptions) -> None:
        """Drive the engine: forward its events, turn its failures into error events."""
        terminal: ServerEvent | None = None
        try:
            events = self._engine.transcribe(
                self._audio.chunks(), partials=partials, options=options
            )
            try:
                async for event in events:
                    await self._events.put(event)
                    if isinstance(event, TranscriptionDone):
                        terminal = event
                        break
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()  # release the engine's request on every exit path
            if terminal is None:
                log.error("[%s] engine ended without a final transcript", self.id)
                await self._events.put(
                    ErrorEvent(
                        error="The engine stopped without a final transcript.",
                        code=str(ErrorCode.PROCESSING_ERROR),
                    )
                )
        except EngineError as exc:
            log.warning("[%s] engine error (%s): %s", self.id, exc.code, exc.message)
            await self._events.put(ErrorEvent(error=exc.message, code=exc.code))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("[%s] engine failed", self.id)
            await self._events.put(
                ErrorEvent(
                    error="The speech engine failed; see the server log.",
                    code=str(ErrorCode.PROCESSING_ERROR),
                )
            )
        finally:
            self._ended = True
            self._audio.close()
        await self._events.put(None)

    async def send_audio(self, pcm16: bytes) -> None:
        """Queue PCM16 16 kHz mono audio; waits while the engine is ``max_buffer_seconds`` behind.

        Raises ``ValueError`` for an odd number of bytes, ``RuntimeError`` after ``finish()``,
        and :class:`ConnectionLost` once the stream was cancelled or the engine stopped.
        """
        if self._finished:
            raise RuntimeError("send_audio() after finish(): start a new stream")
        if len(pcm16) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        if self._cancelled or self._ended:
            raise ConnectionLost("The transcription stream has ended; start a new one.")
        if not pcm16:
            return
        if not await self._audio.put(pcm16_to_float(pcm16)):
            raise ConnectionLost("The transcription stream has ended; start a new one.")

    async def finish(self) -> None:
        """End the audio: the engine flushes the remaining text, then sends ``done``."""
        if not self._finished:
            self._finished = True
            self._audio.end()

    async def cancel(self) -> None:
        """Stop the engine request and release everything; safe to call any number of times."""
        if self._cancelled:
            return
        self._cancelled = True
        self._audio.close()
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
            log.info("[%s] cancelled", self.id)
        while not self._events.empty():
            self._events.get_nowait()
        self._events.put_nowait(None)

    async def _iterate(self) -> AsyncIterator[ServerEvent]:
        try:
            while True:
                event = await self._events.get()
                if event is None:
                    self._events.put_nowait(None)  # later readers end too
                    return
                yield event
        finally:
            if not self._task.done():
                # The reader's iterator was closed before the end (aclose, or garbage
                # collection): nobody will read the rest, so stop the engine too.
                await self.cancel()

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        """Events until ``done`` or a fatal error; iterate once, ``cancel()`` to stop early."""
        if self._iterating:
            raise RuntimeError("a stream can be iterated only once")
        self._iterating = True
        return self._iterate()


class LocalBackend:
    """Backend over an in-process :class:`~components.engines.base.Engine` (no sockets, no JSON)."""

    def __init__(self, engine: Engine, *, max_buffer_seconds: float = 30.0) -> None:
        if max_buffer_seconds <= 0:
            raise ValueError("max_buffer_seconds must be positive")
        self.engine = engine
        self.max_buffer_seconds = max_buffer_seconds
        self.name = f"{engine.name}, in-process"
        limit = getattr(engine, "max_stream_seconds", None)
        self.max_stream_seconds: float | None = float(limit) if limit else None
        """The engine's longest request (a model's maximum length), if it has one."""

    async def open(
        self, *, partials: bool = False, options: SessionOptions = NO_OPTIONS
    ) -> LocalStream:
        """Start a request on the engine; audio may be sent at once.

        An engine that counts its sessions (the vLLM engine) and has none free refuses here,
        with :class:`Busy`, rather than in the stream's first event: a session handing over to
        a new stream then knows to wait for its old one to finish.
        """
        active = getattr(self.engine, "active_sessions", None)
        limit = int(getattr(self.engine, "max_sessions", 0) or 0)
        if isinstance(active, int) and limit and active >= limit:
            raise Busy(f"{self.engine.name} is serving its maximum of {limit} sessions")
        try:
            check_engine_options(self.engine, options)
        except EngineError as exc:
            raise InvalidOption(exc.message) from None
        stream = LocalStream(
            self.engine,
            partials=partials,
            max_buffer_seconds=self.max_buffer_seconds,
            options=options,
        )
        log.info("[%s] opened on %s (partials=%s)", stream.id, self.engine.name, partials)
        return stream
