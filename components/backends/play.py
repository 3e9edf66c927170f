"""Send a recording through a stream at a pace while reading what comes back: the one driver
behind ``transcribe``, the benchmarks and the tests.

A microphone delivers a chunk once it has been recorded, so at ``pace`` 1 each chunk goes out
when its last sample would have been spoken; at ``pace`` 0 as fast as the stream takes it (a
backlog, as after a reconnection or from a file). Sending and reading run side by side; the
stream is cancelled on every way out, so nothing it holds outlives the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from components.backends.base import RealtimeStream
from components.core.protocol import (
    SAMPLE_RATE,
    ErrorEvent,
    ServerEvent,
    TranscriptionDelta,
    TranscriptionDone,
)


@dataclass
class Played:
    """What a stream said while a recording was played into it, with timings."""

    start: float
    """When sending began (the clock's time)."""
    text: str = ""
    """The deltas, joined."""
    done: TranscriptionDone | None = None
    deltas: list[tuple[float, str]] = field(default_factory=list)
    """(arrival time, delta)."""
    sent: list[tuple[float, float]] = field(default_factory=list)
    """(audio seconds sent so far, when that chunk was handed over)."""
    errors: list[ErrorEvent] = field(default_factory=list)

    @property
    def sent_seconds(self) -> float:
        return self.sent[-1][0] if self.sent else 0.0


async def play(
    stream: RealtimeStream,
    pcm16: bytes,
    *,
    pace: float = 1.0,
    chunk_seconds: float = 0.1,
    on_sent: Callable[[float], None] | None = None,
    on_event: Callable[[ServerEvent, Played], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Played:
    """Play ``pcm16`` (16 kHz mono) into a fresh ``stream`` and read it until it is done.

    ``on_sent(seconds)`` follows each chunk with the audio time sent so far;
    ``on_event(event, played)`` sees every event as it arrives (an exception it raises ends
    the call, and with it the stream). Returns when the stream's events end.
    """
    played = Played(start=clock())
    step = int(chunk_seconds * SAMPLE_RATE) * 2

    async def send() -> None:
        for offset in range(0, len(pcm16), step):
            chunk = pcm16[offset : offset + step]
            seconds = (offset + len(chunk)) / 2 / SAMPLE_RATE
            if pace > 0:
                delay = played.start + seconds / pace - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            await stream.send_audio(chunk)
            played.sent.append((seconds, clock()))
            if on_sent is not None:
                on_sent(seconds)
        await stream.finish()

    async def receive() -> None:
        async for event in stream:
            now = clock()
            if isinstance(event, TranscriptionDelta):
                played.deltas.append((now, event.delta))
                played.text += event.delta
            elif isinstance(event, TranscriptionDone):
                played.done = event
            elif isinstance(event, ErrorEvent):
                played.errors.append(event)
            if on_event is not None:
                on_event(event, played)

    sender = asyncio.create_task(send(), name="play-send")
    receiver = asyncio.create_task(receive(), name="play-receive")
    try:
        pending: set[asyncio.Task[None]] = {sender, receiver}
        while receiver in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if (error := task.exception()) is not None:
                    raise error
    finally:  # events that end before the audio does leave nothing to send it to
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        with contextlib.suppress(Exception):
            await stream.cancel()
    return played
