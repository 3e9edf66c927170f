"""The page's microphone connection: ordered PCM frames from a browser tab over one WebSocket.

The browser (``components/page/web/mic.js``) cuts the microphone into frames of 50 ms and sends
them, in order, over one WebSocket to ``mic`` next to the page (a relative URL, so it works
under a path prefix such as a Space's). Nothing here is Gradio's: the route is added to the
FastAPI app ``launch()`` returns. The connection is its own small protocol:

========  ===========================================================================
client    ``{"type": "hello", "token": T, "recording": R, "rate": 48000}``, text, first
server    ``{"type": "ready", "received": N}``: the samples of recording R it already has
          (0 on the first connection; more when a dropped connection comes back)
client    binary frames: the frame's first sample offset (float64, little-endian), then
          int16 little-endian mono PCM at ``rate``
server    ``{"type": "ack", "received": N}`` after each frame has reached the session
client    ``{"type": "stop"}`` after its last frame
server    ``{"type": "stopped", "received": N}``, then closes (1000)
server    ``{"type": "ended", "reason": ...}`` when the session ends on its own (an error,
          its length limit, Clear), then closes (1000)
server    ``{"type": "error", "code": ..., "message": ...}``, then closes (1008 or 1003)
========  ===========================================================================

Why this shape: the browser keeps every frame until it is acknowledged, so a connection that
drops (Wi-Fi at a venue) loses nothing: the page reconnects, learns ``received`` and sends
the rest; frames it sends twice are recognised by their offset and skipped. The browser sends
at most a couple of seconds ahead of the acknowledgements, so a slow server slows the sender
instead of filling memory on either side. ``stop`` travels behind the last frame on the same
ordered connection, so Stop can never overtake audio.

The session itself is started by the page's own Gradio event (which carries the backend
choice): ``hello`` names that recording, and this side waits briefly for it to exist. The
token is the tab's microphone token (:class:`~components.page.tab_tokens.TabTokens`), which only
that tab learns, so no other page can feed or end its recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from components.core.audio import MAX_RATE, MIN_RATE
from components.page.tab_tokens import TabTokens

if TYPE_CHECKING:
    from components.page.manager import SessionManager
    from components.page.session import CaptionSession

log = logging.getLogger(__name__)

PATH = "/mic"
START_WAIT_SECONDS = 15.0
"""How long ``hello`` waits for the page's own event to have started the recording's session."""

HELLO_SECONDS = 10.0
"""A connection that says nothing this long after opening is closed."""

MAX_FRAME_SECONDS = 1.0
"""A frame longer than this is refused: the page sends 50 ms, and memory stays bounded."""

HEADER = struct.Struct("<d")
RECORDING_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

MAX_RECORDINGS = 4096
"""Recordings remembered for a reconnect at once; finished ones are forgotten first."""


class LinkError(Exception):
    """A protocol violation: sent to the page as an ``error`` event, then the socket closes."""

    def __init__(self, code: str, message: str, close_code: int = 1008) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


@dataclass(slots=True)
class _Recording:
    """One recording's place in the stream of samples, kept across reconnections."""

    id: str
    owner: str
    session: CaptionSession
    rate: int
    received: int = 0
    socket: WebSocket | None = None
    stopped: bool = False


def parse_recording(value: Any) -> tuple[str, str] | None:
    """``(token, recording)`` from the page's microphone value (JSON), or None if malformed."""
    try:
        data = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    token, recording = data.get("token"), data.get("recording")
    if not isinstance(token, str) or not isinstance(recording, str):
        return None
    if not RECORDING_ID.match(recording):
        return None
    return token, recording


class MicLink:
    """The server side of every tab's microphone connection."""

    def __init__(
        self,
        manager: SessionManager,
        tokens: TabTokens | None = None,
        *,
        start_wait: float = START_WAIT_SECONDS,
    ) -> None:
        self.manager = manager
        self.tokens = tokens or TabTokens()
        self.start_wait = start_wait
        self._recordings: dict[str, _Recording] = {}

    def add_route(self, app: FastAPI) -> None:
        app.add_api_websocket_route(PATH, self.serve)

    # ------------------------------------------------------------------ one connection

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        lock = asyncio.Lock()
        recording: _Recording | None = None
        watcher: asyncio.Task[None] | None = None

        async def send(event: dict[str, Any]) -> None:
            async with lock:
                await ws.send_text(json.dumps(event))

        try:
            try:
                hello = await asyncio.wait_for(ws.receive_text(), HELLO_SECONDS)
            except TimeoutError:
                raise LinkError("no_hello", "The page did not introduce itself in time.") from None
            recording = await self._attach(ws, hello)
            await send({"type": "ready", "received": recording.received})
            watcher = asyncio.create_task(self._watch(recording, ws, send))
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                if recording.socket is not ws:
                    return  # a newer connection of the same recording took over
                data = message.get("bytes")
                if data is not None:
                    self._take(recording, data)
                    await send({"type": "ack", "received": recording.received})
                    continue
                event = _event(message.get("text"))
                if event.get("type") == "stop":
                    recording.stopped = True
                    recording.session.stop()
                    log.info(
                        "session %s: microphone stopped after %d samples",
                        recording.session.id,
                        recording.received,
                    )
                    await send({"type": "stopped", "received": recording.received})
                    await ws.close(1000)
                    return
                raise LinkError("invalid_event", "Expected audio frames or stop.")
        except LinkError as exc:
            sid = recording.session.id if recording else "-"
            log.warning("session %s: microphone connection refused: %s", sid, exc.message)
            with contextlib.suppress(Exception):
                await send({"type": "error", "code": exc.code, "message": exc.message})
                await ws.close(exc.close_code)
        except (WebSocketDisconnect, RuntimeError):
            if recording is not None and not recording.stopped:
                log.info(
                    "session %s: microphone connection dropped at %d samples",
                    recording.session.id,
                    recording.received,
                )
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher
            if recording is not None and recording.socket is ws:
                recording.socket = None
            self._prune()

    async def _attach(self, ws: WebSocket, text: str) -> _Recording:
        hello = _event(text)
        if hello.get("type") != "hello":
            raise LinkError("invalid_event", "The first message must be hello.")
        token, rid, rate = hello.get("token"), hello.get("recording"), hello.get("rate")
        owner = self.tokens.owner_of(token) if isinstance(token, str) else None
        if owner is None:
            raise LinkError("forbidden", "This page's microphone token is not valid: reload it.")
        if not isinstance(rid, str) or not RECORDING_ID.match(rid):
            raise LinkError("invalid_event", "The recording id is missing or malformed.")
        if not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            raise LinkError(
                "unsupported_rate",
                f"The microphone's sample rate must be {MIN_RATE}–{MAX_RATE} Hz.",
                1003,
            )
        recording = self._recordings.get(rid)
        if recording is None:
            session = await self._started(owner, rid)
            recording = self._recordings.get(rid)  # a twin connection may have won meanwhile
            if recording is None:
                recording = self._recordings[rid] = _Recording(rid, owner, session, rate)
                log.info("session %s: microphone connected at %d Hz", session.id, rate)
        elif recording.owner != owner:
            raise LinkError("forbidden", "This recording belongs to another page.")
        elif recording.rate != rate:
            raise LinkError(
                "unsupported_rate", "The microphone's sample rate changed: press Record again."
            )
        else:
            log.info(
                "session %s: microphone reconnected at %d samples",
                recording.session.id,
                recording.received,
            )
        previous, recording.socket = recording.socket, ws
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous.close(4000, "replaced by a newer connection")
        return recording

    async def _started(self, owner: str, rid: str) -> CaptionSession:
        """Wait for the page's start event to have created the recording's session."""
        deadline = time.monotonic() + self.start_wait
        while True:
            session = self.manager.current(owner)
            if session is not None and session.key == rid:
                return session
            if time.monotonic() > deadline:
                raise LinkError(
                    "not_started",
                    "The page did not start the recording in time: press Record again.",
                )
            await asyncio.sleep(0.02)

    def _take(self, recording: _Recording, data: bytes) -> None:
        """One frame into the session, in order; a repeat of audio already taken is skipped."""
        if len(data) < HEADER.size or (len(data) - HEADER.size) % 2:
            raise LinkError("invalid_frame", "An audio frame is malformed.", 1003)
        (offset,) = HEADER.unpack_from(data)
        samples = (len(data) - HEADER.size) // 2
        if samples > MAX_FRAME_SECONDS * recording.rate:
            raise LinkError("invalid_frame", "An audio frame is longer than 1 s.", 1003)
        if offset != int(offset) or offset < 0 or offset > recording.received:
            raise LinkError(
                "out_of_order", "Audio frames arrived out of order; press Record again."
            )
        skip = recording.received - int(offset)
        if skip >= samples:
            return  # sent again after a reconnect: already taken
        pcm = np.frombuffer(data, dtype="<i2", offset=HEADER.size + 2 * skip)
        recording.session.feed(recording.rate, pcm)
        recording.received += len(pcm)

    async def _watch(self, recording: _Recording, ws: WebSocket, send: Any) -> None:
        """Tell the page when its session ends on its own, so the microphone stops too."""
        session = recording.session
        while True:
            view = session.view()
            if (view.finished or not session.accepting) and not recording.stopped:
                reason = view.error or view.notice or "The session has ended."
                with contextlib.suppress(Exception):
                    await send({"type": "ended", "reason": reason})
                    await ws.close(1000)
                return
            await session.wait_changed(view.version, 0.5)

    def _prune(self) -> None:
        """Forget recordings whose session is over and whose page is gone, and the oldest
        beyond the bound."""
        for rid, rec in list(self._recordings.items()):
            if rec.socket is None and (rec.stopped or rec.session.view().finished):
                del self._recordings[rid]
        while len(self._recordings) > MAX_RECORDINGS:
            del self._recordings[next(iter(self._recordings))]

    def forget(self, owner: str) -> None:
        """The tab is gone: its token and recordings go with it."""
        self.tokens.forget(owner)
        for rid, rec in list(self._recordings.items()):
            if rec.owner == owner:
                del self._recordings[rid]


def _event(text: str | None) -> dict[str, Any]:
    try:
        event = json.loads(text or "")
    except ValueError:
        raise LinkError("invalid_event", "A control message is not JSON.") from None
    if not isinstance(event, dict):
        raise LinkError("invalid_event", "A control message must be a JSON object.")
    return event
