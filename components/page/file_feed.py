"""An uploaded recording fed to a caption session at real-time pace, as if it were a microphone."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import numpy as np

from components.core.protocol import SAMPLE_RATE

log = logging.getLogger(__name__)

FILE_CHUNK_SECONDS = 0.1
"""Chunk length when an uploaded recording is streamed as if live."""


class FedSession(Protocol):
    """What a file feeds: a caption session, seen as a microphone would see it."""

    id: str

    def feed(self, rate: int, chunk: np.ndarray) -> bool:
        """Take the next chunk; False once the session takes no more audio."""
        ...

    def stop(self) -> None: ...

    def fail(self, message: str) -> None: ...


def read_audio_file(path: str) -> tuple[int, np.ndarray]:
    """An uploaded recording at its own rate and channels (int16), as a microphone would give.

    Falls back to librosa (resampled to 16 kHz) for what libsndfile cannot read.
    """
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="int16", always_2d=False)
        if 8_000 <= rate <= 96_000:
            return int(rate), data
    except (RuntimeError, soundfile.LibsndfileError):
        pass
    from components.core.audio import load_file

    return SAMPLE_RATE, load_file(path)


async def feed_file(session: FedSession, path: str) -> None:
    loop = asyncio.get_running_loop()
    try:
        rate, data = await asyncio.to_thread(read_audio_file, path)
    except Exception as exc:
        log.warning("session %s: cannot read %s: %s", session.id, path, exc)
        session.fail("The file could not be read as audio. Try a WAV, FLAC, OGG or MP3 file.")
        return
    step = max(1, int(rate * FILE_CHUNK_SECONDS))
    start_time = loop.time()
    for start in range(0, len(data), step):
        end = min(len(data), start + step)
        delay = start_time + end / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if not session.feed(rate, data[start:end]):
            break
    session.stop()
