"""The GPU engine without a GPU: Voxtral framing on real speech, the feedback loop, the length
guard, the engine's session handling, and the lazy import / CPU fallback.

vLLM and a CUDA GPU are absent here by design. Where a test needs the engine itself, it uses
``StandInLLM``: a stand-in for vLLM's ``AsyncLLM`` (which needs a GPU) that keeps its
streaming-input contract (it consumes the prompt generator in its own task and answers each
chunk with one token) but invents the tokens. ``tests/test_vllm_gpu.py`` runs the real thing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from components.core.evaluation import Clip
from components.core.protocol import ErrorCode, TranscriptionDelta, TranscriptionDone
from components.engines import registry
from components.engines.base import EngineError, EngineUnavailable
from components.engines.vllm import engine as vllm_engine
from components.engines.vllm import settings as vllm_settings
from components.engines.vllm.voxtral import (
    VOXTRAL_REALTIME_AUDIO,
    Frame,
    FrameFeeder,
    StreamSpec,
    VoxtralFramer,
)

SPEC = StreamSpec.from_audio_settings(**VOXTRAL_REALTIME_AUDIO)
CLIP_ID = "librispeech-1089-134686-0000"


def speech(clip: Clip) -> np.ndarray:
    samples, rate = sf.read(clip.path, dtype="float32")
    assert rate == SPEC.sample_rate
    return samples


def chunked(samples: np.ndarray, seed: int) -> list[np.ndarray]:
    """Irregular chunks, from single samples to several frames, as a browser might send."""
    rng = np.random.default_rng(seed)
    chunks, at = [], 0
    while at < len(samples):
        size = int(rng.choice([1, 7, 160, 1279, 1280, 1281, 4000, 9000]))
        chunks.append(samples[at : at + size])
        at += size
    return chunks


def run_framer(framer: VoxtralFramer, chunks: list[np.ndarray], end: bool = True) -> list[Frame]:
    """Push everything, then drain frames, feeding back ``1000 + index`` after each frame."""
    for chunk in chunks:
        framer.push_audio(chunk)
    if end:
        framer.end_audio()
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
        framer.feed_output([7, 1000 + frame.index])
    return frames


def padded(samples: np.ndarray, spec: StreamSpec = SPEC) -> np.ndarray:
    return np.concatenate(
        [np.zeros(spec.left_pad, np.float32), samples, np.zeros(spec.right_pad, np.float32)]
    )


# ------------------------------------------------------------------------------ the spec


def test_spec_matches_voxtral_mini_realtime_2602() -> None:
    # tekken.json: 16 kHz, 12.5 tokens/s, 480 ms delay, 2.5/52.5 ms look-ahead/back, 32 pads.
    assert SPEC.samples_per_token == 1280
    assert SPEC.delay_tokens == 6
    assert SPEC.prompt_tokens == (1, *([32] * 38))
    assert (SPEC.look_ahead, SPEC.look_back) == (40, 840)
    assert (SPEC.left_pad, SPEC.right_pad) == (32 * 1280, 17 * 1280)
    assert SPEC.first_core_end == 39 * 1280
    # 45000 tokens hold about an hour of audio
    assert 59 * 60 < SPEC.max_audio_seconds(45_000) < 60 * 60


def stand_in_tokenizer(
    *, delay_tokens: int, streaming_tokens: list[int], pads: tuple[np.ndarray, np.ndarray]
) -> SimpleNamespace:
    """Duck-typed like mistral_common's tokenizer, as far as ``StreamSpec.from_tokenizer`` reads
    it: Voxtral Realtime's audio settings, with these delay, streaming tokens and padding audio.
    The stand-in ``vllm`` package below serves the same object."""
    config = SimpleNamespace(
        sampling_rate=16_000,
        frame_rate=12.5,
        raw_audio_length_per_tok=1280,
        streaming_look_back_ms=52.5,
        streaming_look_ahead_ms=2.5,
        get_num_delay_tokens=lambda: delay_tokens,
    )
    encoder = SimpleNamespace(
        audio_config=config,
        encode_streaming_tokens=lambda: list(streaming_tokens),
        get_padding_audio=lambda: tuple(SimpleNamespace(audio_array=pad) for pad in pads),
    )
    return SimpleNamespace(instruct=SimpleNamespace(audio_encoder=encoder, start=lambda: [1]))


def test_spec_from_tokenizer_reads_the_model_objects() -> None:
    """Values come from the tokenizer, not from defaults."""
    silent = (np.zeros(2560, np.float32), np.zeros(3840, np.float32))
    tokenizer = stand_in_tokenizer(delay_tokens=3, streaming_tokens=[9] * 5, pads=silent)
    spec = StreamSpec.from_tokenizer(tokenizer)
    assert spec.prompt_tokens == (1, 9, 9, 9, 9, 9)
    assert (spec.left_pad, spec.right_pad, spec.delay_tokens) == (2560, 3840, 3)

    loud = (np.ones(2560, np.float32), np.zeros(3840, np.float32))
    with pytest.raises(ValueError, match="not silence"):
        StreamSpec.from_tokenizer(
            stand_in_tokenizer(delay_tokens=3, streaming_tokens=[9] * 5, pads=loud)
        )


# --------------------------------------------------------------------------- the framing


def test_frames_cover_every_sample_once_as_vllm_frames_them(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    frames = run_framer(VoxtralFramer(SPEC), chunked(samples, seed=1))
    stream = padded(samples)

    # Frame 0: the prompt, its core [0, 39 * 1280) and the look-ahead.
    assert frames[0].token_ids == SPEC.prompt_tokens
    assert (frames[0].window_start, frames[0].core_start) == (0, 0)
    assert len(frames[0].audio) == SPEC.first_core_end + SPEC.look_ahead
    # Cores partition the padded stream, one token's worth after frame 0.
    for before, after in itertools.pairwise(frames):
        assert after.core_start == before.core_end
        assert after.core_end - after.core_start == SPEC.samples_per_token
    # Each window is its core plus look-back and look-ahead, cut from the padded stream.
    for frame in frames:
        start = max(frame.core_start - SPEC.look_back, 0)
        assert frame.window_start == start
        assert len(frame.audio) == frame.core_end + SPEC.look_ahead - start
        assert frame.audio.dtype == np.float32
        np.testing.assert_array_equal(frame.audio, stream[start : start + len(frame.audio)])
    # Every real sample is owned by exactly one frame; only padding is left over.
    first_real, last_real = SPEC.left_pad, SPEC.left_pad + len(samples)
    owners = np.zeros(len(stream), dtype=np.int32)
    for frame in frames:
        owners[frame.core_start : frame.core_end] += 1
    assert np.all(owners[first_real:last_real] == 1)
    # As many frames as whole windows fit, i.e. the dropped tail is shorter than a frame.
    expected = 1 + (len(stream) - SPEC.look_ahead - SPEC.first_core_end) // SPEC.samples_per_token
    assert len(frames) == expected
    assert len(stream) - (frames[-1].core_end + SPEC.look_ahead) < SPEC.samples_per_token


def test_frames_do_not_depend_on_chunking(clips: dict[str, Clip]) -> None:
    samples = speech(clips["librispeech-1089-134686-0001"])
    whole = run_framer(VoxtralFramer(SPEC), [samples])
    pieces = run_framer(VoxtralFramer(SPEC), chunked(samples, seed=2))
    assert len(whole) == len(pieces)
    for a, b in zip(whole, pieces, strict=True):
        assert (a.token_ids, a.window_start) == (b.token_ids, b.window_start)
        assert a.core_end == b.core_end
        np.testing.assert_array_equal(a.audio, b.audio)


def test_feedback_loop_orders_frames_after_outputs(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    framer = VoxtralFramer(SPEC)
    framer.push_audio(samples)  # plenty of audio: only tokens can hold frames back
    first = framer.next_frame()
    assert first is not None and first.index == 0
    assert framer.next_frame() is None and framer.needs == "token"
    framer.feed_output([])  # an output without tokens feeds nothing back
    assert framer.next_frame() is None
    framer.feed_output([11, 12, 13])  # only the last token is fed back, as vLLM does
    assert framer.needs == "frame"
    second = framer.next_frame()
    assert second is not None and second.token_ids == (13,)
    framer.feed_output([21])
    third = framer.next_frame()
    assert third is not None and third.token_ids == (21,)
    assert framer.prompt_tokens_sent == len(SPEC.prompt_tokens) + 2


def test_frames_wait_for_audio_then_flush_at_the_end(clips: dict[str, Clip]) -> None:
    samples = speech(clips["librispeech-1089-134691-0000"])
    framer = VoxtralFramer(SPEC)
    assert framer.next_frame() is None and framer.needs == "audio"
    framer.push_audio(samples[:1000])  # left padding + 1000 samples: not yet a first frame
    assert framer.next_frame() is None and framer.needs == "audio"
    frames = run_framer(framer, [samples[1000:]], end=False)
    speech_only = len(frames)
    assert not framer.finished and framer.needs == "audio"
    # The last words sit in the look-ahead of frames that need the right padding.
    assert frames[-1].core_end < SPEC.left_pad + len(samples)
    framer.end_audio()
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
        framer.feed_output([5])
    assert framer.finished and framer.needs == "done"
    assert len(frames) - speech_only <= SPEC.flush_frames
    assert frames[-1].core_end >= SPEC.left_pad + len(samples)


def test_no_audio_means_no_frames() -> None:
    framer = VoxtralFramer(SPEC)
    framer.push_audio(np.zeros(0, np.float32))
    framer.end_audio()
    assert framer.finished and framer.next_frame() is None


def test_rejects_misshapen_audio_and_late_audio() -> None:
    framer = VoxtralFramer(SPEC)
    with pytest.raises(ValueError, match="1-D"):
        framer.push_audio(np.zeros((10, 2), np.float32))
    framer.push_audio(np.zeros(10, np.float32))
    framer.end_audio()
    with pytest.raises(RuntimeError, match="after end_audio"):
        framer.push_audio(np.zeros(10, np.float32))


def test_length_guard_stops_real_audio_and_keeps_room_for_the_flush(
    clips: dict[str, Clip],
) -> None:
    samples = speech(clips[CLIP_ID])  # 10.4 s
    limit = SPEC.min_model_len() + 40  # room for about 3.8 s of speech
    framer = VoxtralFramer(SPEC, max_model_len=limit)
    frames = run_framer(framer, chunked(samples, seed=3), end=False)
    assert framer.truncated and framer.finished
    assert framer.prompt_tokens_sent + framer.max_tokens <= limit
    cut = framer.real_end
    assert cut is not None
    kept = cut - SPEC.left_pad
    assert kept / SPEC.sample_rate == pytest.approx(SPEC.max_audio_seconds(limit), abs=0.08)
    assert framer.real_samples_dropped == len(samples) - kept
    # Frames up to the cut carry real audio; the frames after it, silence from the cut on
    # (the flush that lets the model finish the last words).
    stream = padded(samples)
    for frame in frames:
        end = frame.window_start + len(frame.audio)
        expected = stream[frame.window_start : end].copy()
        if frame.core_start >= cut:
            expected[max(cut - frame.window_start, 0) :] = 0.0
        np.testing.assert_array_equal(frame.audio, expected)
    assert frames[-1].core_end >= cut + (SPEC.flush_frames - 3) * SPEC.samples_per_token
    framer.push_audio(samples[:100])  # later audio is counted as dropped, not framed
    assert framer.real_samples_dropped == len(samples) - kept + 100


def test_length_guard_refuses_a_model_too_short_to_stream() -> None:
    with pytest.raises(ValueError, match="too short"):
        VoxtralFramer(SPEC, max_model_len=SPEC.min_model_len() - 1)


# ------------------------------------------------------------------------ the async feeder


async def stream_of(chunks: list[np.ndarray], stall_after: int | None = None) -> AsyncIterator:
    for i, chunk in enumerate(chunks):
        if stall_after is not None and i == stall_after:
            await asyncio.Event().wait()  # a client that stops sending
        yield chunk


async def test_feeder_runs_the_loop_and_bounds_its_buffer(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    framer = VoxtralFramer(SPEC)
    feeder = FrameFeeder(framer, stream_of(chunked(samples, 4)), max_buffered_seconds=0.5)
    bound = int(0.5 * SPEC.sample_rate) + 9000  # at most one chunk over the limit
    seen = []
    async with asyncio.timeout(60):
        async for frame in feeder.frames():
            assert framer.ended or framer.buffered_samples <= bound  # the end adds padding
            if frame.index:
                assert frame.token_ids == (2000 + frame.index - 1,)
            seen.append(frame.index)
            await asyncio.sleep(0)  # the model's turn: the reader may run, bounded
            feeder.feed_output([2000 + frame.index])
    await feeder.aclose()
    assert feeder.error is None and framer.finished
    assert seen == list(range(len(seen)))
    assert framer.real_samples_in == len(samples)


async def test_feeder_reports_an_idle_client(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    feeder = FrameFeeder(
        VoxtralFramer(SPEC), stream_of(chunked(samples, 5), stall_after=3), idle_timeout=0.2
    )
    async with asyncio.timeout(30):
        assert await feeder.next_frame() is None  # stalled before a whole first frame
    assert feeder.error is not None and feeder.error.code == ErrorCode.IDLE_TIMEOUT
    await feeder.aclose()


async def test_feeder_reports_a_broken_audio_source() -> None:
    async def broken() -> AsyncIterator[np.ndarray]:
        yield np.zeros(100, np.float32)
        raise OSError("microphone unplugged")

    feeder = FrameFeeder(VoxtralFramer(SPEC), broken())
    async with asyncio.timeout(30):
        assert await feeder.next_frame() is None
    assert feeder.error is not None and "microphone unplugged" in feeder.error.message
    await feeder.aclose()


async def test_feeder_close_ends_frames_and_stops_reading(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    closed = asyncio.Event()

    async def source() -> AsyncIterator[np.ndarray]:
        try:
            yield samples
            await asyncio.Event().wait()
        finally:
            closed.set()

    feeder = FrameFeeder(VoxtralFramer(SPEC), source())
    first = await feeder.next_frame()
    assert first is not None
    waiter = asyncio.create_task(feeder.next_frame())  # waits for a token that never comes
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await feeder.aclose()
    async with asyncio.timeout(5):
        assert await waiter is None
        await closed.wait()


# ------------------------------------------------------------------- the engine, stand-in


class StandInLLM:
    """Stand-in for vLLM's AsyncLLM (needs a CUDA GPU), keeping its streaming-input contract.

    ``generate`` consumes the prompt generator in its own task and answers every chunk with one
    output holding one token; a word of text comes every ``word_every`` chunks. It records each
    chunk's tokens, so tests can check that the engine fed back the last output token.
    """

    def __init__(self, word_every: int = 10, fail_at: int | None = None) -> None:
        self.word_every = word_every
        self.fail_at = fail_at
        self.chunks: dict[str, list[Frame]] = {}
        self.aborted: list[str] = []
        self.shut_down = False

    async def generate(
        self, prompt: AsyncIterator[Any], sampling_params: Any, request_id: str
    ) -> AsyncIterator[Any]:
        chunks: asyncio.Queue[Frame | None] = asyncio.Queue()
        seen = self.chunks.setdefault(request_id, [])

        async def consume() -> None:
            try:
                async for chunk in prompt:
                    await chunks.put(chunk)
            finally:
                chunks.put_nowait(None)

        task = asyncio.create_task(consume())
        try:
            while (frame := await chunks.get()) is not None:
                seen.append(frame)
                if self.fail_at is not None and frame.index == self.fail_at:
                    raise RuntimeError("CUDA error: an illegal memory access\nstack...")
                text = f" w{frame.index}" if frame.index % self.word_every == 0 else ""
                result = SimpleNamespace(text=text, token_ids=[5000 + frame.index])
                yield SimpleNamespace(outputs=[result], finished=False)
            yield SimpleNamespace(outputs=[SimpleNamespace(text="", token_ids=[])], finished=True)
        finally:
            task.cancel()

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


async def identity(frame: Frame) -> Frame:
    return frame


def make_engine(llm: StandInLLM, **kwargs: Any) -> vllm_engine.VllmEngine:
    options: dict[str, Any] = {"max_model_len": 45_000, "max_sessions": 2, "idle_timeout": 5.0}
    options.update(kwargs)
    return vllm_engine.VllmEngine(
        llm,
        model=vllm_settings.DEFAULT_MODEL,
        spec=SPEC,
        prepare=identity,
        sampling_params=lambda: None,
        **options,
    )


async def collect(engine: vllm_engine.VllmEngine, audio: AsyncIterator) -> list[Any]:
    events = []
    async with asyncio.timeout(60):
        async for event in engine.transcribe(audio):
            events.append(event)
    return events


async def test_engine_streams_deltas_and_feeds_tokens_back(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    llm = StandInLLM()
    engine = make_engine(llm)
    events = await collect(engine, stream_of(chunked(samples, 6)))
    deltas = [e.delta for e in events if isinstance(e, TranscriptionDelta)]
    done = events[-1]
    assert isinstance(done, TranscriptionDone) and len(deltas) == len(events) - 1
    assert done.text == "".join(deltas) and done.text.startswith(" w0 w10")
    (frames,) = llm.chunks.values()
    assert frames[0].token_ids == SPEC.prompt_tokens
    assert all(f.token_ids == (5000 + f.index - 1,) for f in frames[1:])
    assert done.usage is not None
    assert done.usage.prompt_tokens == len(SPEC.prompt_tokens) + len(frames) - 1
    assert done.usage.completion_tokens == len(frames)
    assert llm.aborted == [] and engine.active_sessions == 0
    assert engine.name.startswith("Voxtral Realtime") and engine.max_sessions == 2


async def test_engine_refuses_sessions_past_the_limit(clips: dict[str, Clip]) -> None:
    samples = speech(clips["librispeech-1089-134686-0001"])
    engine = make_engine(StandInLLM(), max_sessions=2)
    gate, started = asyncio.Event(), asyncio.Semaphore(0)

    async def held(chunks: list[np.ndarray]) -> AsyncIterator[np.ndarray]:
        started.release()  # the engine is reading: the session holds its slot
        await gate.wait()
        for chunk in chunks:
            yield chunk

    running = [asyncio.create_task(collect(engine, held([samples]))) for _ in range(2)]
    async with asyncio.timeout(30):
        for _ in running:
            await started.acquire()
    assert engine.active_sessions == 2
    with pytest.raises(EngineError) as refused:
        await collect(engine, stream_of([samples]))
    assert refused.value.code == ErrorCode.SERVER_BUSY
    gate.set()
    for events in await asyncio.gather(*running):
        assert isinstance(events[-1], TranscriptionDone)
    assert engine.active_sessions == 0


async def test_engine_aborts_the_request_when_the_consumer_leaves(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    llm = StandInLLM(word_every=1)
    engine = make_engine(llm)
    stream = engine.transcribe(stream_of(chunked(samples, 7)))
    async with asyncio.timeout(60):
        first = await anext(stream)
    assert isinstance(first, TranscriptionDelta)
    await stream.aclose()
    assert list(llm.aborted) == list(llm.chunks)  # the one request was aborted
    assert engine.active_sessions == 0


async def test_engine_ends_an_idle_session(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    engine = make_engine(StandInLLM(), idle_timeout=0.2)
    with pytest.raises(EngineError) as idle:
        await collect(engine, stream_of(chunked(samples, 8), stall_after=60))
    assert idle.value.code == ErrorCode.IDLE_TIMEOUT
    assert engine.active_sessions == 0


async def test_engine_stops_a_session_at_the_length_limit(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    llm = StandInLLM(word_every=5)
    engine = make_engine(llm, max_model_len=SPEC.min_model_len() + 40)
    deltas: list[str] = []
    with pytest.raises(EngineError) as too_long:
        async with asyncio.timeout(60):
            async for event in engine.transcribe(stream_of(chunked(samples, 9))):
                assert isinstance(event, TranscriptionDelta)
                deltas.append(event.delta)
    assert too_long.value.code == ErrorCode.SESSION_TOO_LONG
    assert too_long.value.message == (
        "session reached the model's maximum length (about 4 seconds of audio); start a new session"
    )
    assert deltas  # the text up to the limit was delivered first
    assert engine.active_sessions == 0 and llm.aborted == []


async def test_engine_answers_empty_audio_without_a_request() -> None:
    llm = StandInLLM()
    events = await collect(make_engine(llm), stream_of([]))
    assert events == [TranscriptionDone(text="", usage=events[0].usage)]
    assert llm.chunks == {}


async def test_engine_turns_a_gpu_failure_into_one_line(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    llm = StandInLLM(fail_at=20)
    engine = make_engine(llm)
    with pytest.raises(EngineError) as failed:
        await collect(engine, stream_of(chunked(samples, 10)))
    assert failed.value.code == ErrorCode.PROCESSING_ERROR
    assert failed.value.message == (
        "the GPU engine failed: RuntimeError: CUDA error: an illegal memory access"
    )
    assert engine.active_sessions == 0


async def test_engine_close_aborts_and_shuts_down(clips: dict[str, Clip]) -> None:
    samples = speech(clips[CLIP_ID])
    llm = StandInLLM()
    engine = make_engine(llm)
    stream = engine.transcribe(stream_of(chunked(samples, 11), stall_after=40))
    async with asyncio.timeout(60):
        await anext(stream)
    await engine.aclose()
    assert llm.shut_down and len(llm.aborted) == 1
    await stream.aclose()
    with pytest.raises(EngineError, match="shut down"):
        await collect(engine, stream_of([samples]))


# ------------------------------------------------------------- availability and fallback


def test_without_vllm_or_gpu_from_env_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)  # whatever another test may have left
    with pytest.raises(EngineUnavailable) as unavailable:
        vllm_engine.VllmEngine.from_env()
    message = unavailable.value.message
    assert "no CUDA GPU detected" in message
    assert "vLLM is not installed: pip install -r requirements-gpu.txt on a CUDA machine" in message
    assert "\n" not in message
    assert "vllm" not in sys.modules and "torch" not in sys.modules


def test_cuda_visible_devices_can_hide_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert vllm_settings.cuda_problem() == (
        "no CUDA GPU detected (CUDA_VISIBLE_DEVICES hides every GPU)"
    )


def test_create_engine_vllm_raises_and_auto_falls_back_to_cpu() -> None:
    with pytest.raises(EngineUnavailable, match="vLLM is not installed"):
        registry.create_engine("vllm")
    engine, note = registry.create_engine("auto")
    try:
        assert type(engine).__name__ == "WhisperEngine"
        assert "vLLM is not installed" in note and "CPU" in note
    finally:
        asyncio.run(engine.aclose())


def test_settings_defaults_and_errors() -> None:
    settings = vllm_engine.VllmSettings.from_env({})
    assert settings == vllm_engine.VllmSettings()
    assert (settings.model, settings.model_from_env) == (vllm_settings.DEFAULT_MODEL, False)
    assert (settings.max_model_len, settings.max_num_seqs, settings.idle_timeout) == (
        45_000,
        16,
        60.0,
    )
    custom = vllm_engine.VllmSettings.from_env(
        {
            "LIVE_CAPTIONS_VLLM_MODEL": "/models/voxtral",
            "LIVE_CAPTIONS_VLLM_MAX_MODEL_LEN": "8192",
            "LIVE_CAPTIONS_VLLM_GPU_MEMORY_UTILIZATION": "0.5",
            "LIVE_CAPTIONS_VLLM_MAX_NUM_SEQS": "4",
            "LIVE_CAPTIONS_VLLM_IDLE_TIMEOUT": "0",
            "LIVE_CAPTIONS_VLLM_ENFORCE_EAGER": "1",
        }
    )
    assert custom.model_from_env and custom.max_model_len == 8192
    assert (custom.gpu_memory_utilization, custom.max_num_seqs) == (0.5, 4)
    assert custom.idle_timeout is None and custom.enforce_eager
    for name, value, message in [
        (
            "LIVE_CAPTIONS_VLLM_MAX_MODEL_LEN",
            "lots",
            "LIVE_CAPTIONS_VLLM_MAX_MODEL_LEN='lots' is not a whole number",
        ),
        ("LIVE_CAPTIONS_VLLM_GPU_MEMORY_UTILIZATION", "1.5", "between 0.05 and 1"),
        (
            "LIVE_CAPTIONS_VLLM_MAX_NUM_SEQS",
            "0",
            "LIVE_CAPTIONS_VLLM_MAX_NUM_SEQS must be at least 1",
        ),
        (
            "LIVE_CAPTIONS_VLLM_ENFORCE_EAGER",
            "maybe",
            "LIVE_CAPTIONS_VLLM_ENFORCE_EAGER='maybe' is not true or false",
        ),
    ]:
        with pytest.raises(EngineUnavailable, match=message):
            vllm_engine.VllmSettings.from_env({name: value})


def test_model_resolution_never_downloads_unasked(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default = vllm_engine.VllmSettings()
    with pytest.raises(
        EngineUnavailable, match="not in the local Hugging Face cache; set LIVE_CAPTIONS_VLLM_"
    ):
        vllm_engine.resolve_model(default)
    local = vllm_engine.VllmSettings(model=str(tmp_path), model_from_env=True)
    assert vllm_engine.resolve_model(local) == str(tmp_path)
    missing = vllm_engine.VllmSettings(model=str(tmp_path / "nope"), model_from_env=True)
    with pytest.raises(EngineUnavailable, match="no such directory"):
        vllm_engine.resolve_model(missing)
    named = vllm_engine.VllmSettings(model="someone/some-model", model_from_env=True)
    assert vllm_engine.resolve_model(named) == "someone/some-model"


def test_vllm_names_fall_back_when_moved_but_broken_installs_are_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_dependency_pkg.py").write_text("import missing_dependency_xyz\n")
    (tmp_path / "cuda_mismatch_pkg.py").write_text("raise RuntimeError('CUDA driver too old')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = vllm_engine._first_attr(("moved_away_pkg.inner", "dumps"), ("json", "dumps"))
    assert found is json.dumps
    with pytest.raises(EngineUnavailable, match="vLLM cannot be imported: ModuleNotFoundError"):
        vllm_engine._first_attr(("broken_dependency_pkg", "x"), ("json", "dumps"))
    with pytest.raises(EngineUnavailable, match="cannot be imported: RuntimeError: CUDA driver"):
        vllm_engine._first_attr(("cuda_mismatch_pkg", "x"))
    with pytest.raises(EngineUnavailable, match=r"has no json.no_such_name; install vllm==0\.32"):
        vllm_engine._first_attr(("json", "no_such_name"))


STAND_IN_VLLM = {
    "vllm/__init__.py": "",
    "vllm/engine/__init__.py": "",
    "vllm/engine/arg_utils.py": """
class AsyncEngineArgs:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
""",
    "vllm/engine/protocol.py": """
from dataclasses import dataclass
from typing import Any

@dataclass
class StreamingInput:
    prompt: Any
    sampling_params: Any = None
""",
    "vllm/inputs/__init__.py": "TokensPrompt = dict\n",
    "vllm/sampling_params.py": """
import enum

class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2

class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
""",
    "vllm/renderers/__init__.py": "",
    "vllm/renderers/inputs/__init__.py": "",
    "vllm/renderers/inputs/preprocess.py": """
def parse_model_prompt(model_config, prompt):
    return {"parsed": prompt, "config": model_config}
""",
    "vllm/model_executor/__init__.py": "",
    "vllm/model_executor/model_loader/__init__.py": """
class VoxtralRealtimeGeneration:
    supports_realtime = True
    realtime_max_tokens = 1

def get_model_cls(model_config):
    return VoxtralRealtimeGeneration
""",
    "vllm/tokenizers/__init__.py": """
import numpy as np
from tests.test_vllm_engine import stand_in_tokenizer

def cached_tokenizer_from_config(model_config):
    pads = (np.zeros(40960, np.float32), np.zeros(21760, np.float32))
    return stand_in_tokenizer(delay_tokens=6, streaming_tokens=[32] * 38, pads=pads)
""",
    "vllm/v1/__init__.py": "",
    "vllm/v1/engine/__init__.py": "",
    "vllm/v1/engine/async_llm.py": """
import asyncio
from types import SimpleNamespace

class Renderer:
    def __init__(self):
        self.rendered = []

    async def render_cmpl_async(self, prompts, tok_params=None):
        self.rendered.append(prompts)
        return [{"type": "multimodal", "from": prompts[0]}]

class AsyncLLM:
    created = []

    def __init__(self, args):
        self.args = args
        self.model_config = SimpleNamespace(max_model_len=args.kwargs["max_model_len"])
        self.renderer = Renderer()
        self.inputs = []
        self.params = []
        self.aborted = []
        self.shut_down = False

    @classmethod
    def from_engine_args(cls, args):
        llm = cls(args)
        cls.created.append(llm)
        return llm

    async def generate(self, prompt, sampling_params, request_id):
        self.params.append(sampling_params)
        async for chunk in prompt:
            self.inputs.append(chunk)
            yield SimpleNamespace(
                outputs=[SimpleNamespace(text=" hi", token_ids=[700 + len(self.inputs)])],
                finished=False,
            )

    async def abort(self, request_id):
        self.aborted.append(request_id)

    def shutdown(self):
        self.shut_down = True
""",
}


@pytest.fixture
def stand_in_vllm(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A stand-in ``vllm`` package (the real one needs CUDA), removed again afterwards."""
    for name, text in STAND_IN_VLLM.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


async def test_start_drives_vllm_as_its_realtime_server_does(
    stand_in_vllm: None, clips: dict[str, Clip]
) -> None:
    from vllm.v1.engine.async_llm import AsyncLLM  # the stand-in

    settings = vllm_engine.VllmSettings(max_model_len=8000, max_num_seqs=3, enforce_eager=True)
    engine = vllm_engine.VllmEngine.start(settings, "/models/voxtral")
    (llm,) = AsyncLLM.created
    assert llm.args.kwargs == {
        "model": "/models/voxtral",
        "tokenizer_mode": "mistral",
        "config_format": "mistral",
        "load_format": "mistral",
        "max_model_len": 8000,
        "gpu_memory_utilization": 0.9,
        "max_num_seqs": 3,
        "enforce_eager": True,
        "compilation_config": {"cudagraph_mode": "PIECEWISE"},
        "limit_mm_per_prompt": {"audio": 1},
    }
    assert engine.spec == SPEC and engine.max_sessions == 3
    assert engine.model == vllm_settings.DEFAULT_MODEL

    samples = speech(clips["librispeech-1089-134691-0000"])
    events = await collect(engine, stream_of(chunked(samples, 12)))
    assert isinstance(events[-1], TranscriptionDone) and events[-1].text.startswith(" hi hi")
    (params,) = llm.params
    assert params.kwargs["temperature"] == 0.0 and params.kwargs["max_tokens"] == 1
    assert params.kwargs["output_kind"].name == "DELTA"
    first, second = llm.inputs[:2]
    # Each chunk: TokensPrompt -> parse_model_prompt -> render_cmpl_async -> StreamingInput.
    prompt = first.prompt["from"]["parsed"]
    assert prompt["prompt_token_ids"] == list(SPEC.prompt_tokens)
    audio, rate = prompt["multi_modal_data"]["audio"]
    assert rate is None and len(audio) == SPEC.first_core_end + SPEC.look_ahead
    assert second.prompt["from"]["parsed"]["prompt_token_ids"] == [701]  # fed back
    await engine.aclose()
    assert llm.shut_down


def test_start_shuts_vllm_down_when_the_model_cannot_stream(
    stand_in_vllm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vllm.model_executor.model_loader as loader  # the stand-in
    from vllm.v1.engine.async_llm import AsyncLLM

    with monkeypatch.context() as patch:
        patch.setattr(loader.VoxtralRealtimeGeneration, "supports_realtime", False)
        with pytest.raises(EngineUnavailable, match="is not a realtime speech model"):
            vllm_engine.VllmEngine.start(vllm_engine.VllmSettings(), "/models/other")
    with pytest.raises(EngineUnavailable, match="cannot stream it: ValueError: max_model_len 20"):
        vllm_engine.VllmEngine.start(vllm_engine.VllmSettings(max_model_len=20), "/m")
    assert [llm.shut_down for llm in AsyncLLM.created] == [True, True]
