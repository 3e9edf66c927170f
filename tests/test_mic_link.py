"""The page's microphone connection over a real socket, with the real manager and engine.

The route runs under uvicorn on a loopback port, in its own loop on a thread, as in the app;
the client is a plain ``websockets`` client speaking the connection's protocol the way the
page's script does: hello, 50 ms frames with their offsets, stop. The sessions are real ones
on the bundled Whisper model, fed a real recording at 48 kHz.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import soxr
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from components.core.audio import load_file
from components.core.evaluation import Clip, wer
from components.page.manager import SessionManager
from components.page.mic_link import MicLink, parse_recording
from components.page.settings import BackendChoice, BackendKind, Settings
from tests.support_server import BackgroundLoop, serve_app

LOCAL = BackendChoice(BackendKind.LOCAL)
CLIP_ID = "librispeech-1272-128104-0000"  # 5.9 s: "mister quilter is the apostle of the..."
RATE = 48_000
FRAME = RATE // 20
WAIT = 30.0


@dataclass
class Served:
    """The ``/mic`` route under uvicorn, with the link and the manager behind it."""

    url: str
    link: MicLink
    manager: SessionManager

    def begin(self, owner: str, recording: str) -> tuple[str, Any]:
        """What the page's Record event does: the tab's token, then a session for the recording."""
        token = self.link.tokens.token_for(owner)
        return token, self.manager.start(owner, LOCAL, key=recording, source="microphone")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    manager = SessionManager(Settings(local_engine="whisper", max_sessions=4))
    manager.load_engine().result(timeout=120)
    link = MicLink(manager, start_wait=2.0)
    app = FastAPI()
    link.add_route(app)
    with BackgroundLoop() as bg, serve_app(bg, app) as url:
        yield Served(url.replace("http://", "ws://") + "/mic", link, manager)
    manager.shutdown()


@pytest.fixture(scope="module")
def speech(clips: dict[str, Clip]) -> tuple[np.ndarray, str]:
    """The clip as the page captures it: 48 kHz mono int16."""
    clip = clips[CLIP_ID]
    mono = soxr.resample(load_file(str(clip.path)), 16_000, RATE, quality="HQ")
    return np.clip(mono * 32767, -32768, 32767).astype(np.int16), clip.text


@pytest.fixture(scope="module")
def pcm(speech: tuple[np.ndarray, str]) -> np.ndarray:
    """The clip's samples alone, for the tests that do not check the words."""
    return speech[0]


def frame(pcm: np.ndarray, start: int) -> bytes:
    return struct.pack("<d", float(start)) + pcm.astype("<i2").tobytes()


def hello_frame(token: str, recording: str, rate: Any = RATE) -> str:
    return json.dumps({"type": "hello", "token": token, "recording": recording, "rate": rate})


async def receive(ws: ClientConnection) -> Any:
    """The next event from the server (a hang fails after ``WAIT``)."""
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def hello(ws: ClientConnection, token: str, recording: str) -> Any:
    await ws.send(hello_frame(token, recording))
    return await receive(ws)


async def stop(ws: ClientConnection) -> Any:
    """Send ``stop``; the server's answer."""
    await ws.send(json.dumps({"type": "stop"}))
    return await receive(ws)


async def close_code(ws: ClientConnection) -> int:
    """Wait for the server to close the connection; the code it closed with."""
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), WAIT)
    return ws.close_code or 0


async def send_frames(ws: ClientConnection, pcm: np.ndarray, start: int, end: int) -> int:
    """Frames of ``pcm[start:end]``, each acknowledged before the next; the last ack."""
    received = start
    for at in range(start, end, FRAME):
        await ws.send(frame(pcm[at : min(end, at + FRAME)], at))
        ack = await receive(ws)
        assert ack["type"] == "ack", ack
        received = ack["received"]
    return received


async def heard_whole(session: Any, pcm: np.ndarray, reference: str) -> Any:
    """The session once finished, holding every sample of ``pcm`` once and its words."""
    view = await session.wait_finished(120)
    assert view.samples_in == len(pcm), "a repeated or missing sample"
    assert view.samples_lost == 0
    assert wer(reference, view.text) <= 0.2, view.text
    return view


async def test_frames_reach_the_session_in_order_and_stop_comes_after_the_last(
    served: Served, speech: tuple[np.ndarray, str]
) -> None:
    pcm, reference = speech
    token, session = served.begin("tab-order", "recording-order-1")
    async with connect(served.url) as ws:
        assert await hello(ws, token, "recording-order-1") == {"type": "ready", "received": 0}
        assert await send_frames(ws, pcm, 0, len(pcm)) == len(pcm)
        assert await stop(ws) == {"type": "stopped", "received": len(pcm)}
        assert await close_code(ws) == 1000
    view = await heard_whole(session, pcm, reference)
    assert view.chunks_in == -(-len(pcm) // FRAME) and view.late_chunks == 0


async def test_a_dropped_connection_resumes_where_the_server_is_and_repeats_are_skipped(
    served: Served, speech: tuple[np.ndarray, str]
) -> None:
    pcm, reference = speech
    token, session = served.begin("tab-resume", "recording-resume-1")
    half = (len(pcm) // 2 // FRAME) * FRAME
    async with connect(served.url) as ws:
        await hello(ws, token, "recording-resume-1")
        assert await send_frames(ws, pcm, 0, half) == half
    # The network went away. The page comes back with everything it had not seen acknowledged,
    # here the last second again: the server says where it is and skips the repeat.
    async with connect(served.url) as ws:
        assert await hello(ws, token, "recording-resume-1") == {"type": "ready", "received": half}
        assert await send_frames(ws, pcm, half - RATE, len(pcm)) == len(pcm)
        assert (await stop(ws))["received"] == len(pcm)
    await heard_whole(session, pcm, reference)


async def test_a_newer_connection_replaces_the_older_one(served: Served, pcm: np.ndarray) -> None:
    token, session = served.begin("tab-twin", "recording-twin-1")
    async with connect(served.url) as old, connect(served.url) as new:
        await hello(old, token, "recording-twin-1")
        await send_frames(old, pcm, 0, FRAME)
        assert await hello(new, token, "recording-twin-1") == {"type": "ready", "received": FRAME}
        assert await close_code(old) == 4000
        assert await stop(new) == {"type": "stopped", "received": FRAME}
    assert (await session.wait_finished(120)).samples_in == FRAME


async def test_the_page_hears_when_its_session_ends_on_its_own(
    served: Served, pcm: np.ndarray
) -> None:
    token, _ = served.begin("tab-ended", "recording-ended-1")
    async with connect(served.url) as ws:
        await hello(ws, token, "recording-ended-1")
        await send_frames(ws, pcm, 0, 4 * FRAME)
        served.manager.clear("tab-ended")  # the Clear button, or the tab's session failing
        event = await receive(ws)
        while event["type"] == "ack":
            event = await receive(ws)
        assert event["type"] == "ended" and event["reason"], event


async def _refused(url: str, first: str | bytes, then: bytes | None = None) -> tuple[Any, int]:
    async with connect(url) as ws:
        await ws.send(first)
        event = await receive(ws)
        if then is not None:
            assert event["type"] == "ready", event
            await ws.send(then)
            event = await receive(ws)
        return event, await close_code(ws)


async def test_bad_input_gets_a_specific_error_and_the_connection_closes(
    served: Served, pcm: np.ndarray
) -> None:
    token, _ = served.begin("tab-bad", "recording-bad-1")
    cases: list[tuple[str | bytes, bytes | None, str, int]] = [
        (hello_frame("not-a-token", "recording-bad-1"), None, "forbidden", 1008),
        (hello_frame(token, "x"), None, "invalid_event", 1008),
        (hello_frame(token, "recording-bad-1", 1_000), None, "unsupported_rate", 1003),
        (hello_frame(token, "recording-bad-1", "48000"), None, "unsupported_rate", 1003),
        ("[]", None, "invalid_event", 1008),
        (json.dumps({"type": "stop"}), None, "invalid_event", 1008),
        (hello_frame(token, "recording-bad-1"), b"\x00\x01\x02", "invalid_frame", 1003),
        (hello_frame(token, "recording-bad-1"), frame(pcm[: RATE * 2], 0), "invalid_frame", 1003),
        (
            hello_frame(token, "recording-bad-1"),
            frame(pcm[:FRAME], 10 * RATE),
            "out_of_order",
            1008,
        ),
    ]
    for first, then, code, wanted_close in cases:
        event, closed_with = await _refused(served.url, first, then)
        assert event["type"] == "error" and event["code"] == code, (first, event)
        assert event["message"].endswith("."), event
        assert closed_with == wanted_close, (code, closed_with)


async def test_another_tabs_token_cannot_join_a_recording(served: Served) -> None:
    token, _ = served.begin("tab-owner", "recording-owned-1")
    intruder = served.link.tokens.token_for("tab-intruder")
    async with connect(served.url) as ws:
        await hello(ws, token, "recording-owned-1")
        event, _ = await _refused(served.url, hello_frame(intruder, "recording-owned-1"))
        assert event["code"] == "forbidden", event
        assert (await stop(ws))["type"] == "stopped"  # the owner was not disturbed


async def test_a_recording_the_page_never_started_is_refused_after_a_wait(served: Served) -> None:
    token = served.link.tokens.token_for("tab-unstarted")
    event, _ = await _refused(served.url, hello_frame(token, "recording-never-1"))
    assert event["code"] == "not_started" and "press Record again" in event["message"], event


def test_the_page_value_names_token_and_recording() -> None:
    good = json.dumps({"token": "t" * 24, "recording": "a1b2c3d4e5f6"})
    assert parse_recording(good) == ("t" * 24, "a1b2c3d4e5f6")
    for bad in (
        "",
        "{",
        "[]",
        json.dumps({"token": "t"}),
        json.dumps({"token": 1, "recording": "a1b2c3d4"}),
        json.dumps({"token": "t", "recording": "../../etc"}),
    ):
        assert parse_recording(bad) is None, bad
