"""Our server against vLLM's own: one script of client sessions, played against both.

Every session below is played against the real vLLM server (``vllm_server``: CPU build, tiny
Voxtral Realtime model) and against ``python -m components serve --engine vllm`` on the same
model under the same served name (``vllm_engine_server``). What each server sends back is
reduced to a transcript of event types (``error:CODE`` for errors, a run of deltas as one
``transcription.delta*``, ``closed:CODE`` when the server closes the socket) and compared.

Each session states what vLLM does (``expect``); a session where our server deliberately
differs also states what ours does (``ours``) and names the reason in :data:`INTENDED`. The
test asserts both, so a change on either side fails it. The tiny model's weights are random
(its text is letters like "hhhh"): the transcripts compare structure; only the normal session
also checks that both servers produce the same text and tokens (same frames, greedy decoding).

No step waits for silence: "the server has answered everything so far" is a probe (an unknown
event type) and its ``unknown_event`` reply, which both servers send in order from the reader;
"the request has let go" is the server's own count of requests in flight.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from components.core.audio import float_to_pcm16
from components.core.evaluation import Clip
from components.core.protocol import (
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    SessionUpdate,
    serialize,
)
from tests.support_server import ServerURL
from tests.support_vllm import SERVED_MODEL, VllmServer, metric

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # the first test starts vLLM

CLIP = "librispeech-1089-134691-0000"  # 2.1 s of read speech
CHUNK = 3200  # bytes: 100 ms of PCM16 at 16 kHz
WAIT = 120.0
"""Seconds any one wait may take (two busy cores, a CPU model): generous, never asserted."""
PROBE = "conformance.probe"
"""An event type neither server knows: its ``unknown_event`` reply marks "all answered"."""

DELTAS = "transcription.delta*"
CREATED = "session.created"
DONE = "transcription.done"


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One server under test: its socket URL and how to read its live counters."""

    name: str
    ws: str
    requests: Callable[[], int]
    """Engine requests in flight now (vLLM's from ``/metrics``, ours from ``/stats``)."""
    sessions: Callable[[], int | None]
    """Open sessions, where the server counts them (vLLM does not)."""


def vllm_target(server: VllmServer) -> Target:
    def requests() -> int:
        # A streaming request waiting for its next audio counts as waiting, not running.
        names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
        return int(sum(metric(server, name) or 0 for name in names))

    return Target("vllm", server.ws, requests, lambda: None)


def our_target(url: ServerURL) -> Target:
    def stats() -> dict[str, Any]:
        return dict(httpx.get(f"{url}/stats", timeout=10.0).json())

    return Target(
        "ours",
        url.ws,
        lambda: int(stats()["requests_active"]),
        lambda: int(stats()["sessions_active"]),
    )


# --------------------------------------------------------------------------- playing


@dataclass
class Played:
    """What one server sent back during one session."""

    transcript: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def record(self, entry: str, event: dict[str, Any] | None = None) -> None:
        if event is not None:
            self.events.append(event)
        if entry == DELTAS and self.transcript[-1:] == [DELTAS]:
            return  # a run of deltas is one entry: their number depends on the text
        self.transcript.append(entry)

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "error"]

    def done(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == DONE]


def entry_of(event: dict[str, Any]) -> str:
    kind = str(event.get("type"))
    if kind == "error":
        return f"error:{event.get('code')}"
    if kind == "transcription.delta":
        return DELTAS
    return kind


def closed_entry(exc: ConnectionClosed) -> str:
    """``closed:CODE``; 1006 when the server dropped the connection without a close frame."""
    return f"closed:{exc.rcvd.code if exc.rcvd is not None else 1006}"


class Player:
    """Plays the steps of one session against one target, recording what comes back."""

    def __init__(self, target: Target, speech: bytes) -> None:
        self.target = target
        self.speech = speech
        self.played = Played()
        self.ws: ClientConnection | None = None
        self.closed = False
        self._probes = 0

    async def open(self) -> None:
        self.ws = await connect(self.target.ws, max_size=None)
        self.closed = False
        await self.receive_one()  # session.created, on accept

    async def aclose(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 10)

    def _closed(self, exc: ConnectionClosed) -> None:
        if not self.closed:
            self.closed = True
            self.played.record(closed_entry(exc))

    async def send(self, frame: str | bytes) -> None:
        assert self.ws is not None
        if self.closed:
            return
        try:
            await self.ws.send(frame)
        except ConnectionClosed as exc:
            self._closed(exc)

    async def receive_one(self) -> dict[str, Any] | None:
        """One event, recorded; ``None`` (and ``closed:CODE`` recorded) if the socket closed."""
        assert self.ws is not None
        if self.closed:
            return None
        try:
            frame = await asyncio.wait_for(self.ws.recv(), WAIT)
        except ConnectionClosed as exc:
            self._closed(exc)
            return None
        event = json.loads(frame)
        if event.get("type") == "error" and PROBE in str(event.get("error")):
            return event  # a probe's answer is bookkeeping, not part of the transcript
        self.played.record(entry_of(event), event)
        return event

    async def until_done(self) -> None:
        while not self.closed:
            event = await self.receive_one()
            if event is not None and event["type"] == DONE:
                return
        raise AssertionError(f"{self.target.name} closed before transcription.done")

    async def sync(self) -> None:
        """Everything the server's reader has answered so far: a probe, then its reply."""
        self._probes += 1
        marker = f"{PROBE}.{self._probes}"
        await self.send(json.dumps({"type": marker}))
        while not self.closed:
            event = await self.receive_one()
            if event is not None and marker in str(event.get("error")):
                return

    async def wait_requests(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while (now := await asyncio.to_thread(self.target.requests)) != count:
            assert time.monotonic() < deadline, f"{self.target.name}: {now} requests in flight"
            await asyncio.sleep(0.2)

    async def wait_alone(self) -> None:
        """Until this session is the server's only one (where the server counts sessions)."""
        deadline = time.monotonic() + WAIT
        while (now := await asyncio.to_thread(self.target.sessions)) not in (1, None):
            assert time.monotonic() < deadline, f"{self.target.name}: {now} sessions open"
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- steps


class Step(abc.ABC):
    """One thing the client does in a session."""

    @abc.abstractmethod
    async def play(self, player: Player) -> None: ...


@dataclass(frozen=True)
class Send(Step):
    """Send one raw frame (text, or bytes for a binary frame)."""

    frame: str | bytes

    async def play(self, player: Player) -> None:
        await player.send(self.frame)


@dataclass(frozen=True)
class Speak(Step):
    """Append the clip's speech from ``start`` to ``stop`` seconds, in 100 ms chunks."""

    start: float = 0.0
    stop: float | None = None

    async def play(self, player: Player) -> None:
        audio = player.speech
        end = len(audio) if self.stop is None else int(self.stop * 16_000) * 2
        for at in range(int(self.start * 16_000) * 2, min(end, len(audio)), CHUNK):
            await player.send(serialize(InputAudioBufferAppend(audio[at : min(at + CHUNK, end)])))


class UntilDone(Step):
    """Read (and record) events up to and including ``transcription.done``."""

    async def play(self, player: Player) -> None:
        await player.until_done()


class Sync(Step):
    """Read whatever the server has answered to every frame sent so far."""

    async def play(self, player: Player) -> None:
        await player.sync()


@dataclass(frozen=True)
class Requests(Step):
    """Wait until the server reports ``count`` engine requests in flight (not recorded)."""

    count: int

    async def play(self, player: Player) -> None:
        await player.wait_requests(self.count)


class Vanish(Step):
    """Drop the connection without a close frame, then connect afresh."""

    async def play(self, player: Player) -> None:
        assert player.ws is not None
        player.ws.transport.abort()
        await player.aclose()
        player.played.record("reconnect")
        await player.open()


@dataclass(frozen=True)
class Crowd(Step):
    """Open ``extra`` more connections at once; record what each gets; close them."""

    extra: int

    async def play(self, player: Player) -> None:
        await player.wait_alone()
        others = [Player(player.target, player.speech) for _ in range(self.extra)]
        try:
            for other in others:
                await other.open()
                await other.sync()
        finally:
            for other in others:
                await other.aclose()
        for other in others:
            for entry in other.played.transcript:
                player.played.record(f"extra:{entry}")


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def append(audio: str) -> str:
    return event("input_audio_buffer.append", audio=audio)


UPDATE = Send(serialize(SessionUpdate(model=SERVED_MODEL)))
COMMIT = Send(serialize(InputAudioBufferCommit()))
FINAL = Send(serialize(InputAudioBufferCommit(final=True)))
REQUEST: tuple[Step, ...] = (COMMIT, Speak(), FINAL, UntilDone())
"""One whole transcription request on a validated session."""
ODD_AUDIO = base64.b64encode(b"\x00\x01\x02").decode()  # "AAEC": 3 bytes, not whole samples


# --------------------------------------------------------------------------- the script


INTENDED: dict[str, str] = {
    "usage": (
        "usage.prompt_tokens: vLLM reports the first frame's prompt only; we count every "
        "prompt token fed to the engine (the streaming prefix, then one per 80 ms frame), "
        "which is what the model read and what the request cost"
    ),
    "final-starts": (
        "a final commit with no transcription running transcribes the audio appended so far "
        "(a client streaming a file naturally sends appends, then one final commit); vLLM "
        "only marks the end of the audio and waits for a non-final commit that never comes"
    ),
    "binary": (
        "a binary frame is refused with invalid_frame and the session goes on; vLLM cannot "
        "read it and drops the connection without an error event or a close frame"
    ),
    "session-limit": (
        "sessions are limited (by default to the engine's max_num_seqs): one more is told "
        "server_busy and closed with 1013; vLLM accepts every connection"
    ),
    "options": (
        "language and prompt in session.update: vLLM 0.32 ignores both; we refuse what the "
        "engine cannot honour (a language outside Voxtral Realtime's 13, any prompt, a code "
        "that is not ISO-639-1) with an error event, and the session goes on"
    ),
    "not-an-object": (
        "JSON that is not an object is invalid_json; vLLM fails on it inside its handler and "
        "answers processing_error with a Python message"
    ),
    "append-without-audio": (
        "an append without 'audio' is invalid_audio; vLLM's validation error surfaces as "
        "processing_error with a pydantic message"
    ),
}
"""Each way our server deliberately differs in what this script plays, and why (docs/server.md)."""

UNSCRIPTED: dict[str, str] = {
    "idle_timeout": "no event for LIVE_CAPTIONS_IDLE_TIMEOUT s (60): error, close 1008",
    "session_too_long": "a session longer than LIVE_CAPTIONS_MAX_SESSION_SECONDS: error, 1008",
    "audio_buffer_full": "audio queued with nothing draining it beyond the bounded buffer",
    "api key": "with LIVE_CAPTIONS_API_KEY set, /v1/* needs Authorization: Bearer <key>",
    "transcription.partial": "only to a client that sent partials: true (never on Voxtral)",
}
"""Differences too slow or too configuration-bound to play here; tests/test_server.py has them."""


@dataclass(frozen=True)
class Session:
    """A scripted client session and what vLLM (and, where it differs, ours) answers."""

    name: str
    steps: Sequence[Step]
    expect: Sequence[str]
    """vLLM's transcript; ours is the same unless ``ours`` is given."""
    ours: Sequence[str] | None = None
    differs: str | None = None
    """The key in :data:`INTENDED` saying why ``ours`` differs."""


SESSIONS: tuple[Session, ...] = (
    Session("normal", (UPDATE, *REQUEST, Sync()), [CREATED, DELTAS, DONE]),
    Session("invalid JSON", (Send("{not json"), Sync()), [CREATED, "error:invalid_json"]),
    Session(
        "JSON that is not an object",
        (Send("[1, 2]"), Sync()),
        [CREATED, "error:processing_error"],
        ours=[CREATED, "error:invalid_json"],
        differs="not-an-object",
    ),
    Session(
        "unknown event type",
        (Send(event("response.create")), Sync()),
        [CREATED, "error:unknown_event"],
    ),
    Session(
        "append with bad base64",
        (UPDATE, Send(append("not base64!")), Sync()),
        [CREATED, "error:invalid_audio"],
    ),
    Session(
        "append with an odd byte count",
        (UPDATE, Send(append(ODD_AUDIO)), Sync()),
        [CREATED, "error:invalid_audio"],
    ),
    Session(
        "append with empty audio",
        (UPDATE, Send(append("")), Sync()),
        [CREATED, "error:invalid_audio"],
    ),
    Session(
        "append without audio",
        (UPDATE, Send(event("input_audio_buffer.append")), Sync()),
        [CREATED, "error:processing_error"],
        ours=[CREATED, "error:invalid_audio"],
        differs="append-without-audio",
    ),
    Session(
        "binary frame",
        (UPDATE, Send(b"\x00\x01\x02\x03"), Sync()),
        [CREATED, "closed:1006"],
        ours=[CREATED, "error:invalid_frame"],
        differs="binary",
    ),
    Session(
        "errors leave the session usable",
        (Send("{not json"), Send(event("nope")), UPDATE, Send(append("")), *REQUEST, Sync()),
        [CREATED, "error:invalid_json", "error:unknown_event", "error:invalid_audio", DELTAS, DONE],
    ),
    Session(
        "commit before session.update",
        (COMMIT, Speak(0, 0.5), FINAL, Sync()),
        [CREATED, "error:model_not_validated", "error:model_not_validated"],
    ),
    Session(
        "session.update without model",
        (Send(event("session.update")), COMMIT, Sync()),
        [CREATED, "error:invalid_event", "error:model_not_validated"],
    ),
    Session(
        "unknown model",
        (Send(event("session.update", model="no-such-model")), COMMIT, Sync()),
        [CREATED, "error:model_not_found", "error:model_not_validated"],
    ),
    Session(
        "session.update with keys beyond model",
        (
            Send(event("session.update", model=SERVED_MODEL, language="fr", voice="x")),
            Send(event("session.update", model=SERVED_MODEL, partials=True, context="In the air,")),
            *REQUEST,
            Sync(),
        ),
        [CREATED, DELTAS, DONE],
    ),
    Session(
        "session options the engine cannot honour",
        (
            Send(event("session.update", model=SERVED_MODEL, language="sv")),
            Send(event("session.update", model=SERVED_MODEL, prompt="Hester Prynne")),
            Send(event("session.update", model=SERVED_MODEL, language="xx")),
            UPDATE,
            *REQUEST,
            Sync(),
        ),
        [CREATED, DELTAS, DONE],
        ours=[
            CREATED,
            "error:unsupported_language",
            "error:prompt_not_supported",
            "error:unknown_language",
            DELTAS,
            DONE,
        ],
        differs="options",
    ),
    Session(
        "second commit while one runs",
        (UPDATE, COMMIT, Speak(0, 1.0), COMMIT, Speak(1.0), FINAL, UntilDone(), Sync()),
        [CREATED, DELTAS, DONE],
    ),
    Session(
        "final commit twice",
        (UPDATE, COMMIT, Speak(), FINAL, FINAL, UntilDone(), Sync()),
        [CREATED, DELTAS, DONE],
    ),
    Session(
        "final commit after done",
        # The second final commit comes after the request has finished, with no audio since:
        # it must not start an empty transcription.
        (UPDATE, COMMIT, Speak(), FINAL, UntilDone(), FINAL, Sync(), Requests(0), Sync()),
        [CREATED, DELTAS, DONE],
    ),
    Session(
        "final commit alone",
        # Once the reader has answered (Sync), ours has started its request; when no request
        # is left in flight, whatever it sent is in before the second probe's answer.
        (UPDATE, Speak(), FINAL, Sync(), Requests(0), Sync()),
        [CREATED],
        ours=[CREATED, DELTAS, DONE],
        differs="final-starts",
    ),
    Session(
        "new request after done",
        (UPDATE, *REQUEST, *REQUEST, Sync()),
        [CREATED, DELTAS, DONE, DELTAS, DONE],
    ),
    Session(
        "disconnect mid-request",
        # The request is in flight, the client vanishes: the server lets go of it and goes on.
        (UPDATE, COMMIT, Speak(0, 1.0), Requests(1), Vanish(), Requests(0), UPDATE, *REQUEST),
        [CREATED, "reconnect", CREATED, DELTAS, DONE],
    ),
    Session(
        "more sessions than the engine has sequences",
        (Crowd(2),),
        [CREATED, "extra:session.created", "extra:session.created"],
        ours=[CREATED, "extra:session.created", "extra:error:server_busy", "extra:closed:1013"],
        differs="session-limit",
    ),
)


async def play(target: Target, session: Session, speech: bytes) -> Played:
    """Play one session on a fresh connection; return what the server sent back."""
    player = Player(target, speech)
    await player.open()
    try:
        for step in session.steps:
            await step.play(player)
    finally:
        await player.aclose()
    return player.played


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def speech(clips: dict[str, Clip]) -> bytes:
    samples, rate = sf.read(clips[CLIP].path, dtype="float32")
    assert rate == 16_000 and samples.ndim == 1
    return float_to_pcm16(samples)


@pytest.fixture(scope="module")
def targets(vllm_server: VllmServer, vllm_engine_server: ServerURL) -> tuple[Target, Target]:
    return vllm_target(vllm_server), our_target(vllm_engine_server)


def test_the_script_is_consistent() -> None:
    assert len(base64.b64decode(ODD_AUDIO)) % 2 == 1
    names = [s.name for s in SESSIONS]
    assert len(set(names)) == len(names)
    for session in SESSIONS:
        assert (session.ours is None) == (session.differs is None), session.name
        assert session.ours != session.expect, session.name
    exercised = {s.differs for s in SESSIONS if s.differs} | {"usage"}
    assert exercised == set(INTENDED), "each intended difference is played, and only those"


@pytest.mark.parametrize("session", SESSIONS, ids=[s.name for s in SESSIONS])
async def test_session(session: Session, targets: tuple[Target, Target], speech: bytes) -> None:
    vllm, ours = targets
    theirs = await play(vllm, session, speech)
    mine = await play(ours, session, speech)
    assert theirs.transcript == list(session.expect), f"vLLM changed: {theirs.events}"
    if session.ours is None:
        assert mine.transcript == theirs.transcript, f"ours: {mine.events}"
        # Our messages say what vLLM's say, some with a detail after it.
        for our_error, their_error in zip(mine.errors(), theirs.errors(), strict=True):
            assert our_error["error"].startswith(their_error["error"]), (our_error, their_error)
    else:
        assert mine.transcript == list(session.ours), (INTENDED[str(session.differs)], mine.events)
    for played in (theirs, mine):
        for done in played.done():
            usage = done["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            assert usage["completion_tokens"] > 0 and done["text"], done


async def test_same_fields_text_and_completion_tokens_and_our_prompt_count(
    targets: tuple[Target, Target], speech: bytes
) -> None:
    """Same model, same frames, greedy decoding: vLLM's fields, text and completion tokens.

    ``prompt_tokens`` is the intended difference (:data:`INTENDED` ``usage``): vLLM's is the
    first frame's prompt; ours adds the one token of every later frame, one per completion
    token but the last.
    """
    vllm, ours = targets
    theirs = await play(vllm, SESSIONS[0], speech)
    mine = await play(ours, SESSIONS[0], speech)

    def fields(played: Played) -> dict[str, set[str]]:
        shapes: dict[str, set[str]] = {}
        for one in played.events:
            shapes.setdefault(one["type"], set()).update(one)
            if one["type"] == DONE:
                shapes.setdefault("usage", set()).update(one["usage"])
        return shapes

    ours_fields = fields(mine)
    # The intended extra field: when our server will end the session (docs/long-sessions.md).
    assert "expires_at" in ours_fields["session.created"]
    assert "expires_at" not in fields(theirs)["session.created"]
    ours_fields["session.created"].discard("expires_at")
    assert ours_fields == fields(theirs)
    (their_done,) = theirs.done()
    (our_done,) = mine.done()
    for done, played in ((their_done, theirs), (our_done, mine)):
        text = "".join(e["delta"] for e in played.events if e["type"] == "transcription.delta")
        assert done["text"] == text
    assert our_done["text"] == their_done["text"]
    their_usage, our_usage = their_done["usage"], our_done["usage"]
    completion = their_usage["completion_tokens"]
    assert our_usage["completion_tokens"] == completion
    assert our_usage["prompt_tokens"] == their_usage["prompt_tokens"] + completion - 1
