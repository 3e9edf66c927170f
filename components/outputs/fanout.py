"""One caption feed, many followers: each change is serialised once and pushed to every one.

A follower link is read by a whole room at once. Answering each reader on its own (a long
poll per phone, the whole text tail each time) makes the work per change grow with the room
and with the length of the session. Here a change becomes one event, built and serialised
once: an ``append`` (the text added since the previous event) when the confirmed text only
grew, else a ``snapshot`` of the tail. Each follower gets the same string in a small bounded
queue of its own; one that stops reading is not waited for: when its queue is full, what it
holds is dropped and its next event is a fresh snapshot (it skips to the latest). Nothing
here grows with the length of the session: an append carries only what is new, and a
snapshot only the tail a view shows.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass

TAIL_CHARS = 1200
"""Confirmed text a snapshot carries: far more than the few lines a view shows."""
QUEUE_EVENTS = 64
"""Events one follower may have waiting before it is skipped to the latest snapshot."""
_CHECK_CHARS = 32
"""How much of the text's end is compared to tell an append from a rewrite (not the whole)."""


@dataclass(frozen=True, slots=True)
class Captions:
    """What a follower shows of a session at one moment."""

    version: str
    text: str
    """The confirmed text so far (the whole of it: only its tail or its new end is sent)."""
    partial: str
    state: str
    session: str = ""
    """Which recording: a new one is always a snapshot."""


def snapshot_event(captions: Captions) -> str:
    return json.dumps(
        {
            "version": captions.version,
            "text": captions.text[-TAIL_CHARS:],
            "partial": captions.partial,
            "state": captions.state,
        },
        ensure_ascii=False,
    )


def change_event(before: Captions | None, after: Captions) -> str:
    """The event that takes a follower from ``before`` to ``after``: an append when the
    confirmed text only grew (checked on its end, not all of it), else a snapshot."""
    if before is not None and before.session == after.session:
        old, new = before.text, after.text
        n = len(old)
        if len(new) >= n and new[max(0, n - _CHECK_CHARS) : n] == old[-_CHECK_CHARS:]:
            return json.dumps(
                {
                    "version": after.version,
                    "append": new[n:],
                    "partial": after.partial,
                    "state": after.state,
                },
                ensure_ascii=False,
            )
    return snapshot_event(after)


class Follower:
    """One reader of a feed: a bounded queue of serialised events."""

    def __init__(self, limit: int = QUEUE_EVENTS) -> None:
        self._events: deque[str] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.skipped = 0
        """Times it fell behind and was skipped to the latest snapshot."""
        self.closed = False

    def offer(self, event: str, snapshot: str) -> None:
        """Queue ``event``; if the queue is full, drop it all for ``snapshot`` (the latest)."""
        if len(self._events) >= self._limit:
            self._events.clear()
            self.skipped += 1
            event = snapshot
        self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self, wait_seconds: float) -> str | None:
        """The next event; None after ``wait_seconds`` without one (or once closed)."""
        if not self._events and not self.closed:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), wait_seconds)
            except TimeoutError:
                return None
        return self._events.popleft() if self._events else None

    @property
    def waiting(self) -> int:
        return len(self._events)

    def queued(self) -> list[str]:
        """The events waiting to be read, oldest first."""
        return list(self._events)


class FanOut:
    """The followers of one feed and the latest captions they have been sent."""

    def __init__(self, limit: int = QUEUE_EVENTS) -> None:
        self._followers: set[Follower] = set()
        self._limit = limit
        self._latest: Captions | None = None
        self._snapshot: str | None = None

    def __len__(self) -> int:
        return len(self._followers)

    def subscribe(self) -> Follower:
        """A new follower; its first event is the latest snapshot, if there is one yet."""
        follower = Follower(self._limit)
        if self._snapshot is not None:
            follower.offer(self._snapshot, self._snapshot)
        self._followers.add(follower)
        return follower

    def unsubscribe(self, follower: Follower) -> None:
        self._followers.discard(follower)
        follower.close()

    def publish(self, captions: Captions) -> None:
        """Push a change to every follower (nothing if the version did not change)."""
        if self._latest is not None and captions.version == self._latest.version:
            return
        event = change_event(self._latest, captions)
        self._snapshot = snapshot_event(captions)
        self._latest = captions
        for follower in self._followers:
            follower.offer(event, self._snapshot)
