"""Bounds that keep one server healthy under many clients: session slots and audio queues.

vLLM's realtime server queues audio without limit and takes any number of sessions, so one
fast or forgetful client can exhaust memory. These two small asyncio-only structures put a
number on both. They hold no sockets and no engine: the server session wires them up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

from components.core.audio import pcm16_to_float
from components.core.protocol import BYTES_PER_SAMPLE, SAMPLE_RATE


class SessionSlots:
    """A counter of open sessions with a ceiling; one event loop, so no lock is needed."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the session limit must be at least 1")
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free; the caller must :meth:`release` it exactly once."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        if self.active <= 0:
            raise RuntimeError("released a session slot that was not held")
        self.active -= 1


def seconds_to_bytes(seconds: float) -> int:
    """PCM16 bytes for ``seconds`` of protocol audio, rounded down to whole samples."""
    return int(seconds * SAMPLE_RATE) * BYTES_PER_SAMPLE


class AudioQueue:
    """A bounded FIFO of PCM16 chunks between the socket reader and one engine request.

    The reader calls :meth:`put_nowait` (refused when the chunk would pass ``max_bytes``) and,
    while a consumer is attached, may await :meth:`wait_for_space` instead of failing: that
    pause stops the server reading the socket, which pushes back on the client through TCP.
    The engine side iterates :meth:`chunks` until :meth:`end` (the final commit) or
    :meth:`close` (the request is abandoned).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < BYTES_PER_SAMPLE:
            raise ValueError("the audio queue must hold at least one sample")
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.total_bytes = 0
        self.ended = False
        self.closed = False
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def fits(self, nbytes: int) -> bool:
        return self.queued_bytes + nbytes <= self.max_bytes

    def put_nowait(self, pcm16: bytes) -> bool:
        """Queue a chunk; return False (queueing nothing) when it would overfill the queue."""
        if self.ended or self.closed:
            raise RuntimeError("audio queued after the end of the stream")
        if not self.fits(len(pcm16)):
            self._space.clear()
            return False
        self._chunks.append(pcm16)
        self.queued_bytes += len(pcm16)
        self.total_bytes += len(pcm16)
        self._readable.set()
        return True

    async def wait_for_space(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more would fit, or the queue is closed (then return at once)."""
        while not self.closed and not self.fits(nbytes):
            self._space.clear()
            await self._space.wait()

    def end(self) -> None:
        """No more audio: the consumer drains what is queued and then stops."""
        self.ended = True
        self._readable.set()

    def close(self) -> None:
        """Abandon the queue: drop its audio and wake everyone waiting on it."""
        self.closed = True
        self._chunks.clear()
        self.queued_bytes = 0
        self._readable.set()
        self._space.set()

    async def get(self) -> bytes | None:
        """The next chunk, or None once the stream has ended (or was closed) and is drained."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self.queued_bytes -= len(chunk)
                self._space.set()
                return chunk
            if self.ended or self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """Float32 arrays for an engine, until the end of the stream."""
        while (chunk := await self.get()) is not None:
            yield pcm16_to_float(chunk)
