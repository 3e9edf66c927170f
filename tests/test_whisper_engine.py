"""The embedded engine with the real bundled model on real speech (no timings asserted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from components.core.audio import load_file
from components.core.evaluation import Clip, wer
from components.core.protocol import (
    NO_OPTIONS,
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    SessionOptions,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
)
from components.engines.base import Engine, EngineError, EngineUnavailable
from components.engines.whisper.decoder import DecodeItem, WhisperDecoder, without_ellipses
from components.engines.whisper.engine import WhisperEngine
from components.engines.whisper.fixed_steps import run_fixed_steps
from components.engines.whisper.vad import VadStream

CHUNK = 1600  # 100 ms


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    """One loaded model for the whole module (each test runs on its own event loop)."""
    built = WhisperEngine(cpu_threads=2)
    yield built
    asyncio.run(built.aclose())


async def chunks(
    audio: np.ndarray, *, pace: float = 4.0, chunk: int = CHUNK
) -> AsyncIterator[np.ndarray]:
    """Audio in 100 ms pieces at ``pace`` x real time (0: as fast as taken)."""
    for i in range(0, len(audio), chunk):
        yield audio[i : i + chunk]
        if pace:
            await asyncio.sleep(chunk / SAMPLE_RATE / pace)


async def run(
    engine: WhisperEngine,
    audio: np.ndarray,
    *,
    partials: bool = False,
    pace: float = 4.0,
    options: SessionOptions = NO_OPTIONS,
) -> tuple[str, list[object]]:
    stream = engine.transcribe(chunks(audio, pace=pace), partials=partials, options=options)
    events = [e async for e in stream]
    text = "".join(e.delta for e in events if isinstance(e, TranscriptionDelta))
    return text, events


def test_engine_meets_the_interface(engine: WhisperEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.model == "whisper-tiny.en"
    assert "tiny.en" in engine.name
    assert engine.max_sessions >= 1
    assert engine.languages == ("en",) and engine.takes_prompt


# Clips where the bundled model misspells a name, the misspelling, and the name.
MISHEARD = [
    ("librispeech-1221-135766-0002", "Hester Prin ", "Hester Prynne"),
    ("vbdemand-noisy-p257-001", "Stala", "Stella"),
]


@pytest.mark.parametrize(("clip_id", "heard", "name"), MISHEARD)
async def test_a_prompt_spells_the_name_and_no_prompt_changes_nothing(
    engine: WhisperEngine, clips: dict[str, Clip], clip_id: str, heard: str, name: str
) -> None:
    audio = load_file(str(clips[clip_id].path))
    plain, _ = await run(engine, audio)
    assert heard in plain + " ", plain  # what the model hears on its own, as before
    # Blank options are no options: the same misspelling (word for word equality is not
    # asserted, as a paced stream's decode schedule follows the wall clock).
    blank, _ = await run(engine, audio, options=SessionOptions.checked(language="en", prompt=" "))
    assert heard in blank + " ", blank
    # Unpaced, so that the decode schedule does not follow the wall clock (the schedules on
    # which the decoder loops on the prompt's last word are the next test's).
    prompted, _ = await run(engine, audio, pace=0, options=SessionOptions(prompt=f"{name}, Boston"))
    assert name in prompted, prompted
    assert wer(clips[clip_id].text, prompted) < wer(clips[clip_id].text, plain)


def test_a_loop_on_the_last_term_is_not_taken_for_speech(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    """With the prompt "Hester Prynne, Boston", the first decodes of this clip (a fifth of a
    second of silence, then "Yet these thoughts ...") say "Boston, Boston, ..." over and over,
    on a fixed schedule of 0.4 s steps with previews as on a page. The loop guard kept the
    first "Boston,", and two such decodes committed it: the captions began with a word
    nobody said."""
    clip = clips[MISHEARD[0][0]]
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 5, np.float32), load_file(str(clip.path))])
    options = SessionOptions(prompt="Hester Prynne, Boston")
    ((stream,), _) = run_fixed_steps(engine, [audio], 0.4, options, previews=True)
    assert "Boston" not in stream.text, stream.text
    assert stream.text.lower().startswith("yet these thoughts affected hester prynne")


async def test_terms_survive_a_shared_batch(engine: WhisperEngine, clips: dict[str, Clip]) -> None:
    """Two streams decode together, one with terms: the batch shortens contexts to a common
    length, and the terms must not be what is cut."""
    clip_id, _, name = MISHEARD[0]
    audio = load_file(str(clips[clip_id].path))
    other = load_file(str(clips["librispeech-1089-134686-0000"].path))
    (prompted, _), _ = await asyncio.gather(
        run(engine, audio, options=SessionOptions(prompt=name)), run(engine, other)
    )
    assert name in prompted, prompted


async def test_unsupported_options_are_engine_errors(engine: WhisperEngine) -> None:
    with pytest.raises(EngineError) as info:
        await run(engine, np.zeros(1600, np.float32), options=SessionOptions(language="fr"))
    assert info.value.code == "unsupported_language"
    assert "French (fr)" in info.value.message and "only en (English)" in info.value.message


def test_terms_are_kept_when_a_context_is_shortened(engine: WhisperEngine) -> None:
    decoder = engine.decoder
    item = DecodeItem(np.zeros(1), "word " * 100, "", terms="Hester Prynne")
    context, _, keep = decoder.prompt_tokens(item)
    terms = decoder.tokenizer.encode(" Hester Prynne")
    assert context[1 : 1 + len(terms)] == terms and keep == 1 + len(terms)
    short = decoder._shorten(context, keep, 20)
    assert len(short) == 20 and short[:keep] == context[:keep] and short[-1] == context[-1]


@pytest.mark.parametrize(
    "clip_id", ["jfk", "librispeech-1089-134686-0000", "librispeech-1995-1837-0001"]
)
async def test_streamed_clip_is_transcribed_accurately(
    engine: WhisperEngine, clips: dict[str, Clip], clip_id: str
) -> None:
    clip = clips[clip_id]
    audio = load_file(str(clip.path))
    text, events = await run(engine, audio)
    done = events[-1]
    assert isinstance(done, TranscriptionDone)
    assert done.text == text  # the deltas add up to the final transcript
    assert all(not isinstance(e, TranscriptionDone) for e in events[:-1])
    assert wer(clip.text, text) <= 0.35, text
    assert done.usage is not None
    assert done.usage.prompt_tokens == len(audio) * 50 // SAMPLE_RATE
    assert done.usage.completion_tokens > 0
    assert engine.scheduler.active == 0


async def test_silence_gives_no_text(engine: WhisperEngine) -> None:
    rng = np.random.default_rng(1)
    quiet = (rng.standard_normal(SAMPLE_RATE * 6) * 0.002).astype(np.float32)
    text, events = await run(engine, quiet, pace=0)
    assert text == ""
    assert events == [events[-1]] and isinstance(events[-1], TranscriptionDone)
    assert events[-1].text == ""


async def test_concurrent_streams_each_get_their_own_text(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    a, b = clips["jfk"], clips["librispeech-1089-134686-0000"]
    (text_a, _), (text_b, _) = await asyncio.gather(
        run(engine, load_file(str(a.path))), run(engine, load_file(str(b.path)))
    )
    assert wer(a.text, text_a) <= 0.35, text_a
    assert wer(b.text, text_b) <= 0.35, text_b
    assert "dinner" not in text_a.lower() and "americans" not in text_b.lower()


async def test_partials_only_when_asked(engine: WhisperEngine, clips: dict[str, Clip]) -> None:
    audio = load_file(str(clips["librispeech-1089-134691-0001"].path))
    _, with_partials = await run(engine, audio, partials=True)
    _, without = await run(engine, audio, partials=False)
    assert any(isinstance(e, TranscriptionPartial) for e in with_partials)
    assert not any(isinstance(e, TranscriptionPartial) for e in without)


async def test_a_backlog_is_worked_through_in_bounded_windows(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    ids = ["librispeech-1221-135766-0001", "librispeech-2412-153948-0000", "jfk"]
    parts = [load_file(str(clips[i].path)) for i in ids]
    audio = np.concatenate([np.concatenate([p, np.zeros(8000, np.float32)]) for p in parts])
    text, events = await run(engine, audio, pace=0)  # 40 s handed over at once
    reference = " ".join(clips[i].text for i in ids)
    assert wer(reference, text) <= 0.35, text
    assert isinstance(events[-1], TranscriptionDone)


async def test_cancelling_the_reader_releases_the_stream(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["mfa-acoustic-corpus"].path))
    source_closed = asyncio.Event()
    first_text = asyncio.Event()

    async def source() -> AsyncIterator[np.ndarray]:
        try:
            async for piece in chunks(audio, pace=4.0):
                yield piece
        finally:
            source_closed.set()

    async def read() -> None:
        async for event in engine.transcribe(source()):
            if isinstance(event, TranscriptionDelta):
                first_text.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(first_text.wait(), 120)
    assert engine.scheduler.active == 1
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert engine.scheduler.active == 0
    await asyncio.wait_for(source_closed.wait(), 10)


async def test_a_failing_audio_source_is_an_engine_error(engine: WhisperEngine) -> None:
    async def broken() -> AsyncIterator[np.ndarray]:
        yield np.zeros(CHUNK, np.float32)
        raise OSError("microphone unplugged")

    with pytest.raises(EngineError) as caught:
        async for _ in engine.transcribe(broken()):
            pass
    assert "microphone unplugged" in caught.value.message
    assert engine.scheduler.active == 0


async def test_overload_warning_is_non_fatal_and_rate_limited(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["jfk"].path))
    saved = engine.scheduler.overload_lag
    engine.scheduler.overload_lag = 0.0  # every round counts as late
    try:
        text, events = await run(engine, audio, pace=4.0)
    finally:
        engine.scheduler.overload_lag = saved
    warnings = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(warnings) == 1  # one per warn_interval (20 s) at most
    assert warnings[0].code == str(ErrorCode.OVERLOADED)
    assert isinstance(events[-1], TranscriptionDone)
    assert wer(clips["jfk"].text, text) <= 0.35


def test_voice_detection_is_the_same_in_pieces_and_whole(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["mfa-cold-corpus"].path))
    whole = VadStream(engine.vad_model)
    whole.feed(audio)
    pieces = VadStream(engine.vad_model)
    seen = []
    for i in range(0, len(audio), 1234):
        seen.append(pieces.feed(audio[i : i + 1234]))
    assert whole.last_voice is not None and pieces.last_voice == whole.last_voice
    assert seen[0] is None or seen[0] <= seen[-1]  # only ever moves forward
    quiet = VadStream(engine.vad_model)
    assert quiet.feed(np.zeros(SAMPLE_RATE * 3, np.float32)) is None


def test_voice_detection_tells_where_speech_begins(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    speech = load_file(str(clips["jfk"].path))
    audio = np.concatenate([np.zeros(SAMPLE_RATE * 2, np.float32), speech])
    vad = VadStream(engine.vad_model)
    starts: list[float] = []
    for i in range(0, len(audio), CHUNK):
        vad.feed(audio[i : i + CHUNK])
        starts += vad.starts
    assert starts == sorted(starts) and len(starts) > 3  # Kennedy pauses between phrases
    assert 2.0 <= starts[0] < 2.0 + 1.0  # he begins at once
    assert vad.last_voice is not None and starts[-1] < vad.last_voice


def test_voice_detection_hears_a_new_speaker_after_a_long_recording(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    first = load_file(str(clips["mfa-acoustic-corpus"].path))
    second = load_file(str(clips["mfa-cold-corpus"].path))[: SAMPLE_RATE * 8]
    audio = np.concatenate([first, np.zeros(SAMPLE_RATE // 2, np.float32), second])
    vad = VadStream(engine.vad_model)
    for i in range(0, len(audio), SAMPLE_RATE // 2):
        vad.feed(audio[i : i + SAMPLE_RATE // 2])
    # The second speaker talks from about 2 s in; a state carried over from the first
    # recording (no reset) stays deaf to them until well after these 8 s.
    assert vad.last_voice is not None
    assert vad.last_voice > len(first) / SAMPLE_RATE + 0.5 + 4.0


def test_short_window_encoding_completes_whisper_context(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["jfk"].path))[: SAMPLE_RATE * 4]
    encoded = engine.decoder.encode(audio)
    assert encoded.shape == (1500, engine.decoder._silence.shape[1])
    # Past the window (4 s + 1 s of padding = 250 positions) sits the encoded silence.
    np.testing.assert_array_equal(encoded[300:], engine.decoder._silence[300:])


def test_a_whole_phrase_is_padded_as_the_offline_transcript_pads_it(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    # faster-whisper's transcribe (the offline bar) encodes the log-mel without its last
    # frame, zero frames after it; a whole phrase encoded in full must see the same input.
    import ctranslate2
    from faster_whisper.audio import pad_or_trim

    audio = load_file(str(clips["jfk"].path))[: SAMPLE_RATE * 4]
    model = engine.decoder.model
    feats = model.feature_extractor(audio)  # type: ignore[attr-defined]
    offline_input = np.ascontiguousarray(pad_or_trim(feats[:, :-1])[None])
    offline = model.model.encode(ctranslate2.StorageView.from_array(offline_input), to_cpu=False)  # type: ignore[attr-defined]
    whole = engine.decoder.encode(audio, pad=30.0, whole=True)
    np.testing.assert_allclose(whole, np.asarray(offline)[0], atol=1e-4)
    # Audio cut off mid-speech is followed by silent audio instead: another input.
    cut = engine.decoder.encode(audio, pad=30.0)
    assert not np.allclose(cut, whole, atol=1e-2)


def test_new_text_is_bounded_by_the_expected_words_whatever_the_batch(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["jfk"].path))[: SAMPLE_RATE * 6]
    free = DecodeItem(audio, "", "")
    bounded = DecodeItem(audio, "", "", max_words=2)
    assert bounded.max_new_tokens == 2 * 2 + 4 < free.max_new_tokens
    # One replica decodes both: they share a batch (two would decode them side by side).
    decoder = WhisperDecoder(engine.decoder.model, workers=1)
    (alone,) = decoder.decode([bounded])
    whole, batched = decoder.decode([free, bounded])
    assert decoder.calls == 2
    words = lambda h: " ".join(p.text for p in h.pieces).split()  # noqa: E731
    # Every word costs a token at least; six seconds of Kennedy hold more than eight words.
    assert 0 < len(words(alone)) <= bounded.max_new_tokens < len(words(whole))
    # Batched with a decode that may go on, it still stops at its own limit.
    assert words(batched) == words(alone)
    assert words(whole)[: len(words(alone))] == words(alone)


def test_committed_words_are_found_in_the_audio(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    audio = load_file(str(clips["jfk"].path))
    text = "And so, my fellow Americans, ask not what your country can do for you."
    (found,) = engine.decoder.decode([DecodeItem(audio, "", text, align=True)])
    assert found.pieces == ()  # nothing generated
    assert found.spans is not None and len(found.spans) == len(text.split())
    starts = [a for a, _ in found.spans]
    assert starts == sorted(starts)
    assert all(a <= b <= len(audio) / SAMPLE_RATE for a, b in found.spans)
    # "ask" comes after the long pause that follows "Americans" (near 4 s).
    ask = text.split().index("ask")
    assert found.spans[ask - 1][1] <= found.spans[ask][0]
    assert 3.0 < found.spans[ask][0] < 5.0


def test_ellipses_are_not_forced_back_into_the_decoder(engine: WhisperEngine) -> None:
    assert without_ellipses("So this is the...") == "So this is the"
    assert without_ellipses("the...is it \u2026 so") == "the is it so"
    _, forced, _ = engine.decoder.prompt_tokens(DecodeItem(np.zeros(1), "", "So this is the..."))
    assert engine.decoder.tokenizer.decode(forced[1:]) == " So this is the"


def test_numpy_blas_leaves_the_cores_to_the_decoder(engine: WhisperEngine) -> None:
    from threadpoolctl import threadpool_info

    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas, "numpy links a BLAS library"
    assert all(pool["num_threads"] == 1 for pool in blas)


def test_timestamp_tokens_split_pieces(engine: WhisperEngine) -> None:
    tok = engine.decoder.tokenizer

    def stamp(seconds: float) -> int:
        return tok.timestamp_begin + round(seconds / 0.02)

    tokens = [
        *tok.encode(" not what"),
        stamp(2.0),
        stamp(2.2),
        *tok.encode(" your country"),
        stamp(3.4),
        tok.eot,
    ]
    pieces = engine.decoder.pieces(tokens)
    assert [(p.text, p.start, p.end) for p in pieces] == [
        (" not what", None, 2.0),
        (" your country", 2.2, 3.4),
    ]
    open_end = engine.decoder.pieces([*tok.encode(" ask"), stamp(1.0), stamp(1.0), 11])
    assert open_end[-1].end is None and open_end[-1].start == 1.0


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_CPU_THREADS", "many")
    with pytest.raises(EngineUnavailable, match="WHISPER_CPU_THREADS"):
        WhisperEngine.from_env()
    monkeypatch.setenv("WHISPER_CPU_THREADS", "1")
    monkeypatch.setenv("WHISPER_MAX_SESSIONS", "5")
    monkeypatch.setenv("WHISPER_STEP", "0.75")
    monkeypatch.setenv("WHISPER_UNSURE_SPAN", "0")
    with pytest.raises(EngineUnavailable, match="unsure_span"):
        WhisperEngine.from_env()
    monkeypatch.setenv("WHISPER_UNSURE_SPAN", "2")
    monkeypatch.setenv("WHISPER_WORKERS", "-1")
    with pytest.raises(EngineUnavailable, match="workers"):
        WhisperEngine.from_env()
    monkeypatch.setenv("WHISPER_WORKERS", "3")
    monkeypatch.setenv("WHISPER_SHARED_WINDOWS", "huge")
    with pytest.raises(EngineUnavailable, match="WHISPER_SHARED_WINDOWS"):
        WhisperEngine.from_env()
    monkeypatch.setenv("WHISPER_SHARED_WINDOWS", "long")
    monkeypatch.setenv("WHISPER_MODEL", "/nonexistent/model-dir")
    with pytest.raises(EngineUnavailable, match="nonexistent"):
        WhisperEngine.from_env()
    monkeypatch.delenv("WHISPER_MODEL")
    configured = WhisperEngine.from_env()
    try:
        assert configured.max_sessions == 5
        assert configured.policy.min_step == 0.75
        assert configured.policy.unsure_span == 2.0
        assert configured.model == "whisper-tiny.en"
        assert configured.decoder.workers == 3
        # Shared sessions keep a lone stream's windows (for a machine with cores to spare).
        assert configured.shared_policy.trim_at == configured.policy.trim_at
    finally:
        asyncio.run(configured.aclose())
