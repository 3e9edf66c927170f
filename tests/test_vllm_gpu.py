"""End to end on a GPU: VllmEngine transcribes real speech with vLLM and Voxtral Realtime.

Needs a CUDA GPU, vLLM (``pip install -r requirements-gpu.txt``) and the weights
(``LIVE_CAPTIONS_VLLM_MODEL``, or mistralai/Voxtral-Mini-4B-Realtime-2602 already in the
Hugging Face cache). Without any of them every test here is skipped, naming what is missing.
One engine is loaded for the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from components.core.evaluation import Clip, wer
from components.core.protocol import TranscriptionDelta, TranscriptionDone
from components.engines.base import EngineUnavailable
from components.engines.vllm import engine as vllm_engine
from components.engines.vllm import settings as vllm_settings
from components.engines.vllm.voxtral import VOXTRAL_REALTIME_AUDIO, StreamSpec, VoxtralFramer
from tests.support_speech import chunks_of, frame_count, speech, uneven_chunks, vllms_frames

CLEAN_CLIPS = ("librispeech-1089-134686-0000", "librispeech-1089-134691-0000")
WER_BOUND = 0.15
"""Voxtral Realtime scores a few percent WER on clean read speech; 15% still catches breakage."""


def _why_skip() -> str | None:
    problems = vllm_engine.missing_requirements()
    if problems:
        return "; ".join(problems)
    try:
        vllm_engine.resolve_model(vllm_engine.VllmSettings.from_env())
    except EngineUnavailable as exc:
        return exc.message
    return None


SKIP_REASON = _why_skip()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(SKIP_REASON is not None, reason=f"GPU engine unavailable: {SKIP_REASON}"),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[vllm_engine.VllmEngine]:
    engine = vllm_engine.VllmEngine.from_env()  # loads the model: minutes, once per module
    yield engine
    await engine.aclose()


async def transcribe(engine: vllm_engine.VllmEngine, samples: np.ndarray) -> TranscriptionDone:
    deltas: list[str] = []
    async with asyncio.timeout(240):
        async for event in engine.transcribe(chunks_of(samples)):
            if isinstance(event, TranscriptionDelta):
                deltas.append(event.delta)
            else:
                assert isinstance(event, TranscriptionDone)
                assert event.text == "".join(deltas)
                return event
    raise AssertionError("no transcription.done")


async def test_transcribes_a_clip_end_to_end(
    engine: vllm_engine.VllmEngine, clips: dict[str, Clip]
) -> None:
    clip = clips[CLEAN_CLIPS[0]]
    samples = speech(clip)
    done = await transcribe(engine, samples)
    assert wer(clip.text, done.text) <= WER_BOUND, done.text
    # Every frame went through: the prompt once, then one token per 80 ms.
    frames = frame_count(engine.spec, samples)
    assert done.usage is not None
    assert done.usage.prompt_tokens == len(engine.spec.prompt_tokens) + frames - 1
    assert done.usage.completion_tokens >= frames - 1
    assert engine.active_sessions == 0


async def test_two_sessions_at_once(engine: vllm_engine.VllmEngine, clips: dict[str, Clip]) -> None:
    targets = [clips[clip_id] for clip_id in CLEAN_CLIPS]
    results = await asyncio.gather(*(transcribe(engine, speech(c)) for c in targets))
    for clip, done in zip(targets, results, strict=True):
        assert wer(clip.text, done.text) <= WER_BOUND, done.text


async def test_a_cancelled_session_frees_its_request(
    engine: vllm_engine.VllmEngine, clips: dict[str, Clip]
) -> None:
    samples = speech(clips[CLEAN_CLIPS[0]])
    stream = engine.transcribe(chunks_of(samples))
    async with asyncio.timeout(240):
        first = await anext(stream)
    assert isinstance(first, TranscriptionDelta)
    await stream.aclose()
    assert engine.active_sessions == 0
    clip = clips[CLEAN_CLIPS[1]]
    done = await transcribe(engine, speech(clip))
    assert wer(clip.text, done.text) <= WER_BOUND, done.text


async def test_framing_matches_vllms_own_buffer(
    engine: vllm_engine.VllmEngine, clips: dict[str, Clip]
) -> None:
    """Our frames equal those of the model's ``buffer_realtime_audio`` for the same audio."""
    samples = speech(clips[CLEAN_CLIPS[1]])
    theirs = await vllms_frames(engine, uneven_chunks(samples, (999,)), lambda n: [100 + n])

    framer = VoxtralFramer(engine.spec)
    for at in range(0, len(samples), 999):
        framer.push_audio(samples[at : at + 999])
    framer.end_audio()
    ours = []
    while (frame := framer.next_frame()) is not None:
        ours.append(frame)
        framer.feed_output([100 + len(ours)])
    assert len(ours) == len(theirs)
    for frame, (token_ids, audio) in zip(ours, theirs, strict=True):
        assert list(frame.token_ids) == token_ids
        np.testing.assert_array_equal(frame.audio, audio)


async def test_the_model_frames_as_documented(engine: vllm_engine.VllmEngine) -> None:
    if engine.model != vllm_settings.DEFAULT_MODEL:
        pytest.skip(f"documented numbers are for {vllm_settings.DEFAULT_MODEL}, not {engine.model}")
    documented = StreamSpec.from_audio_settings(
        **VOXTRAL_REALTIME_AUDIO,
        bos_id=engine.spec.prompt_tokens[0],
        streaming_pad_id=engine.spec.prompt_tokens[1],
    )
    assert engine.spec == documented
