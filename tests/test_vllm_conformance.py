"""Conformance: one scripted set of client sessions against vLLM's own server and ours.

Each session below is played on a fresh WebSocket against the real vLLM server (CPU build,
tiny Voxtral Realtime model) and against ``python -m components serve --engine vllm`` (the
same model, the same served name). What each server sends back is reduced to its shape —
event types, error codes, their order, with a run of deltas as one ``delta*`` — and the two
must be equal, except where :data:`INTENDED` says how ours differs and why; there the test
checks that ours does exactly what it says. README lists the same differences.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from components.audio import float_to_pcm16
from components.evaluation import Clip
from tests.support_server import ServerURL
from tests.support_vllm import SERVED_MODEL, VllmServer, metric

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # the first test starts vLLM

CLIP = "librispeech-1089-134691-0000"  # 2.1 s
CHUNK = 3200  # 100 ms of PCM16
QUIET = 1.5
"""After a step that may or may not be answered, how long silence means "no answer"."""
ANSWER = 120.0
"""The longest wait for an answer that must come (a busy 2-core machine, a cold engine)."""

UPDATE = json.dumps({"type": "session.update", "model": SERVED_MODEL})
COMMIT = '{"type": "input_audio_buffer.commit"}'
FINAL = '{"type": "input_audio_buffer.commit", "final": true}'


def append(b64: str) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": b64})


# A step is a frame to send, or one of these actions.
SPEECH = "<speech>"  # the clip, as 100 ms appends
HALF = "<first half of the speech>"
REST = "<second half of the speech>"
DONE = "<read until transcription.done>"
VANISH = "<drop the connection without a close frame>"

SESSIONS: dict[str, list[str]] = {
    "normal": [UPDATE, COMMIT, SPEECH, FINAL, DONE],
    "invalid JSON": ["{not json"],
    "unknown event": ['{"type": "response.create"}'],
    "bad base64": [UPDATE, append("%%%")],
    "odd byte count": [UPDATE, append("AA==")],
    "empty chunk": [UPDATE, append("")],
    "commit before session.update": [COMMIT],
    "session.update without model": ['{"type": "session.update"}'],
    "unknown model": ['{"type": "session.update", "model": "no-such-model"}'],
    "second commit while one runs": [UPDATE, COMMIT, HALF, COMMIT, REST, FINAL, DONE],
    "final commit twice": [UPDATE, COMMIT, SPEECH, FINAL, FINAL, DONE],
    "new request after done": [UPDATE, COMMIT, SPEECH, FINAL, DONE, COMMIT, SPEECH, FINAL, DONE],
    "final commit without a commit": [UPDATE, SPEECH, FINAL],
    "disconnect mid-request": [UPDATE, COMMIT, HALF, VANISH],
}


@dataclass(frozen=True)
class Intended:
    """How our server's answer differs from vLLM's, and why."""

    ours: list[str]
    why: str


INTENDED: dict[str, Intended] = {
    "final commit without a commit": Intended(
        ["session.created", "transcription.delta*", "transcription.done"],
        "a final commit with no request running transcribes the buffered audio (a file "
        "client's natural order); vLLM only ends an audio stream nobody reads, so the client "
        "waits forever",
    ),
}


@dataclass
class Played:
    """What one server sent during one session."""

    events: list[dict[str, Any]]
    closed: bool = False

    def shape(self) -> list[str]:
        shape: list[str] = []
        for event in self.events:
            kind = event["type"]
            if kind == "error":
                kind = f"error:{event.get('code')}"
            elif kind == "transcription.delta":
                kind = "transcription.delta*"
                if shape and shape[-1] == kind:
                    continue
            shape.append(kind)
        return shape

    def dones(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "transcription.done"]


async def receive(ws: ClientConnection, played: Played, within: float) -> dict[str, Any] | None:
    try:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
    except TimeoutError:
        return None
    except ConnectionClosed:
        played.closed = True
        return None
    played.events.append(event)
    return event


async def play(url: str, steps: list[str], speech: bytes) -> Played:
    played = Played([])
    ws = await connect(url, max_size=None)
    try:
        await receive(ws, played, ANSWER)  # session.created
        for step in steps:
            if step in (SPEECH, HALF, REST):
                half = len(speech) // 2 // CHUNK * CHUNK
                part = {SPEECH: speech, HALF: speech[:half], REST: speech[half:]}[step]
                for at in range(0, len(part), CHUNK):
                    chunk = part[at : at + CHUNK]
                    await ws.send(append(base64.b64encode(chunk).decode()))
            elif step == DONE:
                while (event := await receive(ws, played, ANSWER)) is not None:
                    if event["type"] in ("transcription.done", "error"):
                        break
            elif step == VANISH:
                ws.transport.abort()
                return played
            else:
                await ws.send(step)
                if step not in (COMMIT, FINAL):
                    await receive(ws, played, QUIET)  # an error, if this server answers one
        while await receive(ws, played, QUIET) is not None:  # anything still on its way
            pass
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
    return played


@pytest.fixture(scope="module")
def speech(clips: dict[str, Clip]) -> bytes:
    samples, rate = sf.read(clips[CLIP].path, dtype="float32")
    assert rate == 16_000
    return float_to_pcm16(samples)


@pytest.fixture(scope="module")
def played(
    vllm_server: VllmServer, vllm_engine_server: ServerURL, speech: bytes
) -> dict[str, tuple[Played, Played]]:
    """Every session, against vLLM's server and ours: {name: (vllm, ours)}."""

    async def both() -> dict[str, tuple[Played, Played]]:
        results = {}
        for name, steps in SESSIONS.items():
            theirs = await play(vllm_server.ws, steps, speech)
            ours = await play(vllm_engine_server.ws, steps, speech)
            results[name] = (theirs, ours)
        return results

    return asyncio.run(both())


@pytest.mark.parametrize("name", list(SESSIONS))
def test_session_shapes_match_vllm(name: str, played: dict[str, tuple[Played, Played]]) -> None:
    theirs, ours = played[name]
    assert theirs.shape()[0] == ours.shape()[0] == "session.created"
    if name in INTENDED:
        assert ours.shape() == INTENDED[name].ours, INTENDED[name].why
        assert ours.shape() != theirs.shape(), f"vLLM now does the same: drop {name!r}"
    else:
        assert ours.shape() == theirs.shape()
    assert not theirs.closed and not ours.closed, "neither server closes on a client error"
    for event in theirs.events + ours.events:
        if event["type"] == "error":
            assert isinstance(event["error"], str) and event["error"], event


def test_the_errors_are_the_expected_codes(played: dict[str, tuple[Played, Played]]) -> None:
    """A fixed point for the comparison: both sides could drift together."""
    expected = {
        "invalid JSON": "invalid_json",
        "unknown event": "unknown_event",
        "bad base64": "invalid_audio",
        "odd byte count": "invalid_audio",
        "empty chunk": "invalid_audio",
        "commit before session.update": "model_not_validated",
        "session.update without model": "invalid_event",
        "unknown model": "model_not_found",
    }
    for name, code in expected.items():
        theirs, _ = played[name]
        assert theirs.shape() == ["session.created", f"error:{code}"], name


def test_text_and_completion_tokens_are_vllms(played: dict[str, tuple[Played, Played]]) -> None:
    """Same model, same frames, greedy: the same text and tokens. Prompt tokens differ on
    purpose: vLLM reports the first frame's prompt only; ours counts every prompt token fed
    (the streaming prefix, then one per 80 ms frame), as vLLM's engine itself counts them."""
    for name in ("normal", "second commit while one runs", "new request after done"):
        theirs, ours = played[name]
        assert len(theirs.dones()) == len(ours.dones()) >= 1, name
        for their_done, our_done in zip(theirs.dones(), ours.dones(), strict=True):
            assert our_done["text"] == their_done["text"], name
            theirs_usage, ours_usage = their_done["usage"], our_done["usage"]
            assert set(ours_usage) == set(theirs_usage), name
            completion = theirs_usage["completion_tokens"]
            assert ours_usage["completion_tokens"] == completion, name
            assert ours_usage["prompt_tokens"] == theirs_usage["prompt_tokens"] + completion - 1


def test_a_vanished_client_leaves_no_request_behind(
    played: dict[str, tuple[Played, Played]],
    vllm_server: VllmServer,
    vllm_engine_server: ServerURL,
    speech: bytes,
) -> None:
    import httpx

    assert "disconnect mid-request" in played  # played before this runs

    def settled(read: Callable[[], float | None]) -> bool:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if read() == 0:
                return True
            time.sleep(0.2)
        return False

    assert settled(lambda: metric(vllm_server.url, "vllm:num_requests_running"))
    assert settled(lambda: httpx.get(f"{vllm_engine_server}/stats").json()["requests_active"])
    # Both still serve a full session afterwards.
    again = asyncio.run(play(vllm_engine_server.ws, SESSIONS["normal"], speech)).shape()
    assert again == ["session.created", "transcription.delta*", "transcription.done"]
