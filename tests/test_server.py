"""The realtime server over real sockets, with the real Whisper engine and real speech.

The servers run in this process (uvicorn on a background loop) so that the tests can read their
live counters; clients are plain ``websockets`` connections speaking the wire protocol, so
every frame is exactly what a vLLM client would send or see. One engine serves every server of
the module; each server differs only in its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from components.core.audio import float_to_pcm16, load_file
from components.core.evaluation import Clip, corpus_wer, wer
from components.core.protocol import (
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    SessionUpdate,
    serialize,
)
from components.server.app import create_app
from components.server.limits import SessionSlots
from components.server.state import ServerSettings, ServerState
from tests.support_metrics import value
from tests.support_server import BackgroundLoop, serve_app

CHUNK = 3200  # bytes: 100 ms of PCM16 at 16 kHz
WER_BOUND = 0.35
"""Streaming tiny.en on clean read speech; the design targets are far tighter (bench/)."""

CLEAN = ("librispeech-1995-1837-0001", "librispeech-1089-134691-0001")


# --------------------------------------------------------------------------- fixtures


class Server:
    def __init__(self, url: str, state: ServerState) -> None:
        self.url = url
        self.ws = url.replace("http://", "ws://") + "/v1/realtime"
        self.state = state


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundLoop]:
    with BackgroundLoop() as loop:
        yield loop


@pytest.fixture(scope="module")
def engine(bg: BackgroundLoop) -> Iterator[Any]:
    from components.engines.whisper.engine import WhisperEngine

    async def build() -> Any:
        return WhisperEngine.from_env()

    eng = bg.run(build())
    yield eng
    bg.run(eng.aclose())


@contextmanager
def _server(bg: BackgroundLoop, engine: Any, **settings: Any) -> Iterator[Server]:
    app = create_app(engine, ServerSettings(**settings), close_engine=False)
    with serve_app(bg, app) as url:
        yield Server(url, app.state.realtime)


def server_with(**settings: Any) -> Any:
    """A module-scoped fixture: a server over the module's ``engine`` with these settings."""

    @pytest.fixture(scope="module")
    def fixture(bg: BackgroundLoop, engine: Any) -> Iterator[Server]:
        with _server(bg, engine, **settings) as running:
            yield running

    return fixture


server = server_with(max_sessions=4, idle_timeout=30)
auth_server = server_with(api_key="s3cret-key")
single_server = server_with(max_sessions=1)
hasty_server = server_with(idle_timeout=0.5, max_session_seconds=2.0)
small_buffer_server = server_with(audio_buffer_seconds=1.0)


@pytest.fixture(scope="module")
def pcm(clips: dict[str, Clip]) -> dict[str, bytes]:
    return {cid: float_to_pcm16(load_file(str(clips[cid].path))) for cid in clips}


# --------------------------------------------------------------------------- helpers


async def recv(ws: ClientConnection, within: float = 60.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), within))


async def open_session(
    server: Server, *, partials: bool = False, model: str | None = None
) -> ClientConnection:
    ws = await connect(server.ws)
    created = await recv(ws)
    assert created["type"] == "session.created"
    name = model or server.state.model_names[0]
    await ws.send(serialize(SessionUpdate(model=name, partials=partials)))
    return ws


async def stream_audio(ws: ClientConnection, audio: bytes, *, pace: float = 0.0) -> None:
    """Commit, append in 100 ms chunks (optionally paced), final commit."""
    await ws.send(serialize(InputAudioBufferCommit()))
    for i in range(0, len(audio), CHUNK):
        await ws.send(serialize(InputAudioBufferAppend(audio[i : i + CHUNK])))
        if pace:
            await asyncio.sleep(pace)
    await ws.send(serialize(InputAudioBufferCommit(final=True)))


async def collect(ws: ClientConnection, within: float = 120.0) -> list[dict[str, Any]]:
    """Events until transcription.done (included)."""
    events = []
    deadline = time.monotonic() + within
    while True:
        event = await recv(ws, max(0.1, deadline - time.monotonic()))
        events.append(event)
        if event["type"] == "transcription.done":
            return events
        assert event["type"] != "error" or event["code"] == "overloaded", event


async def transcribe(server: Server, audio: bytes, **kw: Any) -> list[dict[str, Any]]:
    ws = await open_session(server, partials=kw.pop("partials", False))
    async with ws:
        sender = asyncio.create_task(stream_audio(ws, audio, **kw))
        events = await collect(ws)
        await sender
        return events


def deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "transcription.delta")


async def two_requests(
    server: Server, first: bytes, second: bytes
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One request after the other on one socket: the events of each."""
    ws = await open_session(server)
    async with ws:
        await stream_audio(ws, first)
        one = await collect(ws)
        await stream_audio(ws, second)
        two = await collect(ws)
    return one, two


ERROR_FRAMES: list[tuple[str | bytes, str]] = [
    ('{"type": "input_audio_buffer.commit"}', "model_not_validated"),
    ("{not json", "invalid_json"),
    ('{"type": "response.create"}', "unknown_event"),
    ('{"type": "session.update"}', "invalid_event"),
    ('{"type": "session.update", "model": "no-such-model"}', "model_not_found"),
    ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_audio"),
    ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_audio"),  # 1 byte
    ('{"type": "input_audio_buffer.append", "audio": ""}', "invalid_audio"),
    (b"\x00\x01\x02\x03", "invalid_frame"),
]
"""Frames the server refuses with an error event, and their codes: every code of the protocol."""


async def refused_frames_then_a_request(server: Server) -> list[dict[str, Any]]:
    """Every frame of ``ERROR_FRAMES`` on one socket, each refused with its code and a message;
    then, on the same socket, a request: its events (the socket outlived every error)."""
    async with connect(server.ws) as ws:
        assert (await recv(ws))["type"] == "session.created"
        for frame, code in ERROR_FRAMES:
            await ws.send(frame)
            event = await recv(ws, 10)
            assert event["type"] == "error" and event["code"] == code, (frame, event)
            assert event["error"]
        await ws.send(serialize(SessionUpdate(model=server.state.model_names[0])))
        await stream_audio(ws, np.zeros(16_000, dtype="<i2").tobytes())
        return await collect(ws)


async def closes_with(ws: ClientConnection, code: int) -> None:
    """The server closes ``ws`` next, with ``code``."""
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws, 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def refused_as_busy(server: Server) -> None:
    """A session past the server's limit: ``server_busy``, then the close 1013."""
    async with connect(server.ws) as refused:
        event = await recv(refused, 10)
        assert event["type"] == "error" and event["code"] == "server_busy", event
        await closes_with(refused, 1013)


async def wait_until(predicate: Any, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


# --------------------------------------------------------------------------- HTTP


def test_health_and_models_match_vllm_shapes(server: Server) -> None:
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.content == b""
    body = httpx.get(f"{server.url}/v1/models").json()
    assert body["object"] == "list"
    card = body["data"][0]
    assert card["id"] == server.state.engine.model
    assert card["object"] == "model"
    for key in ("created", "owned_by", "root", "parent", "max_model_len", "permission"):
        assert key in card
    assert card["permission"][0]["object"] == "model_permission"


# --------------------------------------------------------------------------- transcription


async def test_transcribes_speech_with_vllm_event_order(
    server: Server, clips: dict[str, Clip], pcm: dict[str, bytes]
) -> None:
    pairs = []
    for cid in CLEAN:
        events = await transcribe(server, pcm[cid])
        done = events[-1]
        assert done["type"] == "transcription.done"
        assert set(done["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert not any(e["type"] == "transcription.partial" for e in events)
        text = deltas(events)
        assert wer(done["text"], text) < 0.05  # done carries what the deltas said
        pairs.append((clips[cid].text, done["text"]))
    assert corpus_wer(pairs) <= WER_BOUND, pairs


async def test_fresh_commit_after_done_starts_a_new_request(
    server: Server, clips: dict[str, Clip], pcm: dict[str, bytes]
) -> None:
    first, second = CLEAN
    one, two = await two_requests(server, pcm[first], pcm[second])
    assert wer(clips[first].text, one[-1]["text"]) <= WER_BOUND
    text = two[-1]["text"]
    assert wer(clips[second].text, text) <= WER_BOUND, text
    assert "sorrow" not in text.lower()  # no context carried over from the first request


async def test_concurrent_sessions_each_get_their_own_text(
    server: Server, clips: dict[str, Clip], pcm: dict[str, bytes]
) -> None:
    a, b = CLEAN
    results = await asyncio.gather(
        transcribe(server, pcm[a], pace=0.02), transcribe(server, pcm[b], pace=0.02)
    )
    text_a, text_b = (r[-1]["text"] for r in results)
    assert wer(clips[a].text, text_a) <= WER_BOUND, text_a
    assert wer(clips[b].text, text_b) <= WER_BOUND, text_b
    assert wer(clips[b].text, text_a) > 0.8


async def test_partials_only_reach_clients_that_asked(
    server: Server, pcm: dict[str, bytes]
) -> None:
    audio = pcm[CLEAN[0]]
    with_partials = await transcribe(server, audio, partials=True, pace=0.03)
    without = await transcribe(server, audio, pace=0.03)
    assert any(e["type"] == "transcription.partial" for e in with_partials)
    assert not any(e["type"] == "transcription.partial" for e in without)


# --------------------------------------------------------------------------- errors


async def test_every_protocol_error_code_over_a_real_socket(server: Server) -> None:
    events = await refused_frames_then_a_request(server)
    assert events[-1]["type"] == "transcription.done"


HESTER = "librispeech-1221-135766-0002"
"""The bundled model hears "Hester Prynne" as "Hester Prin" without a prompt."""


async def test_bad_session_options_are_refused_and_the_session_goes_on(
    server: Server, pcm: dict[str, bytes]
) -> None:
    model = server.state.model_names[0]
    cases = [
        ({"language": "xx"}, "unknown_language", "ISO-639-1"),
        ({"language": "de"}, "unsupported_language", "only en (English)"),
        ({"prompt": "Hester Prynne " * 40}, "prompt_too_long", "at most 500"),
        ({"prompt": 5}, "invalid_event", "'prompt'"),
    ]
    async with connect(server.ws) as ws:
        assert (await recv(ws))["type"] == "session.created"
        for fields, code, said in cases:
            await ws.send(json.dumps({"type": "session.update", "model": model, **fields}))
            event = await recv(ws, 10)
            assert event["type"] == "error" and event["code"] == code, (fields, event)
            assert said in event["error"], event
        # A refused update changes nothing: the model is still not chosen.
        await ws.send(serialize(InputAudioBufferCommit()))
        assert (await recv(ws, 10))["code"] == "model_not_validated"
        # The same socket then takes a good update, and its prompt steers the spelling.
        await ws.send(serialize(SessionUpdate(model=model, language="en", prompt="Hester Prynne")))
        await stream_audio(ws, pcm[HESTER])
        events = await collect(ws)
    text = events[-1]["text"]
    assert "Prynne" in text and "Prin " not in text, text


async def test_server_bound_on_prompts(bg: BackgroundLoop, engine: Any) -> None:
    for bound, code, said in [
        (0, "prompt_not_supported", "takes no prompt"),
        (10, "prompt_too_long", "at most 10"),
    ]:
        with _server(bg, engine, max_prompt_chars=bound) as bounded:
            async with await connect(bounded.ws) as ws:
                await recv(ws)
                update = SessionUpdate(model=bounded.state.model_names[0], prompt="Hester Prynne")
                await ws.send(serialize(update))
                event = await recv(ws, 10)
                assert event["code"] == code and said in event["error"], event


async def test_disconnect_mid_stream_releases_session_and_request(
    server: Server, pcm: dict[str, bytes]
) -> None:
    state = server.state
    assert await wait_until(lambda: state.slots.active == 0 and state.requests_active == 0)
    ws = await open_session(server)
    await ws.send(serialize(InputAudioBufferCommit()))
    audio = pcm[CLEAN[0]]
    for i in range(0, len(audio) // 2, CHUNK):
        await ws.send(serialize(InputAudioBufferAppend(audio[i : i + CHUNK])))
    assert await wait_until(lambda: state.requests_active == 1)
    assert state.slots.active == 1
    ws.transport.abort()  # no close frame: the client vanishes
    assert await wait_until(lambda: state.slots.active == 0 and state.requests_active == 0)
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{server.url}/stats")).json()
    assert stats["sessions_active"] == 0 and stats["requests_active"] == 0
    assert stats["engine_streams"] == 0  # the engine let go of the stream too


async def test_api_key_is_required_on_the_handshake(
    auth_server: Server, pcm: dict[str, bytes]
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
        with pytest.raises(InvalidStatus) as refused:
            await connect(auth_server.ws, additional_headers=headers)
        assert refused.value.response.status_code == 401
    good = {"Authorization": "Bearer s3cret-key"}
    async with httpx.AsyncClient(base_url=auth_server.url) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/stats")).status_code == 401
        assert (await http.get("/v1/models", headers=good)).status_code == 200
    async with connect(auth_server.ws, additional_headers=good) as ws:
        assert (await recv(ws))["type"] == "session.created"


async def test_session_limit_answers_server_busy_and_1013(single_server: Server) -> None:
    holder = await open_session(single_server)
    try:
        await refused_as_busy(single_server)
    finally:
        await holder.close()
    assert await wait_until(lambda: single_server.state.slots.active == 0)
    async with connect(single_server.ws) as again:
        assert (await recv(again))["type"] == "session.created"


async def test_idle_timeout_sends_error_then_closes(hasty_server: Server) -> None:
    async with connect(hasty_server.ws) as ws:
        assert (await recv(ws))["type"] == "session.created"
        event = await recv(ws, 10)  # we send nothing
        assert event["type"] == "error" and event["code"] == "idle_timeout"
        await closes_with(ws, 1008)
    assert await wait_until(lambda: hasty_server.state.slots.active == 0)


async def test_maximum_session_length_is_enforced(hasty_server: Server) -> None:
    ws = await open_session(hasty_server)

    async def steady_audio() -> None:  # never idle: a chunk every 100 ms, for 20 s at most
        chunk = serialize(InputAudioBufferAppend(bytes(CHUNK)))
        with contextlib.suppress(ConnectionClosed):
            for _ in range(200):
                await ws.send(chunk)
                await asyncio.sleep(0.1)

    sender = asyncio.create_task(steady_audio())
    events = []
    try:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                events.append(await recv(ws, 30))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert [e.get("code") for e in events] == ["session_too_long"], events
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_audio_without_a_running_request_is_bounded(small_buffer_server: Server) -> None:
    ws = await open_session(small_buffer_server)
    async with ws:
        chunk = serialize(InputAudioBufferAppend(bytes(CHUNK)))
        with contextlib.suppress(ConnectionClosed):  # the server may close mid-way
            for _ in range(15):  # 1.5 s, no commit: nothing drains the 1 s buffer
                await ws.send(chunk)
        event = await recv(ws, 10)
        assert event["type"] == "error" and event["code"] == "audio_buffer_full"
        await closes_with(ws, 1008)


async def test_fast_sender_is_held_back_not_dropped(
    small_buffer_server: Server, clips: dict[str, Clip], pcm: dict[str, bytes]
) -> None:
    cid = CLEAN[0]  # 8.7 s of speech through a 1 s buffer, sent as fast as possible
    events = await transcribe(small_buffer_server, pcm[cid])
    assert wer(clips[cid].text, events[-1]["text"]) <= WER_BOUND, events[-1]["text"]


async def test_served_model_name_is_the_only_accepted_id(bg: BackgroundLoop, engine: Any) -> None:
    with _server(bg, engine, served_model_name="captions-v1") as named:
        async with httpx.AsyncClient() as http:
            card = (await http.get(f"{named.url}/v1/models")).json()["data"][0]
        assert card["id"] == "captions-v1" and card["root"] == engine.model
        async with connect(named.ws) as ws:
            await recv(ws)
            await ws.send(serialize(SessionUpdate(model=engine.model)))
            event = await recv(ws, 10)
            assert event["code"] == "model_not_found" and "captions-v1" in event["error"]
            await ws.send(serialize(SessionUpdate(model="captions-v1")))
            await ws.send(serialize(InputAudioBufferCommit()))
            await ws.send(serialize(InputAudioBufferCommit(final=True)))
            assert (await collect(ws))[-1]["type"] == "transcription.done"


# --------------------------------------------------------------------------- pure parts


def test_settings_from_environment() -> None:
    env = {
        "LIVE_CAPTIONS_PORT": "9000",
        "LIVE_CAPTIONS_API_KEY": "k",
        "LIVE_CAPTIONS_IDLE_TIMEOUT": "2.5",
        "LIVE_CAPTIONS_MAX_SESSIONS": "",  # empty: unset
    }
    settings = ServerSettings.from_env(env)
    assert (settings.port, settings.api_key, settings.idle_timeout) == (9000, "k", 2.5)
    assert settings.max_sessions is None and settings.host == "127.0.0.1"
    with pytest.raises(ValueError, match="LIVE_CAPTIONS_PORT"):
        ServerSettings.from_env({"LIVE_CAPTIONS_PORT": "http"})
    with pytest.raises(ValueError, match="idle timeout"):
        ServerSettings.from_env({"LIVE_CAPTIONS_IDLE_TIMEOUT": "0"})


def test_session_slots_have_a_ceiling() -> None:
    slots = SessionSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.try_acquire() and slots.active == 2
    slots.release()
    slots.release()
    with pytest.raises(RuntimeError):
        slots.release()


async def test_metrics_count_sessions_audio_errors_and_first_captions(
    bg: BackgroundLoop, engine: Any, pcm: dict[str, bytes]
) -> None:
    """``/metrics`` is Prometheus text, and its figures follow what happened on the wire."""
    audio = pcm[CLEAN[0]]
    with _server(bg, engine, max_sessions=2) as fresh:
        events = await transcribe(fresh, audio)
        assert deltas(events)
        async with connect(fresh.ws) as ws:
            assert (await recv(ws))["type"] == "session.created"
            await ws.send("{not json")
            assert (await recv(ws, 10))["code"] == "invalid_json"
        assert await wait_until(lambda: fresh.state.slots.active == 0)
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"{fresh.url}/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert value(text, "live_captions_sessions_total") == 2
    assert value(text, "live_captions_sessions_active") == 0
    assert value(text, "vllm:num_requests_running") == 0
    assert value(text, "live_captions_errors_total", code="invalid_json") == 1
    assert value(text, "live_captions_audio_seconds_total") == pytest.approx(len(audio) / 32_000)
    assert value(text, "vllm:time_to_first_token_seconds_count") == 1
    assert value(text, "live_captions_engine_streams") == 0
    # Where the worker's time went: a round holds the decoding and more.
    busy = value(text, "live_captions_engine_busy_seconds")
    generate = value(text, "live_captions_engine_generate_seconds")
    assert busy is not None and generate is not None and busy >= generate > 0


async def test_metrics_need_the_api_key_when_one_is_set(auth_server: Server) -> None:
    async with httpx.AsyncClient(base_url=auth_server.url) as http:
        assert (await http.get("/metrics")).status_code == 401
        good = {"Authorization": "Bearer s3cret-key"}
        assert (await http.get("/metrics", headers=good)).status_code == 200
