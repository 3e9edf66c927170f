"""Sharing one model among many live streams: rounds of work on a single worker thread.

Every stream (a *slot*) collects audio on the event loop. Whenever some slot has gathered a
step's worth of audio, the scheduler starts a *round*: it hands each slot that has audio waiting
(at least half a step; those that waited longest first) *all* of its audio at once and runs the
engine's round function on one worker thread, off the event loop. A round therefore serves many
streams together (their decodes can be batched), and a stream that had to wait simply gets a
longer step next time: lag stays bounded instead of steps queueing up. When even that cannot
keep up, the slot's reader gets an ``overloaded`` warning (non-fatal, rate-limited).
A stream that is only listening for speech (the engine says so after each round) is looked at
every half step: those rounds cost only the voice detector, and new speech is found sooner.

Audio waiting for a round is bounded per slot: past ``max_pending_seconds`` the producer waits
(back-pressure), so memory stays bounded even if the worker stalls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.core.protocol import (
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
)
from components.engines.base import EngineError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Work:
    """One slot's share of a round: the audio handed over and whether the audio has ended."""

    slot: Slot
    audio: np.ndarray
    eof: bool


@dataclass(slots=True)
class Outcome:
    """What a round did for one slot (built on the worker thread, applied on the loop)."""

    delta: str = ""
    partial: str | None = None
    done: TranscriptionDone | None = None
    error: EngineError | None = None
    again: bool = False
    """More work is ready without new audio (e.g. a long backlog to cut through)."""
    eager: bool = False
    """The stream is listening for speech: look at its audio every half step (cheap rounds,
    and the first words of new speech are found a quarter second sooner on average)."""


@dataclass
class Slot:
    """One stream's place in the scheduler.

    ``state`` belongs to the engine; the worker thread touches it only while the slot is in
    a round (``in_flight``), and the event loop only between rounds.
    """

    id: str
    state: Any
    partials: bool
    max_pending: int
    pending: list[np.ndarray] = field(default_factory=list)
    pending_samples: int = 0
    oldest: float | None = None
    """Arrival time (monotonic) of the oldest audio not yet handed to a round."""
    eof: bool = False
    eof_taken: bool = False
    in_flight: bool = False
    again: bool = False
    eager: bool = False
    closed: bool = False
    # What the reader has not taken yet (coalesced, so this stays small however slow it is).
    out_delta: list[str] = field(default_factory=list)
    out_partial: str | None = None
    out_warnings: list[ErrorEvent] = field(default_factory=list)
    out_done: TranscriptionDone | None = None
    out_error: EngineError | None = None
    slow_rounds: int = 0
    last_warning: float = float("-inf")
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pending_seconds(self) -> float:
        return self.pending_samples / SAMPLE_RATE

    def due(self, min_new: float) -> bool:
        if self.in_flight or self.closed or self.out_done or self.out_error:
            return False
        if self.again or (self.eof and not self.eof_taken):
            return True
        return self.pending_seconds >= min_new

    def take(self) -> Work:
        audio = (
            np.concatenate(self.pending)
            if len(self.pending) > 1
            else (self.pending[0] if self.pending else np.zeros(0, np.float32))
        )
        self.pending = []
        self.pending_samples = 0
        self.oldest = None
        self.again = False
        self.eof_taken = self.eof
        self.space.set()
        return Work(self, audio, self.eof)

    def events(self) -> list[TranscriptionDelta | TranscriptionPartial | ErrorEvent]:
        """Take what the reader should see now, in order: warnings, text, tail."""
        out: list[TranscriptionDelta | TranscriptionPartial | ErrorEvent] = []
        out.extend(self.out_warnings)
        self.out_warnings = []
        if self.out_delta:
            out.append(TranscriptionDelta("".join(self.out_delta)))
            self.out_delta = []
        if self.out_partial is not None:
            out.append(TranscriptionPartial(self.out_partial))
            self.out_partial = None
        return out


def choose(slots: list[Slot], min_step: float, max_batch: int) -> list[Slot]:
    """The slots the next round serves (none: no round is due), oldest audio first.

    A slot is due with a step of audio waiting (half a step while it only listens for
    speech). A round that decodes also takes the slots half a step from due, so that their
    decodes share its batch; a round of listening slots only (the voice detector's work)
    pulls no one in early.
    """
    half = min_step / 2
    ready = [s for s in slots if s.due(half if s.eager else min_step)]
    if not ready:
        return []
    joining: list[Slot] = []
    if not all(s.eager for s in ready):
        joining = [s for s in slots if s not in ready and s.due(half)]
    chosen = ready + joining
    chosen.sort(key=lambda s: s.oldest if s.oldest is not None else float("-inf"))
    return chosen[:max_batch]


class Scheduler:
    """Runs rounds of the engine's ``run_round`` over the slots that have work, one at a time."""

    def __init__(
        self,
        run_round: Callable[[list[Work]], list[Outcome]],
        *,
        min_step: float = 0.5,
        max_batch: int = 8,
        max_pending_seconds: float = 30.0,
        overload_lag: float = 4.0,
        warn_interval: float = 20.0,
        name: str = "engine",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_round = run_round
        self._clock = clock
        self.min_step = min_step
        self.max_batch = max_batch
        self.max_pending = int(max_pending_seconds * SAMPLE_RATE)
        self.overload_lag = overload_lag
        self.warn_interval = warn_interval
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._slots: dict[str, Slot] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.rounds = 0
        self.busy_seconds = 0.0

    @property
    def active(self) -> int:
        return len(self._slots)

    @property
    def pending_seconds(self) -> float:
        """Audio waiting for a round, over all streams (the engine's queue depth)."""
        return sum(s.pending_seconds for s in self._slots.values())

    # ------------------------------------------------------------------ slots

    def open(self, slot_id: str, state: Any, *, partials: bool) -> Slot:
        """Register a stream; start the scheduling task on this event loop if needed."""
        if self._closed:
            raise EngineError("The engine is shut down.", ErrorCode.PROCESSING_ERROR)
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise EngineError(
                    "The engine is in use from another event loop.", ErrorCode.PROCESSING_ERROR
                )
            # That loop is gone (its streams with it): start afresh on this one.
            self._slots.clear()
            self._task = None
        slot = Slot(slot_id, state, partials, self.max_pending)
        self._slots[slot_id] = slot
        if self._task is None or self._task.done():
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="scheduler")
        return slot

    def close(self, slot: Slot) -> None:
        """Forget a stream (any round in progress for it finishes, and its result is dropped)."""
        slot.closed = True
        slot.pending = []
        slot.pending_samples = 0
        slot.space.set()
        self._slots.pop(slot.id, None)
        self._poke()

    async def add_audio(self, slot: Slot, chunk: np.ndarray) -> None:
        """Queue audio for the next round; waits while ``max_pending`` seconds are waiting."""
        while slot.pending_samples and slot.pending_samples + len(chunk) > slot.max_pending:
            if slot.closed:
                return
            slot.space.clear()
            await slot.space.wait()
        if slot.closed or not len(chunk):
            return
        if slot.oldest is None:
            slot.oldest = self._clock()
        slot.pending.append(chunk)
        slot.pending_samples += len(chunk)
        if slot.pending_seconds >= (self.min_step / 2 if slot.eager else self.min_step):
            self._poke()

    def end_audio(self, slot: Slot) -> None:
        slot.eof = True
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ rounds

    def _pick(self) -> list[Slot]:
        return choose(list(self._slots.values()), self.min_step, self.max_batch)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while self._slots:
            chosen = self._pick()
            if not chosen:
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = [s.oldest for s in chosen]
            work = [s.take() for s in chosen]
            for s in chosen:
                s.in_flight = True
            started = self._clock()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._safe_round, work)
            finally:
                for s in chosen:
                    s.in_flight = False
            now = self._clock()
            self.rounds += 1
            self.busy_seconds += now - started
            for slot, outcome, since in zip(chosen, outcomes, oldest, strict=True):
                if not slot.closed:
                    self._deliver(slot, outcome, now - since if since is not None else 0.0)

    def _safe_round(self, work: list[Work]) -> list[Outcome]:
        try:
            outcomes = self._run_round(work)
            if len(outcomes) != len(work):
                raise RuntimeError("round returned the wrong number of outcomes")
            return outcomes
        except EngineError as exc:
            return [Outcome(error=exc) for _ in work]
        except Exception as exc:
            log.exception("[%s] decoding round failed", ",".join(w.slot.id for w in work))
            error = EngineError(f"Decoding failed: {exc}", ErrorCode.PROCESSING_ERROR)
            return [Outcome(error=error) for _ in work]

    def _deliver(self, slot: Slot, outcome: Outcome, lag: float) -> None:
        if outcome.delta:
            slot.out_delta.append(outcome.delta)
        if outcome.partial is not None and slot.partials:
            slot.out_partial = outcome.partial
        if outcome.done is not None:
            slot.out_done = outcome.done
        if outcome.error is not None:
            slot.out_error = outcome.error
        slot.again = outcome.again
        slot.eager = outcome.eager
        self._check_lag(slot, lag)
        slot.changed.set()
        if slot.again:
            self._poke()

    def _check_lag(self, slot: Slot, lag: float) -> None:
        """Warn (rate-limited) when audio waits longer than ``overload_lag`` round after round."""
        if lag <= self.overload_lag:
            slot.slow_rounds = 0
            return
        slot.slow_rounds += 1
        now = self._clock()
        if slot.slow_rounds >= 2 and now - slot.last_warning >= self.warn_interval:
            slot.last_warning = now
            log.warning(
                "[%s] overloaded: audio waited %.1f s for the engine (%d streams)",
                slot.id,
                lag,
                len(self._slots),
            )
            slot.out_warnings.append(
                ErrorEvent(
                    error=(
                        f"The speech engine is overloaded: captions lag {lag:.0f} s behind "
                        f"the audio ({len(self._slots)} streams share it)."
                    ),
                    code=str(ErrorCode.OVERLOADED),
                )
            )

    async def aclose(self) -> None:
        """Stop scheduling and the worker thread (streams still open get no more rounds)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            task.cancel()
            await asyncio.wait([task])
        for slot in list(self._slots.values()):
            slot.out_error = EngineError("The engine was shut down.", ErrorCode.PROCESSING_ERROR)
            slot.changed.set()
        self._slots.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
