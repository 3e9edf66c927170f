"""Greedy Whisper decoding of short windows, many at once (the worker thread's side)."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from components.core.languages import ISO_639_1
from components.core.protocol import (
    SAMPLE_RATE,
)
from components.engines.whisper.policy import (
    Hypothesis,
    Piece,
)

_Number = TypeVar("_Number", int, float)
"""A TypeVar, not PEP 695 syntax: the engines also import under Python 3.11 (vLLM's CPU build)."""

log = logging.getLogger(__name__)

ENCODER_POSITIONS = 1500
"""Whisper's encoder output length for its 30-second input."""
FRAMES_PER_SECOND = 100
"""Log-mel frames per second of audio (Whisper's hop of 160 samples at 16 kHz)."""
PAD_SECONDS = 1.0
"""Padding encoded with a window (then the precomputed all-padding output follows)."""
SHARED_PAD_SECONDS = 0.5
"""The same while several streams share the engine: less to encode for every step."""
ENCODE_QUANTUM = 0.5
"""Encoder inputs are whole multiples of this many seconds (see ``WhisperDecoder.encode``)."""
MIN_SHARED_PROMPT = 16
"""Prompts at least this long are shortened to a common length so their decodes batch."""
_ELLIPSIS = re.compile(r"\.{2,}|\u2026")
TOKENS_PER_WORD = 2
"""Tokens allowed per expected word (English averages about 1.3 with tiny.en's vocabulary)."""


def without_ellipses(text: str) -> str:
    """Text given to the decoder, with its trailing-off marks ("the...") taken out.

    tiny.en writes "..." where a speaker hesitates. Forced back into the decoder as committed
    text, "the..." makes it go on with "the...the...the..." for as long as it may (seen on
    the evaluation set played back to back: ten seconds of speech lost to it).
    """
    return " ".join(_ELLIPSIS.sub(" ", text).split())


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
    """Padding (s) encoded after the audio."""
    whole: bool = False
    """The audio ends with its speech (a phrase, a stream's end): padded as offline."""
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


@dataclass(slots=True)
class Tally:
    """What one group of decodes did (counted on its own thread, added up by the caller)."""

    calls: int = 0
    items: int = 0
    forced_tokens: int = 0
    context_tokens: int = 0
    completion_tokens: int = 0
    excess_tokens: int = 0
    audio_encoded: float = 0.0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"encode": 0.0, "generate": 0.0, "align": 0.0}
    )


def split_work(costs: list[float], parts: int) -> list[list[int]]:
    """Indices of ``costs`` in at most ``parts`` groups of about equal total cost.

    The costliest item goes to the group with the least so far (a longest-first greedy),
    ties to the earlier group, so the same items always split the same way (a fixed schedule
    replays word for word). Each group keeps its items in their order.
    """
    parts = max(1, min(parts, len(costs)))
    loads = [0.0] * parts
    groups: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        g = min(range(parts), key=lambda g: (loads[g], g))
        groups[g].append(i)
        loads[g] += costs[i]
    return [sorted(g) for g in groups if g]


def decode_cost(item: DecodeItem) -> float:
    """A decode's expected time, in units of a short decode: the generate call's fixed cost
    plus the encoder's, which grows with the window (a lone decode of 15 s took 1.6-1.7 times
    as long as one of 4 s, measured; the split needs only the order right)."""
    return 1.0 + len(item.audio) / SAMPLE_RATE / 10


class WhisperDecoder:
    """Greedy Whisper decoding of short windows, many at once.

    ``decode`` is called from one thread at a time (the scheduler's worker). With ``workers``
    above one, the model holds that many replicas (CTranslate2's ``inter_threads``) and a call's
    decodes are split into as many groups, decoded side by side on a small thread pool: on two
    cores, tiny.en's decodes barely use a second thread inside one call (six decodes took
    0.75 s with two threads in one call, 0.47 s as two calls of three on one thread each).
    """

    def __init__(
        self,
        model: object,
        *,
        language: str = "en",
        beam_size: int = 1,
        terms_placement: str = "lead",
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(workers - 1, thread_name_prefix="whisper-decode")
            if workers > 1
            else None
        )
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
        silence = self._features(np.zeros(30 * SAMPLE_RATE, np.float32))
        self._silence = self._encode_frames(silence)[0]
        """Encoder output for 30 s of silent audio (what follows a window cut mid-speech)."""
        self._blank = self._encode_frames(np.zeros_like(silence))[0]
        """Encoder output for 30 s of zero frames (what follows a whole phrase)."""
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
        """Log-mel frames of ``audio`` (an even number of them, at most 30 s)."""
        feats = self.model.feature_extractor(audio.astype(np.float32, copy=False), padding=0)  # type: ignore[attr-defined]
        return feats[:, : min(feats.shape[-1] // 2 * 2, 2 * ENCODER_POSITIONS)]

    def _encode_frames(self, feats: np.ndarray) -> np.ndarray:
        storage = self._ct2.StorageView.from_array(np.ascontiguousarray(feats[None]))
        return np.asarray(self.model.model.encode(storage, to_cpu=False))  # type: ignore[attr-defined]

    def encode(
        self, audio: np.ndarray, pad: float = PAD_SECONDS, *, whole: bool = False
    ) -> np.ndarray:
        """Encoder output for ``audio`` (at most ~28 s), completed to Whisper's 30 s.

        Only the audio and at least ``pad`` seconds after it go through the encoder; the
        positions after them take the output of an input of nothing but padding, computed
        once. What the padding is depends on the audio:

        * audio cut off mid-speech (an agreement step) is followed by silent audio, which
          marks where the speech stops;
        * ``whole`` audio (a phrase, a stream's end, a backlog window ending in a pause) is
          padded as the engine's offline transcript pads it: with zero frames after its
          log-mel. A window holding whole phrases then reads as the offline transcript reads
          it: a backlog of the evaluation set came out at 1.00 times the offline WER
          (1.08 times padded with silent audio), while agreement steps padded this way
          came out 5-13 % worse.

        The encoded length is rounded up to a whole ``ENCODE_QUANTUM``: the encoder keeps
        working memory for every input length it has seen, and a live stream's windows come
        in every length. Unrounded, one real-time session grew the process by 300 MB in six
        minutes and never gave it back (measured: 400 windows of random lengths, 269 -> 580
        MB; rounded to whole seconds, 279 MB flat).
        """
        quantum = round(ENCODE_QUANTUM * SAMPLE_RATE)
        total = -(-(len(audio) + round(pad * SAMPLE_RATE)) // quantum) * quantum
        if not whole:
            padded = np.concatenate([audio, np.zeros(total - len(audio), np.float32)])
            head = self._encode_frames(self._features(padded))[0]
            return np.concatenate([head, self._silence[len(head) :]], axis=0)
        # As faster-whisper's transcribe: the last (partial) frame left out, zeros after.
        feats = self.model.feature_extractor(audio.astype(np.float32, copy=False))  # type: ignore[attr-defined]
        feats = feats[:, : min(feats.shape[-1] - 1, 2 * ENCODER_POSITIONS)]
        frames = min(total * FRAMES_PER_SECOND // SAMPLE_RATE, 2 * ENCODER_POSITIONS)
        padded = np.zeros((feats.shape[0], max(frames, feats.shape[-1])), np.float32)
        padded[:, : feats.shape[-1]] = feats
        head = self._encode_frames(padded)[0]
        return np.concatenate([head, self._blank[len(head) :]], axis=0)

    def prompt_tokens(self, item: DecodeItem) -> tuple[list[int], list[int], int]:
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
        """One hypothesis per item, in order.

        The items are split into up to ``workers`` groups decoded side by side (the calling
        thread takes the first); within a group, items with prompts of a shared length decode
        as a batch. A decode's text depends on what it is batched with (contexts are shortened
        to a common length), so the split depends on the items alone.
        """
        if not items:
            return []
        groups = split_work([decode_cost(item) for item in items], self.workers)
        tallies = [Tally() for _ in groups]
        pool = self._pool
        futures: list[Future[list[Hypothesis]]] = []
        if pool is not None:
            futures = [
                pool.submit(self._decode_group, [items[i] for i in group], tally)
                for group, tally in zip(groups[1:], tallies[1:], strict=True)
            ]
        try:
            results = [self._decode_group([items[i] for i in groups[0]], tallies[0])]
            if pool is None:  # closed: the same groups, one after another
                results += [
                    self._decode_group([items[i] for i in group], tally)
                    for group, tally in zip(groups[1:], tallies[1:], strict=True)
                ]
        finally:
            wait(futures)  # no decode outlives its call, even when one group failed
            for tally in tallies:
                self._count(tally)
        results += [f.result() for f in futures]
        out: list[Hypothesis | None] = [None] * len(items)
        for group, hypotheses in zip(groups, results, strict=True):
            for i, hypothesis in zip(group, hypotheses, strict=True):
                out[i] = hypothesis
        return [h for h in out if h is not None]

    def _count(self, tally: Tally) -> None:
        self.calls += tally.calls
        self.items += tally.items
        self.forced_tokens += tally.forced_tokens
        self.context_tokens += tally.context_tokens
        self.completion_tokens += tally.completion_tokens
        self.excess_tokens += tally.excess_tokens
        self.audio_encoded += tally.audio_encoded
        for stage, seconds in tally.seconds.items():
            self.seconds[stage] += seconds

    def _decode_group(self, items: list[DecodeItem], tally: Tally) -> list[Hypothesis]:
        started = time.perf_counter()
        encoded = [self.encode(item.audio, item.pad, whole=item.whole) for item in items]
        tally.audio_encoded += sum(len(item.audio) for item in items) / SAMPLE_RATE
        tally.seconds["encode"] += time.perf_counter() - started
        out: list[Hypothesis | None] = [None] * len(items)
        for i, item in enumerate(items):
            if item.align:
                out[i] = Hypothesis((), spans=self._spans(encoded[i], item, tally))
        decoding = [i for i, item in enumerate(items) if not item.align]
        self._generate(
            [items[i] for i in decoding], [encoded[i] for i in decoding], decoding, out, tally
        )
        return [h for h in out if h is not None]

    def close(self) -> None:
        """Stop the pool's threads; later calls decode on the calling thread alone."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _generate(
        self,
        items: list[DecodeItem],
        encoded: list[np.ndarray],
        places: list[int],
        out: list[Hypothesis | None],
        tally: Tally,
    ) -> None:
        """Decode ``items`` into ``out`` at ``places``, batching those that can share a call."""
        prompts = [self.prompt_tokens(item) for item in items]
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
            tally.calls += 1
            tally.items += len(members)
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
            tally.seconds["generate"] += time.perf_counter() - started
            for i, result in zip(members, results, strict=True):
                forced = prompts[i][1]
                tally.forced_tokens += len(forced)
                tally.context_tokens += size
                tokens: list[int] = list(result.sequences_ids[0])
                if tokens[: len(forced)] == forced:
                    tokens = tokens[len(forced) :]
                limit = items[i].max_new_tokens
                if len(tokens) > limit:
                    # The same hypothesis whatever the decode was batched with.
                    tally.excess_tokens += len(tokens) - limit
                    tokens = tokens[:limit]
                hypothesis = self._hypothesis(result, tokens, tally)
                if items[i].locate_end and hypothesis.pieces and hypothesis.pieces[-1].end is None:
                    # Where the open text's last word ends in the audio.
                    text = [t for t in forced[1:] + tokens if t < self.tokenizer.eot]
                    spoken = (
                        self._aligned_words(
                            encoded[i], text, len(items[i].audio), items[i].language, tally
                        )
                        if text
                        else []
                    )
                    end = float(spoken[-1]["end"]) if spoken else None
                    hypothesis = dataclasses.replace(hypothesis, text_end=end)
                out[places[i]] = hypothesis

    def _spans(
        self, encoded: np.ndarray, item: DecodeItem, tally: Tally
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
        for word in self._aligned_words(encoded, tokens, len(item.audio), item.language, tally):
            if word["word"].startswith(" ") or not spans:
                spans.append([float(word["start"]), float(word["end"])])
            else:
                spans[-1][1] = float(word["end"])
        if len(spans) != len(text.split()):
            return None
        return tuple((a, b) for a, b in spans)

    def _hypothesis(self, result: object, tokens: list[int], tally: Tally) -> Hypothesis:
        n = len(tokens)
        tally.completion_tokens += n
        score = float(result.scores[0]) if result.scores else 0.0  # type: ignore[attr-defined]
        avg_logprob = score * n / (n + 1) if n else 0.0
        return Hypothesis(
            pieces=self.pieces(tokens),
            no_speech_prob=float(result.no_speech_prob),  # type: ignore[attr-defined]
            avg_logprob=avg_logprob,
        )

    def _aligned_words(
        self,
        encoded: np.ndarray,
        text: list[int],
        samples: int,
        language: str | None,
        tally: Tally,
    ) -> list[dict]:
        """The spoken words of ``text`` with their times (s) in the window, from
        cross-attention alignment (as faster-whisper finds word timestamps)."""
        started = time.perf_counter()
        storage = self._ct2.StorageView.from_array(np.ascontiguousarray(encoded[None]))
        frames = max(2, samples // self.model.feature_extractor.hop_length)  # type: ignore[attr-defined]
        tokenizer = self._tokenizers.get(language) or self.tokenizer
        words = self.model.find_alignment(tokenizer, [text], storage, frames)[0]  # type: ignore[attr-defined]
        tally.seconds["align"] += time.perf_counter() - started
        return [w for w in words if w["tokens"] and max(w["tokens"]) < self.tokenizer.eot]

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
