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


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, MicLink, SessionManager]]:
    manager = SessionManager(Settings(local_engine="whisper", max_sessions=4))
    manager.load_engine().result(timeout=120)
    link = MicLink(manager, start_wait=2.0)
    app = FastAPI()
    link.add_route(app)
    with BackgroundLoop() as bg, serve_app(bg, app) as url:
        yield url.replace("http://", "ws://") + "/mic", link, manager
    manager.shutdown()


@pytest.fixture(scope="module")
def speech(clips: dict[str, Clip]) -> tuple[np.ndarray, str]:
    """The clip as the page captures it: 48 kHz mono int16."""
    clip = clips[CLIP_ID]
    mono = soxr.resample(load_file(str(clip.path)), 16_000, RATE, quality="HQ")
    return np.clip(mono * 32767, -32768, 32767).astype(np.int16), clip.text


def frame(pcm: np.ndarray, start: int) -> bytes:
    return struct.pack("<d", float(start)) + pcm.astype("<i2").tobytes()


async def hello(ws: ClientConnection, token: str, recording: str, rate: int = RATE) -> Any:
    await ws.send(
        json.dumps({"type": "hello", "token": token, "recording": recording, "rate": rate})
    )
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def send_frames(ws: ClientConnection, pcm: np.ndarray, start: int, end: int) -> int:
    """Frames of ``pcm[start:end]``, each acknowledged before the next; the last ack."""
    received = start
    for at in range(start, end, FRAME):
        await ws.send(frame(pcm[at : min(end, at + FRAME)], at))
        ack = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert ack["type"] == "ack", ack
        received = ack["received"]
    return received


def begin(manager: SessionManager, link: MicLink, owner: str, recording: str) -> Any:
    """What the page's Record event does: the tab's token, then a session for the recording."""
    token = link.tokens.token_for(owner)
    return token, manager.start(owner, LOCAL, key=recording, source="microphone")


async def test_frames_reach_the_session_in_order_and_stop_comes_after_the_last(
    served: tuple[str, MicLink, SessionManager], speech: tuple[np.ndarray, str]
) -> None:
    url, link, manager = served
    pcm, reference = speech
    token, session = begin(manager, link, "tab-order", "recording-order-1")
    async with connect(url) as ws:
        assert await hello(ws, token, "recording-order-1") == {"type": "ready", "received": 0}
        assert await send_frames(ws, pcm, 0, len(pcm)) == len(pcm)
        await ws.send(json.dumps({"type": "stop"}))
        stopped = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert stopped == {"type": "stopped", "received": len(pcm)}
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)
        assert ws.close_code == 1000
    view = await session.wait_finished(120)
    assert view.samples_in == len(pcm) and view.chunks_in == -(-len(pcm) // FRAME)
    assert view.samples_lost == 0 and view.late_chunks == 0
    assert wer(reference, view.text) <= 0.2, view.text


async def test_a_dropped_connection_resumes_where_the_server_is_and_repeats_are_skipped(
    served: tuple[str, MicLink, SessionManager], speech: tuple[np.ndarray, str]
) -> None:
    url, link, manager = served
    pcm, reference = speech
    token, session = begin(manager, link, "tab-resume", "recording-resume-1")
    half = (len(pcm) // 2 // FRAME) * FRAME
    async with connect(url) as ws:
        await hello(ws, token, "recording-resume-1")
        assert await send_frames(ws, pcm, 0, half) == half
    # The network went away. The page comes back with everything it had not seen acknowledged,
    # here the last second again: the server says where it is and skips the repeat.
    async with connect(url) as ws:
        assert await hello(ws, token, "recording-resume-1") == {"type": "ready", "received": half}
        assert await send_frames(ws, pcm, half - RATE, len(pcm)) == len(pcm)
        await ws.send(json.dumps({"type": "stop"}))
        assert json.loads(await ws.recv())["received"] == len(pcm)
    view = await session.wait_finished(120)
    assert view.samples_in == len(pcm), "a repeated or missing sample"
    assert view.samples_lost == 0
    assert wer(reference, view.text) <= 0.2, view.text


async def test_a_newer_connection_replaces_the_older_one(
    served: tuple[str, MicLink, SessionManager], speech: tuple[np.ndarray, str]
) -> None:
    url, link, manager = served
    pcm, _ = speech
    token, session = begin(manager, link, "tab-twin", "recording-twin-1")
    async with connect(url) as old, connect(url) as new:
        await hello(old, token, "recording-twin-1")
        await send_frames(old, pcm, 0, FRAME)
        assert await hello(new, token, "recording-twin-1") == {"type": "ready", "received": FRAME}
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(old.recv(), WAIT)
        assert old.close_code == 4000
        await new.send(json.dumps({"type": "stop"}))
        assert json.loads(await new.recv()) == {"type": "stopped", "received": FRAME}
    assert (await session.wait_finished(120)).samples_in == FRAME


async def test_the_page_hears_when_its_session_ends_on_its_own(
    served: tuple[str, MicLink, SessionManager], speech: tuple[np.ndarray, str]
) -> None:
    url, link, manager = served
    pcm, _ = speech
    token, _ = begin(manager, link, "tab-ended", "recording-ended-1")
    async with connect(url) as ws:
        await hello(ws, token, "recording-ended-1")
        await send_frames(ws, pcm, 0, 4 * FRAME)
        manager.clear("tab-ended")  # the Clear button, or the tab's session failing
        event = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        while event["type"] == "ack":
            event = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert event["type"] == "ended" and event["reason"], event


async def _refused(url: str, first: str | bytes, then: bytes | None = None) -> tuple[Any, int]:
    async with connect(url) as ws:
        await ws.send(first)
        event = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        if then is not None:
            assert event["type"] == "ready", event
            await ws.send(then)
            event = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)
        return event, ws.close_code or 0


def _hello(token: str, recording: str, rate: Any = RATE) -> str:
    return json.dumps({"type": "hello", "token": token, "recording": recording, "rate": rate})


async def test_bad_input_gets_a_specific_error_and_the_connection_closes(
    served: tuple[str, MicLink, SessionManager], speech: tuple[np.ndarray, str]
) -> None:
    url, link, manager = served
    pcm, _ = speech
    token, _ = begin(manager, link, "tab-bad", "recording-bad-1")
    cases: list[tuple[str | bytes, bytes | None, str, int]] = [
        (_hello("not-a-token", "recording-bad-1"), None, "forbidden", 1008),
        (_hello(token, "x"), None, "invalid_event", 1008),
        (_hello(token, "recording-bad-1", 1_000), None, "unsupported_rate", 1003),
        (_hello(token, "recording-bad-1", "48000"), None, "unsupported_rate", 1003),
        ("[]", None, "invalid_event", 1008),
        (json.dumps({"type": "stop"}), None, "invalid_event", 1008),
        (_hello(token, "recording-bad-1"), b"\x00\x01\x02", "invalid_frame", 1003),
        (_hello(token, "recording-bad-1"), frame(pcm[: RATE * 2], 0), "invalid_frame", 1003),
        (_hello(token, "recording-bad-1"), frame(pcm[:FRAME], 10 * RATE), "out_of_order", 1008),
    ]
    for first, then, code, close_code in cases:
        event, closed_with = await _refused(url, first, then)
        assert event["type"] == "error" and event["code"] == code, (first, event)
        assert event["message"].endswith("."), event
        assert closed_with == close_code, (code, closed_with)


async def test_another_tabs_token_cannot_join_a_recording(
    served: tuple[str, MicLink, SessionManager],
) -> None:
    url, link, manager = served
    token, _ = begin(manager, link, "tab-owner", "recording-owned-1")
    intruder = link.tokens.token_for("tab-intruder")
    async with connect(url) as ws:
        await hello(ws, token, "recording-owned-1")
        event, _ = await _refused(url, _hello(intruder, "recording-owned-1"))
        assert event["code"] == "forbidden", event
        await ws.send(json.dumps({"type": "stop"}))
        assert json.loads(await ws.recv())["type"] == "stopped"  # the owner was not disturbed


async def test_a_recording_the_page_never_started_is_refused_after_a_wait(
    served: tuple[str, MicLink, SessionManager],
) -> None:
    url, link, _ = served
    token = link.tokens.token_for("tab-unstarted")
    event, _ = await _refused(url, _hello(token, "recording-never-1"))
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
