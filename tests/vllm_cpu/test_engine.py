"""``VllmEngine`` over a real ``AsyncLLM`` (vLLM's CPU build) on the tiny Voxtral Realtime model.

The model's weights are random, so its text says nothing about speech; what these tests check
is everything around it that a GPU user's first run would otherwise test: the streaming-input
request, the fed-back tokens, usage, aborts, and the engine's own limits, against vLLM's own
bookkeeping (``get_num_unfinished_requests``, the ``RequestOutput`` it returns).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from components.core.evaluation import Clip
from components.core.protocol import (
    NO_OPTIONS,
    ErrorCode,
    SessionOptions,
    TranscriptionDelta,
    TranscriptionDone,
)
from components.engines.base import EngineError
from tests.support_speech import chunks_of, frame_count, speech
from tests.test_server import wait_until
from tests.vllm_cpu.conftest import MAX_MODEL_LEN, Observed, unfinished

SHORT = "librispeech-1089-134691-0000"  # 2.1 s
LONGER = "librispeech-1089-134686-0000"  # 10.4 s


async def run(
    engine: Any, audio: AsyncIterator[np.ndarray], options: SessionOptions = NO_OPTIONS
) -> tuple[list[str], Any]:
    """Deltas and the final event (a TranscriptionDone, or the EngineError raised)."""
    deltas: list[str] = []
    try:
        events = engine.transcribe(audio, options=options)
        async with asyncio.timeout(240), contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, TranscriptionDelta):
                    deltas.append(event.delta)
                else:
                    assert isinstance(event, TranscriptionDone)
                    return deltas, event
    except EngineError as exc:
        return deltas, exc
    raise AssertionError("the stream ended without transcription.done")


def frames_for(engine: Any, samples: np.ndarray) -> int:
    return frame_count(engine.spec, samples, max_model_len=MAX_MODEL_LEN)


def test_the_engine_names_its_device(engine: Any) -> None:
    assert engine.name.endswith("(vLLM, CPU)")
    assert engine.max_sessions == 2


def test_session_options_voxtral_can_and_cannot_honour(
    bg: Any, engine: Any, observed: Observed, clips: dict[str, Clip]
) -> None:
    assert len(engine.languages) == 13 and "fr" in engine.languages
    assert not engine.takes_prompt
    samples = speech(clips[SHORT])
    _, done = bg.run(run(engine, chunks_of(samples), SessionOptions(language="fr")))
    assert isinstance(done, TranscriptionDone), done
    for options, code in [
        (SessionOptions(language="sv"), "unsupported_language"),
        (SessionOptions(prompt="Hester Prynne"), "prompt_not_supported"),
    ]:
        before = len(observed.outputs)
        _, refused = bg.run(run(engine, chunks_of(samples), options))
        assert isinstance(refused, EngineError) and refused.code == code, refused
        assert len(observed.outputs) == before  # refused before any vLLM request
    assert engine.active_sessions == 0 and unfinished(engine) == 0


def test_one_session_end_to_end_with_vllms_own_usage(
    bg: Any, engine: Any, observed: Observed, clips: dict[str, Clip]
) -> None:
    samples = speech(clips[LONGER])
    deltas, done = bg.run(run(engine, chunks_of(samples)))
    assert isinstance(done, TranscriptionDone), done
    assert deltas and all(deltas), "the tiny model's deltas carry characters"
    assert done.text == "".join(deltas)
    (request_id,) = observed.outputs
    assert done.text == observed.text(request_id)
    assert done.usage is not None
    assert done.usage.prompt_tokens == observed.prompt_tokens(request_id)
    assert done.usage.completion_tokens == observed.completion_tokens(request_id)
    # One frame per 80 ms of audio (plus padding), each one model step.
    frames = frames_for(engine, samples)
    assert done.usage.completion_tokens == frames
    assert done.usage.prompt_tokens == len(engine.spec.prompt_tokens) + frames - 1
    assert observed.outputs[request_id][-1].finished
    assert engine.active_sessions == 0 and unfinished(engine) == 0


def test_two_sessions_at_once_are_two_requests(
    bg: Any, engine: Any, observed: Observed, clips: dict[str, Clip]
) -> None:
    audio = [speech(clips[LONGER]), speech(clips[SHORT])]

    async def both() -> list[tuple[list[str], Any]]:
        return await asyncio.gather(*(run(engine, chunks_of(a, 800)) for a in audio))

    results = bg.run(both())
    assert len(observed.outputs) == 2
    assert observed.most_running == 2, "vLLM ran both requests at the same time"
    by_length = sorted(observed.outputs, key=observed.prompt_tokens, reverse=True)
    for (_, done), request_id, samples in zip(results, by_length, audio, strict=True):
        assert isinstance(done, TranscriptionDone), done
        assert done.usage is not None
        assert done.usage.prompt_tokens == observed.prompt_tokens(request_id)
        assert done.usage.completion_tokens == frames_for(engine, samples)
    assert engine.active_sessions == 0 and unfinished(engine) == 0


def test_cancel_mid_stream_aborts_the_vllm_request(
    bg: Any, engine: Any, observed: Observed, clips: dict[str, Clip]
) -> None:
    samples = speech(clips[LONGER])

    async def cancel_after_first_delta() -> int:
        stream = engine.transcribe(chunks_of(samples))
        async with asyncio.timeout(120):
            first = await anext(stream)
        assert isinstance(first, TranscriptionDelta)
        running = unfinished(engine)
        await stream.aclose()
        return running

    assert bg.run(cancel_after_first_delta()) == 1
    (request_id,) = observed.outputs
    assert not observed.outputs[request_id][-1].finished
    assert engine.active_sessions == 0
    assert unfinished(engine) == 0, "vLLM still holds the cancelled request"
    # The engine is whole afterwards.
    _, done = bg.run(run(engine, chunks_of(speech(clips[SHORT]))))
    assert isinstance(done, TranscriptionDone), done


def test_the_length_guard_ends_with_session_too_long_before_vllm_asserts(
    bg: Any, engine: Any, observed: Observed, clips: dict[str, Clip]
) -> None:
    limit = engine.spec.max_audio_seconds(MAX_MODEL_LEN)
    samples = speech(clips[LONGER])
    repeats = int(limit * 16_000 // len(samples)) + 3  # well past the limit
    long_audio = np.concatenate([samples] * repeats)
    deltas, ended = bg.run(run(engine, chunks_of(long_audio, 4000)))
    assert isinstance(ended, EngineError), ended
    assert ended.code == ErrorCode.SESSION_TOO_LONG
    assert "maximum length" in ended.message and "new session" in ended.message
    (request_id,) = observed.outputs
    final = observed.outputs[request_id][-1]
    assert final.finished, "the request ended normally, not by an abort or a vLLM error"
    assert len(final.prompt_token_ids) + 1 <= MAX_MODEL_LEN
    assert len(deltas) == observed.completion_tokens(request_id)
    assert engine.active_sessions == 0 and unfinished(engine) == 0


def test_more_sessions_than_max_num_seqs_get_server_busy(
    bg: Any, engine: Any, clips: dict[str, Clip]
) -> None:
    samples = speech(clips[SHORT])

    async def crowd() -> tuple[int, Any, list[Any]]:
        release = asyncio.Event()

        async def held() -> AsyncIterator[np.ndarray]:
            yield samples[:16_000]  # enough for the first frames: the request starts
            await release.wait()  # shorter than the idle timeout
            yield samples[16_000:]

        holders = [asyncio.create_task(run(engine, held())) for _ in range(engine.max_sessions)]
        assert await wait_until(lambda: unfinished(engine) == engine.max_sessions, 60)
        running = unfinished(engine)
        _, refused = await run(engine, chunks_of(samples))
        release.set()
        return running, refused, await asyncio.gather(*holders)

    running, refused, held_results = bg.run(crowd())
    assert running == engine.max_sessions
    assert isinstance(refused, EngineError) and refused.code == ErrorCode.SERVER_BUSY
    assert "try again" in refused.message
    assert all(isinstance(done, TranscriptionDone) for _, done in held_results), held_results
    assert engine.active_sessions == 0 and unfinished(engine) == 0


def test_idle_timeout_ends_the_session_and_its_request(
    bg: Any, engine: Any, clips: dict[str, Clip]
) -> None:
    samples = speech(clips[SHORT])

    async def stalls() -> AsyncIterator[np.ndarray]:
        yield samples
        await asyncio.Event().wait()  # the speaker's client hangs; no final commit
        yield samples  # pragma: no cover

    deltas, ended = bg.run(run(engine, stalls()))
    assert isinstance(ended, EngineError), ended
    assert ended.code == ErrorCode.IDLE_TIMEOUT
    assert deltas, "the audio before the stall was transcribed"
    assert engine.active_sessions == 0 and unfinished(engine) == 0


def test_empty_audio_is_done_without_a_request(bg: Any, engine: Any, observed: Observed) -> None:
    async def nothing() -> AsyncIterator[np.ndarray]:
        return
        yield  # pragma: no cover

    deltas, done = bg.run(run(engine, nothing()))
    assert isinstance(done, TranscriptionDone) and done.text == "" and not deltas
    assert observed.outputs == {}


@pytest.mark.parametrize("size", [7, 160])
def test_tiny_chunks_give_the_same_request(
    bg: Any, engine: Any, observed: Observed, clips: dict[str, Clip], size: int
) -> None:
    samples = speech(clips[SHORT])
    _, done = bg.run(run(engine, chunks_of(samples, size)))
    assert isinstance(done, TranscriptionDone), done
    assert done.usage is not None
    assert done.usage.completion_tokens == frames_for(engine, samples)


def test_a_continuous_stream_hands_over_before_the_models_maximum_length(
    bg: Any, engine: Any, clips: dict[str, Clip]
) -> None:
    """The engine names its limit (``max_stream_seconds``); a session longer than it moves to
    a new request in time, so it never meets ``session_too_long``."""
    from components.backends.local import LocalBackend
    from components.continuity.chain import ContinuousStream
    from components.core.audio import float_to_pcm16

    backend = LocalBackend(engine)
    limit = engine.spec.max_audio_seconds(MAX_MODEL_LEN)
    assert backend.max_stream_seconds == pytest.approx(limit)
    samples = speech(clips[LONGER])
    long_audio = np.concatenate([samples] * (int(limit * 16_000 // len(samples)) + 3))
    pcm = float_to_pcm16(long_audio)

    async def session() -> tuple[Any, Any]:
        stream = await ContinuousStream.open(backend, label="vllm-long")

        async def send() -> None:
            for at in range(0, len(pcm), 8000):
                await stream.send_audio(pcm[at : at + 8000])
            await stream.finish()

        sender = asyncio.create_task(send())
        final = None
        async with asyncio.timeout(240):
            async for event in stream:
                assert not hasattr(event, "code"), event  # no error event reaches the user
                if isinstance(event, TranscriptionDone):
                    final = event
        await sender
        await stream.cancel()
        return final, stream.stats

    final, stats = bg.run(session())
    assert final is not None and final.usage is not None
    assert stats.handovers >= 1 and stats.reconnects == 0, stats
    assert engine.active_sessions == 0 and unfinished(engine) == 0
