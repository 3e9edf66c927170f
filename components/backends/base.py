"""The Backend / RealtimeStream interface: how the page and the CLI talk to any engine.

A backend opens streams; a stream carries PCM16 16 kHz mono audio one way and protocol events
the other way, whether the engine is in-process, behind a WebSocket, or behind SageMaker.

    stream = await backend.open()
    await stream.send_audio(pcm16)      # as often as audio arrives
    await stream.finish()               # final commit: flush the remaining text
    async for event in stream:          # TranscriptionDelta | TranscriptionPartial |
        ...                             # TranscriptionDone | ErrorEvent; ends after done
    await stream.cancel()               # at any time: release everything, idempotent

Connection-level failures raise :class:`~components.core.errors.BackendError` subclasses from
``open()``, ``send_audio()`` or the iteration; protocol-level errors arrive as ``ErrorEvent``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from components.core.protocol import NO_OPTIONS, ServerEvent, SessionOptions


@runtime_checkable
class RealtimeStream(Protocol):
    async def send_audio(self, pcm16: bytes) -> None: ...

    async def finish(self) -> None: ...

    async def cancel(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[ServerEvent]: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    """Label shown to the user, e.g. ``"SageMaker endpoint my-asr (us-east-1)"``."""

    async def open(
        self, *, partials: bool = False, options: SessionOptions = NO_OPTIONS
    ) -> RealtimeStream:
        """Start a stream; a refused ``options`` raises
        :class:`~components.core.errors.InvalidOption` (from here or from the first events)."""
        ...
