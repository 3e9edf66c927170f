"""Delivery of a session's captions to its outputs: each on its own, none slowing the captions.

Every output has its own bounded queue of posts and its own task (:class:`Delivery`). The
session only hands confirmed text to :meth:`CaptionOutputs.feed`, which breaks it into posts
(:mod:`~components.outputs.lines`) and returns at once: a slow or failing platform never
blocks the session, another output, or the speaker's captions. While a platform is slow, what
waits is coalesced into its next post (up to what one post may carry); a failed post is tried
again, the same post, after a growing pause (or the pause the platform asked for); a post the
platform can never take (an expired link) stops that output with a sentence saying what to do.
Past :data:`MAX_WAITING_POSTS` the oldest waiting posts are dropped and counted: captions
minutes late help nobody, and memory stays bounded through a day-long outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from components.outputs.base import OutputError, Sink
from components.outputs.lines import CaptionLines, Post, merge
from components.outputs.targets import OutputKind, Target

log = logging.getLogger(__name__)

MAX_WAITING_POSTS = 512
"""Posts an output holds while its platform does not take them (minutes of speech)."""
TICK_SECONDS = 0.1
"""How often waiting words are checked against their hold time."""
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 8.0
FINISH_SECONDS = 15.0
"""How long an output may go on trying after its session ended."""


@dataclass(frozen=True, slots=True)
class OutputStatus:
    """What the page and the command line show of one output."""

    kind: str
    label: str
    masked: str
    state: str
    """``connecting``, ``live``, ``retrying``, ``failed`` or ``done``."""
    posts: int
    words: int
    lag_p95: float | None
    """Seconds from a word's confirmation to the platform's answer to its post (p95)."""
    last_error: str | None
    dropped_words: int
    """Words the platform never got (it refused for good, or they waited too long)."""
    unconfirmed_words: int = 0
    """Words sent once without an answer, to a platform that would show them twice if sent
    again (Teams, OBS)."""


@dataclass
class _Figures:
    posts: int = 0
    words: int = 0
    dropped_words: int = 0
    unconfirmed_words: int = 0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    last_error: str | None = None
    state: str = "connecting"


class Delivery:
    """One output: its caption lines, its queue of posts and the task that sends them."""

    def __init__(
        self,
        sink: Sink,
        *,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
        max_waiting: int = MAX_WAITING_POSTS,
    ) -> None:
        self.sink = sink
        self.label = label or sink.target.label
        self._clock = clock
        self._lines = CaptionLines(sink.width, single_line=sink.single_line)
        self._waiting: deque[Post] = deque()
        self._max_waiting = max_waiting
        self._wake = asyncio.Event()
        self._ended = False
        self._figures = _Figures()
        self._last_post = -math.inf
        self._in_flight: Post | None = None
        self.delivered: list[Post] = []
        """Every post the platform took, in order (kept only when ``keep`` is set)."""
        self.keep = False

    # ------------------------------------------------------------------ the session's side

    def feed(self, text: str) -> None:
        """Confirmed text; returns at once (the loop's thread only)."""
        posts = self._lines.add(text, self._clock())
        if self._figures.state == "failed":
            self._figures.dropped_words += sum(p.words for p in posts)
        else:
            self._queue(posts)

    def pause(self) -> None:
        """The speaker paused: what waits goes out now."""
        self._queue(self._lines.flush())

    def end(self) -> None:
        self._queue(self._lines.flush())
        self._ended = True
        self._wake.set()

    def lags(self) -> list[float]:
        """Seconds from confirmation to the platform's answer, for the latest posts."""
        return list(self._figures.lags)

    @property
    def waiting_posts(self) -> int:
        """Posts queued for the platform now (at most ``max_waiting``)."""
        return len(self._waiting)

    def status(self) -> OutputStatus:
        f = self._figures
        lags = sorted(f.lags)
        p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))] if lags else None
        return OutputStatus(
            kind=self.sink.target.kind.value,
            label=self.label,
            masked=self.sink.target.masked(),
            state=f.state,
            posts=f.posts,
            words=f.words,
            lag_p95=p95,
            last_error=f.last_error,
            unconfirmed_words=f.unconfirmed_words,
            dropped_words=f.dropped_words
            + (sum(p.words for p in self._waiting) if f.state in ("failed", "done") else 0),
        )

    # ------------------------------------------------------------------ the output's task

    async def run(self) -> None:
        """Send posts until the session ended and everything went out (or cannot)."""
        backoff = BACKOFF_FIRST
        idle_since = self._clock()
        try:
            while True:
                self._queue(self._lines.tick(self._clock()))
                if not self._waiting:
                    if self._ended:
                        break
                    every = self.sink.heartbeat_every
                    if every is not None and self._clock() - idle_since >= every:
                        with contextlib.suppress(OutputError):
                            await self.sink.heartbeat()
                        idle_since = self._clock()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
                    continue
                gap = self._last_post + self.sink.min_interval - self._clock()
                if gap > 0:
                    await asyncio.sleep(gap)
                    continue
                post = self._in_flight = self._take()
                taken = True
                while True:  # the same post until it goes through
                    try:
                        await self.sink.post(post)
                        break
                    except OutputError as exc:
                        if exc.uncertain and not self.sink.idempotent:
                            self._unconfirmed(post, exc)  # sent again, it could show twice
                            taken = False
                            break
                        self._failed(exc)
                        if not exc.retry:
                            return
                        await asyncio.sleep(exc.wait if exc.wait is not None else backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        self._queue(self._lines.tick(self._clock()))
                backoff = BACKOFF_FIRST
                self._in_flight = None
                if taken:
                    self._delivered(post)
                idle_since = self._last_post = self._clock()
        finally:
            if self._in_flight is not None:  # refused for good, or still failing at the end
                self._figures.dropped_words += self._in_flight.words
                self._in_flight = None
            if self._figures.state != "failed":
                self._figures.state = "done" if not self._waiting else "failed"

    def _take(self) -> Post:
        """The oldest waiting post, with as many of those after it as one post may carry."""
        posts = [self._waiting.popleft()]
        size = len(posts[0].text)
        while self._waiting and size + 1 + len(self._waiting[0].text) <= self.sink.max_chars:
            size += 1 + len(self._waiting[0].text)
            posts.append(self._waiting.popleft())
        return merge(posts)

    def _queue(self, posts: Iterable[Post]) -> None:
        added = False
        for post in posts:
            self._waiting.append(post)
            added = True
        while len(self._waiting) > self._max_waiting:
            self._figures.dropped_words += self._waiting.popleft().words
        if added:
            self._wake.set()

    def _failed(self, exc: OutputError) -> None:
        f = self._figures
        if f.last_error != exc.message:
            log.warning("%s: %s", self.label, exc.message)
        f.last_error = exc.message
        f.state = "retrying" if exc.retry else "failed"
        if not exc.retry:
            f.dropped_words += sum(p.words for p in self._waiting)
            self._waiting.clear()

    def _unconfirmed(self, post: Post, exc: OutputError) -> None:
        f = self._figures
        f.unconfirmed_words += post.words
        f.last_error = (
            f"{exc.message} Its last {post.words} words may not have arrived; they are not "
            "sent again (they would show twice)."
        )
        log.warning("%s: %s", self.label, f.last_error)

    def _delivered(self, post: Post) -> None:
        f = self._figures
        f.posts += 1
        f.words += post.words
        f.lags.append(max(0.0, self._clock() - post.confirmed_at))
        if f.state != "live":
            log.info("%s: delivering captions", self.label)
        f.state = "live"
        f.last_error = None
        if self.keep:
            self.delivered.append(post)


def describe(status: OutputStatus) -> str:
    """One line on an output, for a terminal or the page."""
    if status.state == "failed":
        return status.last_error or "failed."
    lag = "" if status.lag_p95 is None else f", lag p95 {status.lag_p95:.1f} s"
    text = f"{status.words} words in {status.posts} posts{lag}"
    if status.dropped_words:
        text += f", {status.dropped_words} words not delivered"
    if status.unconfirmed_words:
        text += f", {status.unconfirmed_words} words unconfirmed"
    if status.state == "retrying" and status.last_error:
        text += f"; {status.last_error}"
    return text


def make_sink(target: Target, *, language: str | None = None) -> Sink:
    """The sink for ``target``'s platform (imported here, so each platform's module is only
    loaded by sessions that send to it)."""
    if target.kind is OutputKind.ZOOM:
        from components.outputs.zoom import ZoomSink

        return ZoomSink(target, language=language)
    if target.kind is OutputKind.YOUTUBE:
        from components.outputs.youtube import YouTubeSink

        return YouTubeSink(target)
    if target.kind is OutputKind.TEAMS:
        from components.outputs.teams import TeamsSink

        return TeamsSink(target)
    from components.outputs.obs import ObsSink

    return ObsSink(target)


class CaptionOutputs:
    """A session's outputs: confirmed text in, one delivery task per output."""

    def __init__(
        self,
        targets: Iterable[Target],
        *,
        session: str = "",
        language: str | None = None,
        sink_factory: Callable[[Target], Sink] | None = None,
    ) -> None:
        factory = sink_factory or (lambda t: make_sink(t, language=language))
        self.session = session
        self.deliveries = [
            Delivery(factory(t), label=f"session {session}: {t.label}" if session else "")
            for t in targets
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def __bool__(self) -> bool:
        return bool(self.deliveries)

    def start(self) -> None:
        """Start every output's task (on the running loop)."""
        self._tasks = [
            asyncio.get_running_loop().create_task(d.run(), name=f"caption-output-{d.label}")
            for d in self.deliveries
        ]

    def feed(self, text: str) -> None:
        for d in self.deliveries:
            d.feed(text)

    def pause(self) -> None:
        for d in self.deliveries:
            d.pause()

    def statuses(self) -> tuple[OutputStatus, ...]:
        return tuple(d.status() for d in self.deliveries)

    async def finish(self, grace: float = FINISH_SECONDS) -> tuple[OutputStatus, ...]:
        """The session ended: send what waits (for at most ``grace`` seconds), then close."""
        for d in self.deliveries:
            d.end()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for d in self.deliveries:
            with contextlib.suppress(Exception):
                await d.sink.aclose()
        return self.statuses()

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for d in self.deliveries:
            with contextlib.suppress(Exception):
                await d.sink.aclose()
