"""Shared parts of the streaming benchmarks: reference word times, real-time replay, lag figures.

Word lag is what a viewer feels: the time from the moment a word's audio has been sent (replayed
at real-time pace, chunk by chunk, as a microphone would) to the arrival of the delta that
contains it. Word end times come from the same model run offline over the whole clip with word
timestamps; streamed words are matched to those words by a word-level alignment, so the figure
needs no agreement between the two transcripts beyond the words they share.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.backends.play import play  # noqa: E402
from components.core.audio import float_to_pcm16, load_file  # noqa: E402
from components.core.evaluation import Clip, corpus_wer, load_clips, normalize  # noqa: E402
from components.core.protocol import (  # noqa: E402
    SAMPLE_RATE,
    ErrorEvent,
)

ANCHORS = {
    # PERFORMANCE.md: ufal whisper_streaming LocalAgreement-2, 1.0 s chunks + VAD, tiny.en.
    "la2_1s_vad": {"wer": 0.077, "first_emission_s": 2.60, "lag_p50_s": 1.79, "lag_p95_s": 4.19},
    "offline_beam5_wer": 0.067,
    "offline_beam1_wer": 0.075,
}
TARGETS = {"wer_ratio": 1.15, "lag_p50_s": 1.5, "lag_p95_s": 2.5, "sessions": 3}


@dataclass
class Reference:
    """A clip with the model's own offline transcript and word end times (s)."""

    clip: Clip
    audio: np.ndarray
    offline_text: str
    offline_beam5_text: str | None
    words: list[tuple[str, float]]  # normalised word, end time


@dataclass
class Replay:
    """What one streamed clip (or a concatenation) produced, with timings."""

    text: str = ""
    done_text: str | None = None
    deltas: list[tuple[float, str]] = field(default_factory=list)  # (arrival, delta)
    sent: list[tuple[float, float]] = field(default_factory=list)  # (audio end s, sent at)
    start: float = 0.0
    errors: list[ErrorEvent] = field(default_factory=list)

    def first_delta(self) -> float | None:
        return self.deltas[0][0] - self.start if self.deltas else None


def offline_segments(
    model: Any, audio: np.ndarray, beam_size: int = 1, **options: Any
) -> list[Any]:
    """``model``'s offline transcription of ``audio``: greedy (or beam) without temperature
    fallback, no voice filter and, unless ``options`` say otherwise, no previous text as
    context (a clip is shorter than Whisper's 30 s window).

    ``model`` is a ``faster_whisper.WhisperModel``.
    """
    settings: dict[str, Any] = {
        "beam_size": beam_size,
        "temperature": 0.0,
        "vad_filter": False,
        "condition_on_previous_text": False,
    }
    segments, _ = model.transcribe(audio, **(settings | options))
    return list(segments)


def joined(segments: list[Any]) -> str:
    """The text of offline segments."""
    return " ".join(s.text.strip() for s in segments)


def references(clips: list[Clip], model: Any, *, beam5: bool = True) -> list[Reference]:
    """Offline transcripts (beam 1, and beam 5 if asked) and word end times from ``model``,
    each clip decoded alone, over the whole clip (:func:`offline_segments`)."""
    out = []
    for clip in clips:
        audio = load_file(str(clip.path))
        segments = offline_segments(model, audio, 1, word_timestamps=True)
        words: list[tuple[str, float]] = []
        for s in segments:
            for w in s.words or []:
                for norm in normalize(w.word):
                    words.append((norm, float(w.end)))
        text5 = joined(offline_segments(model, audio, 5)) if beam5 else None
        out.append(Reference(clip, audio, joined(segments), text5, words))
    return out


def offline_model() -> Any:
    from faster_whisper import WhisperModel

    from components.engines.whisper.engine import bundled_model_path

    path = os.environ.get("WHISPER_MODEL", "").strip() or str(bundled_model_path())
    return WhisperModel(path, device="cpu", compute_type="int8")


def _references_job(clip_ids: list[str], beam5: bool) -> list[Reference]:
    wanted = set(clip_ids)
    return references([c for c in load_clips() if c.id in wanted], offline_model(), beam5=beam5)


def _offline_job(audios: list[np.ndarray]) -> list[str]:
    model = offline_model()
    return [
        joined(offline_segments(model, audio, condition_on_previous_text=True)) for audio in audios
    ]


def _apart(job: Any, *args: Any) -> Any:
    """``job(*args)`` in a child process with its own copy of the model: the benchmark
    process then holds only the engine under test, so its memory figures are the engine's."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(job, *args).result()


def references_apart(clips: list[Clip], *, beam5: bool = True) -> list[Reference]:
    """:func:`references`, computed in a child process (see :func:`_apart`)."""
    return _apart(_references_job, [c.id for c in clips], beam5)


def offline_texts_apart(audios: list[np.ndarray]) -> list[str]:
    """The offline transcript of each recording as a whole (beam 1), in a child process.

    A stream of clips back to back is one recording: offline, Whisper reads it in 30 s
    windows across the clips' seams, as a live stream hears them, each window with the text
    of the one before as context (Whisper's own long-form decoding; without that context the
    tiny model loses whole sentences at window edges: WER 0.079-0.093 against 0.054-0.062
    on the six capacity sessions). The clips' own offline transcripts (each decoded alone,
    from a clean start) are a different input.
    """
    return _apart(_offline_job, audios)


def concatenate(refs: list[Reference], gap: float = 0.5) -> Reference:
    """One long recording of all clips, ``gap`` seconds of silence apart."""
    pieces: list[np.ndarray] = []
    words: list[tuple[str, float]] = []
    texts, offline = [], []
    offset = 0.0
    silence = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    for ref in refs:
        pieces += [ref.audio, silence]
        words += [(w, end + offset) for w, end in ref.words]
        texts.append(ref.clip.text)
        offline.append(ref.offline_text)
        offset += len(ref.audio) / SAMPLE_RATE + gap
    audio = np.concatenate(pieces)
    clip = Clip("concatenated", Path("-"), " ".join(texts), len(audio) / SAMPLE_RATE, "mixed")
    return Reference(clip, audio, " ".join(offline), None, words)


async def replay(
    stream: Any,
    audio: np.ndarray,
    *,
    pace: float = 1.0,
    chunk_ms: int = 100,
    on_sent: Any = None,
) -> Replay:
    """Send ``audio`` in chunks at ``pace`` x real time while reading events; time everything.

    ``pace`` 0 sends as fast as the stream accepts. The stream must be freshly opened.
    ``on_sent(seconds)`` is called after each chunk with the audio time sent so far.
    """
    played = await play(
        stream,
        float_to_pcm16(audio),
        pace=pace,
        chunk_seconds=chunk_ms / 1000,
        on_sent=on_sent,
    )
    return Replay(
        text=played.text,
        done_text=played.done.text if played.done is not None else None,
        deltas=played.deltas,
        sent=played.sent,
        start=played.start,
        errors=played.errors,
    )


def streamed_words(replay_: Replay) -> list[tuple[str, float]]:
    """Normalised streamed words with the arrival time of the delta that completed each."""
    chars: list[float] = []
    text = ""
    for arrival, delta in replay_.deltas:
        text += delta
        chars += [arrival] * len(delta)
    out: list[tuple[str, float]] = []
    pos = 0
    for raw in text.split(" "):
        end = pos + len(raw)
        if raw:
            for norm in normalize(raw):
                out.append((norm, chars[end - 1]))
        pos = end + 1
    return out


def align(ref: list[str], hyp: list[str]) -> list[tuple[int, int]]:
    """Index pairs (ref, hyp) of words a minimum-edit alignment puts together (equal or not)."""
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(
                cost[i - 1, j] + 1,
                cost[i, j - 1] + 1,
                cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]),
            )
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        if cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def word_lags(ref: Reference, replay_: Replay, *, pace: float = 1.0) -> list[tuple[float, float]]:
    """(word end time in the audio, lag in seconds) for every streamed word matched to ``ref``.

    The lag runs from when the chunk holding the word's end was sent to when the word arrived.
    """
    hyp = streamed_words(replay_)
    pairs = align([w for w, _ in ref.words], [w for w, _ in hyp])
    sent_ends = [s for s, _ in replay_.sent]
    lags = []
    for i, j in pairs:
        end = ref.words[i][1]
        k = min(int(np.searchsorted(sent_ends, end - 1e-6)), len(sent_ends) - 1)
        sent_at = replay_.sent[k][1] if sent_ends else replay_.start + end / max(pace, 1e-9)
        lags.append((end, hyp[j][1] - sent_at))
    return lags


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def lag_summary(lags: list[float]) -> dict[str, float | int | None]:
    return {
        "words": len(lags),
        "p50_s": _round(percentile(lags, 50)),
        "p95_s": _round(percentile(lags, 95)),
        "max_s": _round(max(lags) if lags else None),
        "mean_s": _round(statistics.fmean(lags) if lags else None),
    }


def wer_of(pairs: list[tuple[str, str]]) -> float:
    return round(corpus_wer(pairs), 4)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def select_clips(n: int | None) -> list[Clip]:
    clips = load_clips()
    if not clips:
        raise SystemExit("the evaluation set is missing (set EVAL_DIR)")
    return clips[:n] if n else clips


def rss_mb() -> dict[str, float]:
    """Resident memory of this process now and at its peak (MB)."""
    current = 0.0
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_mb": round(current, 1), "peak_rss_mb": round(peak, 1)}


def machine() -> dict[str, Any]:
    """The load the machine was under (benchmarks share it with other work)."""
    load1, load5, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2)}
