"""The round scheduler: which streams a round serves, and that every sample reaches a round.

The choice of streams is pure (:func:`choose` over slots in a given state), so its rules are
checked exactly, without threads or sleeps. One test runs the real scheduler on a real event
loop and worker thread, and checks only what cannot depend on timing: no audio is lost or
handed twice, and each stream's end reaches its last round.
"""

from __future__ import annotations

import asyncio

import numpy as np

from components.core.protocol import SAMPLE_RATE
from components.engines.scheduler import Outcome, Scheduler, Slot, Work, choose

STEP = 0.5


def slot(name: str, waiting: float, *, eager: bool = False, oldest: float = 0.0) -> Slot:
    """A slot with ``waiting`` seconds of audio queued since ``oldest``."""
    s = Slot(name, state=None, partials=False, max_pending=30 * SAMPLE_RATE)
    s.eager = eager
    if waiting:
        s.pending = [np.zeros(round(waiting * SAMPLE_RATE), np.float32)]
        s.pending_samples = len(s.pending[0])
        s.oldest = oldest
    return s


def names(slots: list[Slot]) -> list[str]:
    return [s.id for s in slots]


def test_a_speaking_stream_waits_for_a_whole_step() -> None:
    assert choose([slot("a", 0.3)], STEP, 8) == []
    assert names(choose([slot("a", 0.5)], STEP, 8)) == ["a"]


def test_a_listening_stream_is_looked_at_every_half_step() -> None:
    assert choose([slot("a", 0.2, eager=True)], STEP, 8) == []
    assert names(choose([slot("a", 0.25, eager=True)], STEP, 8)) == ["a"]


def test_listening_rounds_do_not_pull_speaking_streams_in_early() -> None:
    listening, speaking = slot("listening", 0.3, eager=True), slot("speaking", 0.3)
    assert names(choose([listening, speaking], STEP, 8)) == ["listening"]


def test_a_decoding_round_takes_streams_half_a_step_from_due() -> None:
    due, near, far = slot("due", 0.5, oldest=2.0), slot("near", 0.3, oldest=1.0), slot("far", 0.1)
    # Oldest audio first, so the stream that waited longest is never left out of a full batch.
    assert names(choose([due, near, far], STEP, 8)) == ["near", "due"]
    assert names(choose([due, near, far], STEP, 1)) == ["near"]


def test_busy_finished_or_ended_streams_are_handled_as_such() -> None:
    busy = slot("busy", 1.0)
    busy.in_flight = True
    closed = slot("closed", 1.0)
    closed.closed = True
    ended = slot("ended", 0.0)
    ended.eof = True  # its end must reach a round even without audio
    again = slot("again", 0.0)
    again.again = True  # the engine has more to do without new audio
    assert names(choose([busy, closed, ended, again], STEP, 8)) == ["ended", "again"]


class Recorder:
    """A round function that remembers the audio each slot was handed, and its ends."""

    def __init__(self) -> None:
        self.handed: dict[str, int] = {}
        self.ends: list[str] = []

    def __call__(self, work: list[Work]) -> list[Outcome]:
        for w in work:
            self.handed[w.slot.id] = self.handed.get(w.slot.id, 0) + len(w.audio)
            if w.eof:
                self.ends.append(w.slot.id)
        return [Outcome() for _ in work]


async def test_every_sample_reaches_exactly_one_round() -> None:
    recorder = Recorder()
    scheduler = Scheduler(recorder, min_step=STEP)
    sizes = {"a": [1_600] * 30, "b": [7, 4_801, 12_000, 333] * 5}
    try:

        async def stream(name: str) -> None:
            s = scheduler.open(name, state=None, partials=False)
            for n in sizes[name]:
                await scheduler.add_audio(s, np.zeros(n, np.float32))
                await asyncio.sleep(0)
            scheduler.end_audio(s)
            while name not in recorder.ends:
                await asyncio.wait_for(s.changed.wait(), 10)
                s.changed.clear()
            scheduler.close(s)

        await asyncio.gather(stream("a"), stream("b"))
    finally:
        await scheduler.aclose()
    assert recorder.handed == {name: sum(n) for name, n in sizes.items()}
    assert sorted(recorder.ends) == ["a", "b"]
