"""RealtimeWSBackend against the real server process (``python -m components serve``).

One server for the module, started with an API key and a limit of two sessions, runs the real
Whisper engine; the clips are real speech. Failures are produced for real: a port nobody
listens on, a wrong key, a model the server does not serve, a third session, a server killed
mid-stream.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from components.backends.websocket import RealtimeWSBackend, models_url, realtime_url
from components.core.audio import float_to_pcm16, load_file
from components.core.errors import AuthError, BackendUnavailable, Busy, ConnectionLost, NotFound
from components.core.evaluation import Clip, corpus_wer, wer
from components.core.protocol import (
    ServerEvent,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
)
from tests.support_server import ServerURL, free_port, running_server, server_fixture

KEY = "test-key-123"
CHUNK = 3200
WER_BOUND = 0.35
CLIPS = ("jfk", "librispeech-61-70968-0000")

server = server_fixture("--engine", "whisper", "--api-key", KEY, "--max-sessions", "2")


@pytest.fixture(scope="module")
def pcm(clips: dict[str, Clip]) -> dict[str, bytes]:
    return {cid: float_to_pcm16(load_file(str(clips[cid].path))) for cid in CLIPS}


def backend(url: ServerURL, **kw: Any) -> RealtimeWSBackend:
    kw.setdefault("api_key", KEY)
    return RealtimeWSBackend(url.ws, **kw)


async def run(stream: Any, audio: bytes, pace: float = 0.0) -> list[ServerEvent]:
    async def send() -> None:
        for i in range(0, len(audio), CHUNK):
            await stream.send_audio(audio[i : i + CHUNK])
            if pace:
                await asyncio.sleep(pace)
        await stream.finish()

    sender = asyncio.create_task(send())
    try:
        events = [event async for event in stream]
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return events


async def stats(url: ServerURL) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/stats", headers={"Authorization": f"Bearer {KEY}"})
        return response.json()


async def settled(url: ServerURL, within: float = 20.0) -> dict[str, Any]:
    """The server's counters once no session is open (or the last seen after ``within``)."""
    deadline = time.monotonic() + within
    current = await stats(url)
    while current["sessions_active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        current = await stats(url)
    return current


def test_urls_are_normalised() -> None:
    assert realtime_url("http://h:1") == "ws://h:1/v1/realtime"
    assert realtime_url("https://h/x/v1/realtime") == "wss://h/x/v1/realtime"
    assert models_url("wss://h/x/v1/realtime") == "https://h/x/v1/models"
    assert models_url("ws://h:8080/invocations-bidirectional-stream") == "http://h:8080/v1/models"
    with pytest.raises(ValueError):
        RealtimeWSBackend("ftp://h/v1/realtime")


async def test_transcribes_real_speech_and_discovers_the_model(
    server: ServerURL, clips: dict[str, Clip], pcm: dict[str, bytes]
) -> None:
    client = backend(server)
    pairs = []
    for cid in CLIPS:
        stream = await client.open()
        events = await run(stream, pcm[cid])
        assert isinstance(events[-1], TranscriptionDone)
        assert not any(isinstance(e, TranscriptionPartial) for e in events)
        text = "".join(e.delta for e in events if isinstance(e, TranscriptionDelta))
        assert wer(events[-1].text, text) < 0.05
        pairs.append((clips[cid].text, events[-1].text))
    async with httpx.AsyncClient() as http:
        listed = await http.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert client.model == listed.json()["data"][0]["id"]
    assert corpus_wer(pairs) <= WER_BOUND, pairs


async def test_partials_are_opt_in(server: ServerURL, pcm: dict[str, bytes]) -> None:
    audio = pcm[CLIPS[0]]
    client = backend(server)
    with_partials = await run(await client.open(partials=True), audio, pace=0.03)
    assert any(isinstance(e, TranscriptionPartial) for e in with_partials)
    assert isinstance(with_partials[-1], TranscriptionDone)


async def test_unreachable_server_says_how_to_start_one() -> None:
    client = RealtimeWSBackend(f"ws://127.0.0.1:{free_port()}/v1/realtime", model="m")
    with pytest.raises(BackendUnavailable) as failure:
        await client.open()
    assert "python -m components serve" in str(failure.value)
    discovering = RealtimeWSBackend(f"ws://127.0.0.1:{free_port()}/v1/realtime")
    with pytest.raises(BackendUnavailable):
        await discovering.open()


async def test_missing_or_wrong_key_is_an_auth_error(server: ServerURL) -> None:
    for key in (None, "wrong"):
        with pytest.raises(AuthError):  # through GET /v1/models
            await backend(server, api_key=key).open()
        with pytest.raises(AuthError) as failure:  # through the WebSocket handshake
            await backend(server, api_key=key, model="any").open()
        assert "401" in str(failure.value)


async def test_unknown_model_is_not_found(server: ServerURL, pcm: dict[str, bytes]) -> None:
    stream = await backend(server, model="no-such-model").open()
    with pytest.raises(NotFound) as failure:
        await run(stream, pcm[CLIPS[1]])
    assert "no-such-model" in str(failure.value)
    assert (await settled(server))["sessions_active"] == 0


async def test_session_limit_is_busy_and_cancel_frees_the_slots(
    server: ServerURL, pcm: dict[str, bytes]
) -> None:
    client = backend(server)
    held = [await client.open(), await client.open()]
    for stream in held:
        await stream.send_audio(pcm[CLIPS[0]][: CHUNK * 10])
    with pytest.raises(Busy):
        await client.open()
    for stream in held:
        await stream.cancel()
        await stream.cancel()  # idempotent
    counters = await settled(server)
    assert counters["sessions_active"] == 0
    assert counters["requests_active"] == 0
    assert counters["sessions_refused"] >= 1
    stream = await client.open()  # a slot is free again
    await stream.cancel()


@pytest.mark.parametrize(
    ("signum", "said"),
    [(signal.SIGKILL, "closed before"), (signal.SIGTERM, "shut down")],
    ids=["killed", "stopped"],
)
async def test_server_going_away_mid_stream_is_connection_lost(
    pcm: dict[str, bytes], signum: signal.Signals, said: str
) -> None:
    with running_server("--engine", "whisper") as doomed:
        stream = await RealtimeWSBackend(doomed.ws).open()
        audio = pcm[CLIPS[0]]
        for i in range(0, CHUNK * 20, CHUNK):
            await stream.send_audio(audio[i : i + CHUNK])
        doomed.process.send_signal(signum)
        with pytest.raises(ConnectionLost) as lost:
            async for _ in stream:
                pass
        assert said in str(lost.value)
        with pytest.raises(ConnectionLost):
            await stream.send_audio(audio[:CHUNK])
        if signum == signal.SIGTERM:
            doomed.process.wait(15)  # a graceful stop: sessions ended, then the process
            log = doomed.log_text()
            assert "reason=server_shutdown" in log and "Application shutdown complete" in log
