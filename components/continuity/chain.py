"""A caption session as a sequence of streams, so that it outlives every stream's limit.

Every stream a backend opens ends some day: SageMaker ends a bidirectional stream after 30
minutes, a server at its maximum session length, a model at its maximum length, a network at
its first hiccup. :class:`ContinuousStream` is one stream to its user (the page's session,
``transcribe``) and runs a chain of *legs* underneath, one backend stream each:

* **Planned handover.** When a leg nears its known limit, the first pause in speech (or, if
  nobody pauses, a hard deadline) ends it: it gets the final commit, the next leg opens and
  takes the audio from there on. The old leg's last text comes first, then the new leg's, so
  the transcript is one text with nothing to repair at the seam. Where the backend's engine
  reads it (the ``context_audio`` extension), the new leg first hears the old one's last
  seconds with the words said in them forced, so it reads its first words with the audio
  before them, as one stream would; elsewhere it hears the quiet the old leg ended in.
* **Unplanned loss.** Audio sent to a leg stays in a bounded replay buffer. When a leg breaks,
  a new one opens (with backoff; the attempt count resets after a leg that ran well). Where
  the engine reads ``context_audio``, it hears the seconds before the point its
  predecessor's text had reached, with those words forced, and gets the audio from that
  point on: it says what its predecessor had not. Elsewhere it gets the audio again from a
  little before that point, and the words it repeats are found by aligning its first words
  with the transcript's tail, and dropped.

Only audio older than the replay buffer can be lost, and that is reported
(:class:`StreamNotice`). The legs' events reach the user in order, one leg after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from components.backends.base import Backend, RealtimeStream
from components.continuity.policy import (
    ContinuityPolicy,
    ContinuityStats,
    HandoverTimer,
    StreamNotice,
)
from components.continuity.replay import ReplayBuffer, replay_start
from components.continuity.seams import Seam, words_of
from components.core import protocol
from components.core.errors import BackendError, Busy, ConnectionLost, RemoteError, StreamExpired

log = logging.getLogger(__name__)

EVENT_QUEUE_SIZE = 512
"""Events one leg may hold while the legs before it are still being read (then its reader
waits, and the backend's own flow control holds the server back)."""

MAX_MARKS = 4096
"""Deltas whose audio marks are kept (for finding a seam's tail): hours of text need only the
newest minutes."""

FINAL_TIMEOUT_SECONDS = 30.0
"""How long a retiring leg may take to deliver its last text before the next leg is opened
anyway (when the backend refuses a second stream meanwhile)."""

_ENDING_CODES = {
    protocol.ErrorCode.SESSION_TOO_LONG,
    protocol.ErrorCode.IDLE_TIMEOUT,
    protocol.ErrorCode.AUDIO_BUFFER_FULL,
    protocol.ErrorCode.PROCESSING_ERROR,
    protocol.ErrorCode.SERVER_BUSY,
}
"""Error events after which a stream ends: the chain continues on a new leg instead."""


# --------------------------------------------------------------------------- legs


@dataclass(eq=False)
class _Leg:
    number: int
    stream: RealtimeStream
    start: int
    """Session offset (samples) of its first sample."""
    opened: float
    """When it was opened (the chain's clock)."""
    timer: HandoverTimer
    seam: Seam | None = None
    sent: int = 0
    end: int | None = None
    """Offset after its last sample, once it takes no more (final commit sent)."""
    last_delta: int | None = None
    """Offset the audio sent to it had reached when its latest delta arrived."""
    failure: BackendError | None = None
    done: protocol.TranscriptionDone | None = None
    text: str = ""
    """What its deltas said."""
    heard: int = 0
    """Samples at its start that an earlier leg transcribed (its ``context_audio``), but for
    the quiet at their end (no words lie there)."""
    marks: list[tuple[int, int]] = field(default_factory=list)
    """(end of a delta in ``text``, the audio offset it had been sent when it arrived), the
    newest ``MAX_MARKS``."""
    drained: int = 0
    """How much of ``text`` the reader of the chain has taken (the rest is queued)."""
    taken_over: bool = False
    """Another leg was opened for its unfinished audio."""
    events: asyncio.Queue[tuple[Any, ...]] = field(
        default_factory=lambda: asyncio.Queue(EVENT_QUEUE_SIZE)
    )
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    def age(self, now: float) -> float:
        """How far it is toward its limit: wall time, or audio time when sent faster (the
        audio it heard as context came at once, and only from an engine without limits on
        audio: the ones that read it are ours)."""
        return max(now - self.opened, (self.sent - self.heard) / protocol.SAMPLE_RATE)


class ChainSettings(TypedDict, total=False):
    """What a :class:`ContinuousStream` is opened with, beside its backend."""

    partials: bool
    options: protocol.SessionOptions
    policy: ContinuityPolicy | None
    on_notice: Callable[[StreamNotice], None] | None
    label: str
    clock: Callable[[], float]


class ContinuousStream:
    """One stream to its user, a chain of backend streams underneath (see module docstring).

    Use it like any :class:`~components.backends.base.RealtimeStream`: ``send_audio`` as audio
    comes, ``finish`` once, iterate the events (one ``TranscriptionDone`` for the whole
    session, usage summed over the legs), ``cancel`` to abandon. ``send_audio`` waits while a
    broken leg is replaced; it raises only when the chain gives up.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        partials: bool = False,
        options: protocol.SessionOptions = protocol.NO_OPTIONS,
        policy: ContinuityPolicy | None = None,
        on_notice: Callable[[StreamNotice], None] | None = None,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self.partials = partials
        self.options = options
        """Every leg gets the same language and prompt."""
        self.policy = policy or ContinuityPolicy()
        self.stats = ContinuityStats()
        self._on_notice = on_notice
        self._label = label or "stream"
        self._lock = asyncio.Lock()
        self._buffer = ReplayBuffer(int(self.policy.replay_seconds * protocol.SAMPLE_RATE))
        self._legs: list[_Leg] = []
        self._legs_changed = asyncio.Event()
        self._leg: _Leg | None = None
        self._finishing = False
        self._closed = False
        self._failures = 0
        self._text = ""
        self._marks: list[tuple[int, int]] = []  # (end of a delta in _text, its leg's mark)
        self._usage = protocol.Usage()
        self._usage_known = False
        self._iterating = False

    @classmethod
    async def open(cls, backend: Backend, **settings: Unpack[ChainSettings]) -> ContinuousStream:
        """Open the first leg; its failure is raised as it is (a backend that is not there).

        ``settings`` are those of the constructor (:class:`ChainSettings`).
        """
        chain = cls(backend, **settings)
        stream = await backend.open(partials=chain.partials, options=chain.options)
        chain._add_leg(stream, start=0, after=None)
        return chain

    # ------------------------------------------------------------------ audio side

    async def send_audio(self, pcm16: bytes) -> None:
        if self._finishing:
            raise RuntimeError("send_audio() after finish()")
        if len(pcm16) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        if not pcm16:
            return
        async with self._lock:
            self._check_open()
            leg = await self._live_leg()
            cut = self._handover_point(leg, pcm16)
            if cut is None:
                await self._send(leg, pcm16)
                return
            if cut:
                await self._send(leg, pcm16[:cut])
            await self._hand_over(self._live_leg_now())
            if cut < len(pcm16):
                await self._send(await self._live_leg(), pcm16[cut:])

    async def finish(self) -> None:
        """The audio is complete: the last leg gets the final commit."""
        async with self._lock:
            if self._finishing:
                return
            self._check_open()
            leg = await self._live_leg()
            self._finishing = True
            leg.end = self._buffer.end
            try:
                await leg.stream.finish()
            except BackendError as exc:
                leg.failure = leg.failure or exc  # the reader's end repairs it

    async def cancel(self) -> None:
        """Abandon every leg now (idempotent)."""
        self._closed = True
        legs = list(self._legs)
        for leg in legs:
            with contextlib.suppress(Exception):
                await leg.stream.cancel()
        for leg in legs:
            if leg.reader is not None and not leg.reader.done():
                leg.reader.cancel()
        await asyncio.gather(
            *(leg.reader for leg in legs if leg.reader is not None), return_exceptions=True
        )
        self._legs_changed.set()

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost("The stream was cancelled.")

    def _live_leg_now(self) -> _Leg:
        assert self._leg is not None
        return self._leg

    async def _live_leg(self) -> _Leg:
        """The leg taking audio now, replacing a broken one first."""
        leg = self._live_leg_now()
        if leg.failure is not None and not leg.taken_over:
            await self._take_over(leg)
        return self._live_leg_now()

    async def _send(self, leg: _Leg, pcm16: bytes) -> None:
        self._buffer.append(pcm16)  # kept before sending: a failed send is replayed
        await self._deliver(leg, pcm16)

    async def _deliver(self, leg: _Leg, pcm16: bytes) -> None:
        """Send audio the replay buffer already holds; a retryable failure hands it over."""
        leg.sent += len(pcm16) // 2
        try:
            await leg.stream.send_audio(pcm16)
        except BackendError as exc:
            if not exc.retryable:
                raise
            leg.failure = leg.failure or exc
            await self._take_over(leg)

    def _limit(self, leg: _Leg) -> float | None:
        limits = [
            self.policy.max_stream_seconds,
            getattr(self.backend, "max_stream_seconds", None),
            getattr(leg.stream, "expires_in", None),
        ]
        known = [float(x) for x in limits if x]
        return min(known) if known else None

    def _handover_point(self, leg: _Leg, pcm16: bytes) -> int | None:
        """Where in ``pcm16`` the leg should end (byte offset), or None to keep it."""
        limit = self._limit(leg)
        cut = leg.timer.cut(leg.age(self._clock()), limit, pcm16)
        if cut is not None and leg.timer.forced:
            log.info(
                "%s: no pause before leg %d's limit: ending it mid-speech", self._label, leg.number
            )
        return cut

    async def _hand_over(self, old: _Leg) -> None:
        """End ``old`` here (final commit) and continue on a new leg."""
        old.end = self._buffer.end
        try:
            await old.stream.finish()
        except BackendError as exc:
            old.failure = old.failure or exc
        self.stats.handovers += 1
        log.info(
            "%s: handing over from leg %d at %.1f s (leg age %.1f s)",
            self._label,
            old.number,
            old.end / protocol.SAMPLE_RATE,
            old.age(self._clock()),
        )
        heard = await self._heard_audio(old)
        if heard is not None:
            context, context_audio, begin = heard
            options = dataclasses.replace(
                self.options, context=context, context_audio=context_audio
            )
            stream = await self._open_leg(retiring=old, reason=None, options=options)
            if protocol.CONTEXT_AUDIO_KEY in getattr(stream, "extensions", ()):
                _, audio = self._buffer.read(begin, old.end)
                leg = self._add_leg(stream, start=begin, after=old)
                # The quiet it ends in counts as the new leg's own, as a lead-in would.
                quiet = round(min(old.timer.quiet, self.policy.lead_in) * protocol.SAMPLE_RATE)
                leg.heard = max(0, len(audio) // 2 - quiet)
                self.stats.lead_in_samples += min(quiet, len(audio) // 2)
                self._notify("handover", "Continuing on a new stream.")
                log.info(
                    "%s: leg %d starts with %.1f s heard before (%d words forced)",
                    self._label,
                    leg.number,
                    len(audio) / 2 / protocol.SAMPLE_RATE,
                    context_audio.words,
                )
                await self._deliver(leg, audio)
                return
        else:
            # What the old leg said so far (its last words may still be on their way) is the
            # new leg's text context when the policy carries it over.
            context = protocol.context_tail(self._said_through(old))
            options = self.options
            if context and self.policy.carry_context:
                options = dataclasses.replace(options, context=context)
            stream = await self._open_leg(retiring=old, reason=None, options=options)
        # The quiet the old leg ended in starts the new one too: no words lie in it, and the
        # new leg's first words are not the first thing it hears.
        quiet = min(old.timer.quiet, self.policy.lead_in)
        begin, lead = self._buffer.read(self._buffer.end - round(quiet * protocol.SAMPLE_RATE))
        leg = self._add_leg(stream, start=begin, after=old)
        self._notify("handover", "Continuing on a new stream.")
        if lead:
            self.stats.lead_in_samples += len(lead) // 2
            await self._deliver(leg, lead)

    async def _heard_audio(self, old: _Leg) -> tuple[str, protocol.ContextAudio, int] | None:
        """What a new leg needs to hear ``old``'s last audio as context (see :meth:`_heard`),
        once ``old`` has said its last words; None when they do not come in time (the new
        leg then starts at the cut)."""
        if self.policy.context_audio <= 0 or old.end is None:
            return None
        if protocol.CONTEXT_AUDIO_KEY not in getattr(old.stream, "extensions", ()):
            return None  # the backend's streams cannot read it: no reason to wait
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(old.ended.wait(), self.policy.context_wait)
        if old.done is None or old.failure is not None:
            log.info(
                "%s: leg %d's last words not in time for its successor", self._label, old.number
            )
            return None
        return self._heard(old, old.end, self.policy.context_audio, complete=True)

    def _heard(
        self, leg: _Leg, end: int, seconds: float, *, complete: bool
    ) -> tuple[str, protocol.ContextAudio, int] | None:
        """The text said so far, the ``context_audio`` for up to ``seconds`` of ``leg``'s audio
        before ``end``, and where that audio starts; None if there is none to give.

        Its words are those of ``leg``'s deltas that arrived after the audio had reached its
        start: every word said in it arrived later, so none is missing (a few said just
        before are harmless). ``complete``: ``leg`` said everything up to ``end`` (it ended
        there); else its last words there may not have come yet, and the new leg says them.
        """
        begin = max(end - round(seconds * protocol.SAMPLE_RATE), leg.start + leg.heard)
        begin = max(begin, self._buffer.start)
        if begin >= end:
            return None
        first = 0
        for end_char, mark in reversed(leg.marks):
            if mark <= begin:
                first = end_char
                break
        words = len(leg.text[first:].split())
        context = protocol.context_tail(self._said_through(leg))
        if not words or not context or words > len(context.split()):
            return None
        heard = protocol.ContextAudio(
            seconds=(end - begin) / protocol.SAMPLE_RATE, words=words, complete=complete
        )
        return context, heard, begin

    async def _take_over(self, lost: _Leg) -> None:
        """Open a leg for ``lost``'s unfinished audio: replay it, then continue live (or finish
        it, when ``lost`` had already ended)."""
        lost.taken_over = True
        lived = self._clock() - lost.opened
        if lived >= self.policy.good_stream_seconds:
            self._failures = 0
        reason = lost.failure or ConnectionLost("The stream ended early.")
        if not reason.retryable:
            raise reason
        expired = isinstance(reason, StreamExpired)
        if not expired:
            self._failures += 1
        log.warning("%s: leg %d lost after %.1f s: %s", self._label, lost.number, lived, reason)
        end = lost.end
        resumed, opened = await self._resume_after(lost, reason, end, expired=expired)
        if resumed:
            return
        while True:
            replay_from = replay_start(
                lost.start,
                lost.last_delta,
                seam_open=lost.seam is not None and not lost.seam.resolved,
                margin_samples=int(self.policy.replay_margin * protocol.SAMPLE_RATE),
            )
            if not expired:
                self._notify("reconnecting", "Connection lost; reconnecting…")
            stream = opened or await self._open_leg(
                retiring=None, reason=reason, options=self.options
            )
            opened = None
            begin, audio = self._buffer.read(replay_from, end)
            if begin > replay_from:
                self._lost(begin - replay_from)
            leg, failed = await self._successor(
                stream, lost, start=begin, end=end, audio=audio, expired=expired
            )
            if failed is not None:
                leg.taken_over = True
                self._failures += 1
                reason, lost = failed, leg
                continue
            break
        log.info(
            "%s: leg %d continues from %.1f s (%.1f s replayed)",
            self._label,
            leg.number,
            begin / protocol.SAMPLE_RATE,
            len(audio) / 2 / protocol.SAMPLE_RATE,
        )
        if not expired:
            self._notify("reconnected", "Reconnected; captions continue.")

    async def _resume_after(
        self, lost: _Leg, reason: BackendError, end: int | None, *, expired: bool
    ) -> tuple[bool, Any]:
        """Continue ``lost`` on a new leg that hears its last seconds as context, with the words
        it said there forced, and gets the audio again from the point its text had reached:
        it says only what ``lost`` had not (no seam to find). (False, the stream it opened
        or None) where that cannot be done (the engine does not read it, nothing was said):
        the caller then replays from before that point and drops the repeat at the seam.
        """
        reach = lost.last_delta
        if self.policy.context_audio <= 0 or reach is None or reach < self._buffer.start:
            return False, None
        if lost.seam is not None and not lost.seam.resolved:
            return False, None
        seconds = min(self.policy.replay_margin, protocol.MAX_CONTEXT_AUDIO_SECONDS)
        heard = self._heard(lost, reach, seconds, complete=False)
        if heard is None:
            return False, None
        context, context_audio, begin = heard
        if not expired:
            self._notify("reconnecting", "Connection lost; reconnecting…")
        options = dataclasses.replace(self.options, context=context, context_audio=context_audio)
        stream = await self._open_leg(retiring=None, reason=reason, options=options)
        if protocol.CONTEXT_AUDIO_KEY not in getattr(stream, "extensions", ()):
            return False, stream
        _, before = self._buffer.read(begin, reach)
        _, audio = self._buffer.read(reach, end)
        leg, failed = await self._successor(
            stream, lost, start=begin, end=end, audio=audio, expired=expired, heard=before
        )
        if failed is not None:
            await self._take_over(leg)
            return True, None
        log.info(
            "%s: leg %d continues from %.1f s, hearing %.1f s before it (%d words forced; "
            "%.1f s replayed)",
            self._label,
            leg.number,
            reach / protocol.SAMPLE_RATE,
            leg.heard / protocol.SAMPLE_RATE,
            context_audio.words,
            len(audio) / 2 / protocol.SAMPLE_RATE,
        )
        if not expired:
            self._notify("reconnected", "Reconnected; captions continue.")
        return True, None

    async def _successor(
        self,
        stream: Any,
        lost: _Leg,
        *,
        start: int,
        end: int | None,
        audio: bytes,
        expired: bool,
        heard: bytes = b"",
    ) -> tuple[_Leg, BackendError | None]:
        """Add the leg that takes over ``lost``'s audio and send it that audio (``heard``, the
        audio it hears as context, at once; then ``audio`` at the replay speed), finishing it
        when ``lost`` had ended. A retryable failure is returned with the leg, not raised."""
        seam = None if heard else Seam(replay_from=start)
        leg = self._add_leg(stream, start=start, after=lost, seam=seam)
        leg.heard = len(heard) // 2
        if end is None:
            self._leg = leg
        if expired:
            self.stats.expired += 1
        else:
            self.stats.reconnects += 1
        self.stats.replayed_samples += len(audio) // 2
        try:
            if heard:
                leg.sent += leg.heard
                await stream.send_audio(heard)
            await self._replay(leg, audio)
            if end is not None or self._finishing:
                leg.end = end if end is not None else self._buffer.end
                await stream.finish()
        except BackendError as exc:
            if not exc.retryable:
                raise
            leg.failure = leg.failure or exc
            return leg, exc
        return leg, None

    async def _replay(self, leg: _Leg, audio: bytes) -> None:
        step = protocol.SAMPLE_RATE // 5 * 2  # 200 ms per append
        loop = asyncio.get_running_loop()
        started = loop.time()
        speed = self.policy.replay_speed
        for i in range(0, len(audio), step):
            piece = audio[i : i + step]
            if speed > 0:
                delay = started + i / 2 / protocol.SAMPLE_RATE / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await leg.stream.send_audio(piece)
            leg.sent += len(piece) // 2

    async def _open_leg(
        self,
        *,
        retiring: _Leg | None,
        reason: BackendError | None,
        options: protocol.SessionOptions,
    ) -> Any:
        """A new backend stream, retried with backoff; raises once the attempts are spent."""
        policy = self.policy
        while True:
            self._check_open()
            if self._failures > policy.max_failures:
                raise self._give_up(reason)
            if self._failures:
                delay = min(policy.backoff_cap, policy.backoff_base * 2 ** (self._failures - 1))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            try:
                return await self.backend.open(partials=self.partials, options=options)
            except Busy as exc:
                if retiring is not None and not retiring.ended.is_set():
                    # The backend counts the retiring leg: open once it has finished.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(retiring.ended.wait(), FINAL_TIMEOUT_SECONDS)
                    retiring = None
                    continue
                reason = exc
            except BackendError as exc:
                if not exc.retryable:
                    raise
                reason = exc
            self._failures += 1
            log.warning(
                "%s: could not open a stream (attempt %d): %s", self._label, self._failures, reason
            )

    def _give_up(self, reason: BackendError | None) -> BackendError:
        detail = str(reason).strip().rstrip(".") if reason else "no detail"
        attempts = self.policy.max_failures + 1
        message = (
            f"The connection to {self.backend.name} was lost and could not be restored "
            f"after {attempts} attempts ({detail})."
        )
        error_type = type(reason) if isinstance(reason, BackendError) else ConnectionLost
        return error_type(message)

    def _add_leg(
        self, stream: Any, *, start: int, after: _Leg | None, seam: Seam | None = None
    ) -> _Leg:
        self.stats.legs += 1
        leg = _Leg(
            number=self.stats.legs,
            stream=stream,
            start=start,
            opened=self._clock(),
            timer=HandoverTimer(self.policy),
            seam=seam,
        )
        if after is not None and after in self._legs:
            self._legs.insert(self._legs.index(after) + 1, leg)
        else:  # the first leg, or one whose predecessor has been read already
            self._legs.append(leg)
        if after is None or after is self._leg:
            self._leg = leg
        leg.reader = asyncio.create_task(self._read(leg), name=f"{self._label}-leg-{leg.number}")
        self._legs_changed.set()
        return leg

    def _said_through(self, last: _Leg) -> str:
        """The transcript up to the end of what ``last`` has said: the text shown so far, and
        what the legs up to ``last`` said that their reader has not taken yet."""
        parts = [self._text]
        for leg in self._legs:
            parts.append(leg.text[leg.drained :])
            if leg is last:
                break
        return " ".join(parts)

    def _lost(self, samples: int) -> None:
        self.stats.lost_samples += samples
        seconds = samples / protocol.SAMPLE_RATE
        log.warning("%s: %.1f s of audio could not be resent", self._label, seconds)
        self._notify(
            "audio_lost",
            f"{seconds:.1f} s of audio could not be recovered after the connection was lost; "
            "the captions may miss a few words there.",
            lost_seconds=seconds,
        )

    def _notify(self, kind: Any, message: str, *, lost_seconds: float = 0.0) -> None:
        if self._on_notice is not None:
            try:
                self._on_notice(StreamNotice(kind, message, lost_seconds))
            except Exception:
                log.exception("%s: notice handler failed", self._label)

    # ------------------------------------------------------------------ event side

    async def _read(self, leg: _Leg) -> None:
        """Move one leg's events into its queue, stamped with the audio it had been sent."""
        ending: protocol.ErrorEvent | None = None
        events = aiter(leg.stream)
        try:
            async for event in events:
                match event:
                    case protocol.TranscriptionDelta(delta=delta):
                        leg.last_delta = leg.start + leg.sent
                        leg.text += delta
                        leg.marks.append((len(leg.text), leg.last_delta))
                        if len(leg.marks) > MAX_MARKS:
                            del leg.marks[: MAX_MARKS // 4]
                        log.debug("%s: leg %d delta %r", self._label, leg.number, delta)
                        await leg.events.put(("delta", delta, leg.last_delta))
                    case protocol.TranscriptionPartial(text=text):
                        await leg.events.put(("partial", text))
                    case protocol.TranscriptionDone(text=final):
                        log.debug("%s: leg %d done %r", self._label, leg.number, final[-80:])
                        rest = _unsent_rest(leg.text, final)
                        if rest:  # the final text says more than the deltas did
                            leg.text += rest
                            leg.marks.append((len(leg.text), leg.start + leg.sent))
                            await leg.events.put(("delta", rest, leg.start + leg.sent))
                        leg.done = event
                        return
                    case protocol.ErrorEvent() if event.code in _ENDING_CODES:
                        ending = event  # the stream ends next: the reason, if it does
                    case protocol.ErrorEvent():
                        await leg.events.put(("error", event))
                    case _:
                        pass
            leg.failure = leg.failure or _ended_error(ending)
        except asyncio.CancelledError:
            raise
        except BackendError as exc:
            leg.failure = leg.failure or exc
        except Exception as exc:  # a backend's bug must not end the session unexplained
            log.exception("%s: leg %d failed", self._label, leg.number)
            leg.failure = leg.failure or ConnectionLost(f"The stream failed: {exc}")
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            with contextlib.suppress(Exception):
                await leg.stream.cancel()  # release it: a leg is read once, to its end
            log.debug(
                "%s: leg %d ended (%s)",
                self._label,
                leg.number,
                "done" if leg.done is not None else leg.failure,
            )
            leg.ended.set()
            with contextlib.suppress(asyncio.QueueFull):  # else the drain sees ``ended``
                leg.events.put_nowait(("end",))

    def __aiter__(self) -> AsyncIterator[protocol.ServerEvent]:
        if self._iterating:
            raise RuntimeError("a stream can be iterated only once")
        self._iterating = True
        return self._events()

    async def _events(self) -> AsyncIterator[protocol.ServerEvent]:
        first = True
        while True:
            while not self._legs:
                if self._closed:
                    return
                self._legs_changed.clear()
                await self._legs_changed.wait()
            leg = self._legs[0]  # legs leave the list once read: an hours-long chain stays small
            if not first:
                yield protocol.TranscriptionPartial(text="")
            first = False
            async for event in self._drain(leg):
                yield event
            if self._closed:
                return
            if leg.done is not None and leg.end is not None:
                self._add_usage(leg.done.usage)
                if self._finishing and len(self._legs) == 1:
                    yield protocol.TranscriptionDone(
                        text=self._text, usage=self._usage if self._usage_known else None
                    )
                    return
            else:
                if leg.done is not None:
                    self._add_usage(leg.done.usage)
                    leg.failure = leg.failure or ConnectionLost(
                        "The backend ended the stream before the audio did."
                    )
                async with self._lock:
                    if not leg.taken_over:
                        await self._take_over(leg)
            self._legs.remove(leg)

    async def _drain(self, leg: _Leg) -> AsyncIterator[protocol.ServerEvent]:
        seam = leg.seam
        if seam is not None:
            seam.tail = self._tail_words(seam.replay_from)
        first = True
        while True:
            item = await self._next(leg)
            kind = item[0]
            text = ""
            mark = leg.start + leg.sent
            if kind == "delta":
                text, mark = item[1], item[2]
                leg.drained += len(text)
            if seam is not None and not seam.resolved:
                if kind == "delta":
                    seam.held += text
                    if seam.held_since is None:
                        seam.held_since = self._clock()
                if kind in ("delta", "hold_expired", "end"):
                    held = seam.held
                    taken = seam.take(complete=kind != "delta", expired=kind == "hold_expired")
                    if taken is None:
                        continue
                    log.debug(
                        "%s: leg %d seam: tail %r, new %r", self._label, leg.number, seam.tail, held
                    )
                    self.stats.dropped_words += seam.dropped
                    log.info(
                        "%s: leg %d repeated %d words at its seam",
                        self._label,
                        leg.number,
                        seam.dropped,
                    )
                    text = taken
                    if kind != "delta":
                        kind = "delta" if text else kind
            if kind == "delta" and text:
                if first and self._text and not self._text[-1].isspace():
                    if not text[0].isspace():
                        text = " " + text
                first = False
                self._text += text
                self._marks.append((len(self._text), mark))
                if len(self._marks) > MAX_MARKS:
                    del self._marks[: MAX_MARKS // 4]
                yield protocol.TranscriptionDelta(delta=text)
                if item[0] == "end":
                    return
            elif kind == "partial":
                if seam is None or seam.resolved:
                    yield protocol.TranscriptionPartial(text=item[1])
            elif kind == "error":
                yield item[1]
            elif kind == "end":
                return

    async def _next(self, leg: _Leg) -> tuple[Any, ...]:
        """The leg's next event; ``("hold_expired",)`` when its seam has waited long enough."""
        seam = leg.seam
        while True:
            if leg.events.empty() and leg.ended.is_set():
                return ("end",)
            wait = 0.5
            if seam is not None and not seam.resolved and seam.held_since is not None:
                left = seam.held_since + self.policy.seam_hold_seconds - self._clock()
                if left <= 0:
                    return ("hold_expired",)
                wait = min(wait, left)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(leg.events.get(), wait)

    def _tail_words(self, replay_from: int) -> list[str]:
        """The transcript's words that a replay from ``replay_from`` may repeat."""
        start_char = 0
        for end_char, mark in reversed(self._marks):
            # A delta that arrived when the audio had reached ``mark`` holds words that end
            # before it: none of them is in audio replayed from ``mark`` on.
            if mark <= replay_from:
                start_char = end_char
                break
        tail = [w for w, _ in words_of(self._text[start_char:])]
        return tail[-80:]

    def _add_usage(self, usage: protocol.Usage | None) -> None:
        if usage is None:
            return
        self._usage_known = True
        self._usage = protocol.Usage(
            prompt_tokens=self._usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens + usage.completion_tokens,
        )


def _unsent_rest(sent: str, final: str) -> str:
    """The part of a stream's final text its deltas did not carry (deltas are the contract;
    a final text that disagrees with them is ignored)."""
    have, full = " ".join(sent.split()), " ".join(final.split())
    if not full.startswith(have) or len(full) <= len(have):
        return ""
    rest = full[len(have) :]
    return rest.lstrip() if sent[-1:].isspace() else rest


def _ended_error(ending: protocol.ErrorEvent | None) -> BackendError:
    if ending is None:
        return ConnectionLost("The stream closed before the final transcript.")
    if ending.code == protocol.ErrorCode.SESSION_TOO_LONG:
        return StreamExpired(f"The server ended the session at its maximum length: {ending.error}")
    if ending.code == protocol.ErrorCode.SERVER_BUSY:
        return Busy(f"The server is busy: {ending.error}")
    if ending.code == protocol.ErrorCode.PROCESSING_ERROR:
        return RemoteError(f"The engine could not transcribe: {ending.error}")
    return ConnectionLost(f"The server closed the session: {ending.error}")
