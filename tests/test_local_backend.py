"""LocalBackend over the real embedded engine: a clip end to end, back-pressure, cancel, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from components.backends.base import Backend, RealtimeStream
from components.backends.local import LocalBackend
from components.core.audio import float_to_pcm16, load_file
from components.core.errors import ConnectionLost
from components.core.evaluation import Clip, wer
from components.core.protocol import (
    SAMPLE_RATE,
    ErrorEvent,
    ServerEvent,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
)
from components.engines.whisper.engine import WhisperEngine


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    built = WhisperEngine(cpu_threads=2)
    yield built
    asyncio.run(built.aclose())


async def send_clip(stream: RealtimeStream, audio: np.ndarray, *, pace: float = 4.0) -> None:
    step = SAMPLE_RATE // 10
    for i in range(0, len(audio), step):
        await stream.send_audio(float_to_pcm16(audio[i : i + step]))
        if pace:
            await asyncio.sleep(0.1 / pace)
    await stream.finish()


async def read_all(stream: RealtimeStream) -> list[ServerEvent]:
    return [event async for event in stream]


async def test_a_clip_end_to_end(engine: WhisperEngine, clips: dict[str, Clip]) -> None:
    backend = LocalBackend(engine)
    assert isinstance(backend, Backend)
    assert engine.name in backend.name
    clip = clips["jfk"]
    audio = load_file(str(clip.path))
    stream = await backend.open(partials=True)
    assert isinstance(stream, RealtimeStream)
    events, _ = await asyncio.gather(read_all(stream), send_clip(stream, audio))
    text = "".join(e.delta for e in events if isinstance(e, TranscriptionDelta))
    done = events[-1]
    assert isinstance(done, TranscriptionDone) and done.text == text
    assert wer(clip.text, text) <= 0.35, text
    assert any(isinstance(e, TranscriptionPartial) for e in events)
    await stream.cancel()  # after the end: harmless
    assert engine.scheduler.active == 0


async def test_full_queue_makes_the_sender_wait_and_loses_nothing(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["librispeech-1089-134686-0000"].path))
    backend = LocalBackend(engine, max_buffer_seconds=0.5)
    stream = await backend.open()
    reader = asyncio.create_task(read_all(stream))
    sent = 0
    for i in range(0, len(audio), 8000):  # half a second per append, as fast as accepted
        chunk = float_to_pcm16(audio[i : i + 8000])
        await stream.send_audio(chunk)
        sent += len(chunk) // 2
        assert stream.queued_samples <= 8000  # never more than the bound waits in the queue
    await stream.finish()
    events = await reader
    done = events[-1]
    assert isinstance(done, TranscriptionDone) and done.usage is not None
    assert done.usage.prompt_tokens == sent * 50 // SAMPLE_RATE  # every sample reached it


async def test_cancel_releases_everything_and_is_idempotent(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["mfa-acoustic-corpus"].path))
    stream = await LocalBackend(engine).open()
    sender = asyncio.create_task(send_clip(stream, audio, pace=2.0))
    got_text = asyncio.Event()
    events: list[ServerEvent] = []

    async def read() -> None:
        async for event in stream:
            events.append(event)
            if isinstance(event, TranscriptionDelta):
                got_text.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(got_text.wait(), 120)
    await stream.cancel()
    await stream.cancel()
    await asyncio.wait_for(reader, 10)  # iteration ends after a cancel
    assert not any(isinstance(e, TranscriptionDone) for e in events)
    assert engine.scheduler.active == 0
    with pytest.raises(ConnectionLost):
        await sender
    with pytest.raises(ConnectionLost):
        await stream.send_audio(b"\0\0")


async def test_engine_failure_arrives_as_an_error_event() -> None:
    engine = WhisperEngine(cpu_threads=1)
    await engine.aclose()  # a shut-down engine refuses new streams
    stream = await LocalBackend(engine).open()
    events = await asyncio.wait_for(read_all(stream), 30)
    assert len(events) == 1 and isinstance(events[0], ErrorEvent)
    assert events[0].code == "processing_error"
    assert "shut down" in events[0].error
    with pytest.raises(ConnectionLost):
        await stream.send_audio(b"\0\0")


async def test_misuse_is_reported(engine: WhisperEngine) -> None:
    stream = await LocalBackend(engine).open()
    with pytest.raises(ValueError):
        await stream.send_audio(b"\0\0\0")
    await stream.send_audio(b"")  # nothing to do
    await stream.finish()
    with pytest.raises(RuntimeError):
        await stream.send_audio(b"\0\0")
    events = await read_all(stream)
    assert isinstance(events[-1], TranscriptionDone) and events[-1].text == ""
    with pytest.raises(RuntimeError):
        async for _ in stream:
            pass
    with pytest.raises(ValueError):
        LocalBackend(engine, max_buffer_seconds=0)
