"""Bounds that keep one server healthy under many clients: session slots and audio queues.

vLLM's realtime server queues audio without limit and takes any number of sessions, so one
fast or forgetful client can exhaust memory. These two small asyncio-only structures put a
number on both. They hold no sockets and no engine: the server session wires them up.
"""

from __future__ import annotations

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
