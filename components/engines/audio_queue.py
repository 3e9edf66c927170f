"""The audio an engine request reads: one bounded queue for every way audio reaches an engine.

A WebSocket session (the server) and an in-process stream (the local backend) both hand
audio to an engine's ``transcribe``; both need the same things of the queue between: a bound
on the audio waiting, back-pressure on the producer instead of loss, an end mark for the final
commit, and an abort that wakes everyone when the request is abandoned.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import numpy as np


class AudioQueue:
    """Float32 chunks, bounded by their total number of samples, with an end mark.

    The producer either awaits :meth:`put` (which waits while the queue is full) or checks
    :meth:`fits` and calls :meth:`put_nowait` (refused when full); while it waits, a server
    stops reading its socket and TCP pushes back on the client. A chunk larger than the
    bound is taken into an empty queue, so that no chunk can wait forever. The engine side
    iterates :meth:`chunks` until :meth:`end` (the final commit) or :meth:`close` (the
    request is abandoned: the audio is dropped and every waiter is woken for good).
    """

    def __init__(self, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError("the audio queue must hold at least one sample")
        self.max_samples = max_samples
        self.queued = 0
        """Samples waiting now."""
        self.total = 0
        """Samples ever queued."""
        self.ended = False
        self.closed = False
        self._chunks: deque[np.ndarray] = deque()
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def fits(self, samples: int) -> bool:
        return not self.queued or self.queued + samples <= self.max_samples

    def put_nowait(self, chunk: np.ndarray) -> bool:
        """Queue ``chunk``; False (queueing nothing) when it does not fit."""
        if self.ended or self.closed:
            raise RuntimeError("audio queued after the end of the stream")
        if not self.fits(len(chunk)):
            self._space.clear()
            return False
        self._chunks.append(chunk)
        self.queued += len(chunk)
        self.total += len(chunk)
        self._readable.set()
        return True

    async def wait_for_space(self, samples: int) -> None:
        """Wait until ``samples`` more would fit, or the queue is closed (then return)."""
        while not self.closed and not self.fits(samples):
            self._space.clear()
            await self._space.wait()

    async def put(self, chunk: np.ndarray) -> bool:
        """Queue ``chunk`` once it fits; False if the queue was closed meanwhile."""
        await self.wait_for_space(len(chunk))
        return not self.closed and self.put_nowait(chunk)

    def end(self) -> None:
        """No more audio: the consumer drains what is queued and then stops."""
        self.ended = True
        self._readable.set()

    def close(self) -> None:
        """Abandon the queue: drop its audio and wake everyone waiting on it."""
        self.closed = True
        self._chunks.clear()
        self.queued = 0
        self._readable.set()
        self._space.set()

    async def get(self) -> np.ndarray | None:
        """The next chunk; None once the stream has ended and is drained, or was closed."""
        while True:
            if self.closed:
                return None
            if self._chunks:
                chunk = self._chunks.popleft()
                self.queued -= len(chunk)
                self._space.set()
                return chunk
            if self.ended:
                return None
            self._readable.clear()
            await self._readable.wait()

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """The chunks in order, until the end mark (or a close)."""
        while (chunk := await self.get()) is not None:
            yield chunk
