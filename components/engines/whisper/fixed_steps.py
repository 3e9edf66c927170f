"""Streams decoded on a fixed schedule: every round hands each stream exactly ``step`` seconds
of new audio, however long the round took.

In real time, where a decode falls depends on how fast the machine is at that moment, so two
runs never decode the same audio the same way. On a fixed schedule the transcripts depend only
on the policy and the audio: a bench compares policies word for word on it, and a test pins
the exact sequence of decodes that once lost words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from components.core.protocol import NO_OPTIONS, SAMPLE_RATE, SessionOptions
from components.engines.scheduler import Work
from components.engines.whisper.engine import StreamState, WhisperEngine


@dataclass
class StepStream:
    """One stream of a fixed-schedule run (a round reads its ``state``, as a scheduler slot's)."""

    state: StreamState
    text: str = ""
    deltas: list[tuple[float, str]] = field(default_factory=list)
    """(seconds of audio handed over when the delta came, delta)."""
    done: bool = False


def run_fixed_steps(
    engine: WhisperEngine,
    audios: list[np.ndarray],
    step: float,
    options: SessionOptions = NO_OPTIONS,
    *,
    previews: bool = False,
) -> tuple[list[StepStream], list[float]]:
    """Decode every recording of ``audios`` as one stream of ``engine``, all at once, in rounds
    of ``step`` seconds of new audio each (several streams follow the shared policy, one the
    lone policy), each with the session ``options``; the streams, and how long each round
    took."""
    streams = [StepStream(engine.stream_state(options, previews=previews)) for _ in audios]
    size = int(step * SAMPLE_RATE)
    rounds: list[float] = []
    position = 0
    limit = max(len(a) for a in audios) + 60 * SAMPLE_RATE  # time enough for the last words
    while not all(s.done for s in streams) and position < limit:
        active = [(s, a) for s, a in zip(streams, audios, strict=True) if not s.done]
        work = [
            Work(s, a[position : position + size], position + size >= len(a))  # type: ignore[arg-type]
            for s, a in active
        ]
        started = time.perf_counter()
        outcomes = engine.run_round(work, shared=len(audios) > 1)
        rounds.append(time.perf_counter() - started)
        for (stream, _), outcome in zip(active, outcomes, strict=True):
            stream.text += outcome.delta
            if outcome.delta:
                stream.deltas.append(((position + size) / SAMPLE_RATE, outcome.delta))
            stream.done = stream.done or outcome.done is not None
        position += size
    return streams, rounds
