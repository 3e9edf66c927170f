"""The SageMaker bridge over real sockets: a real uvicorn bridge, a real upstream, real clients.

The bridge runs in its own event loop on a thread (as in production it runs in its own
process); the clients run in the test's loop. The upstream is a stand-in for the engine server:
a real ``websockets`` server on loopback that speaks the Realtime protocol through
``components.core.protocol`` and can be told (through the model name) to close, abort or send odd
frames, so every edge of the relay can be driven on purpose.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from components.core.protocol import (
    ErrorCode,
    ErrorEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    ProtocolError,
    SessionCreated,
    SessionUpdate,
    TranscriptionDelta,
    TranscriptionDone,
    error_frame,
    parse_client_event,
    parse_server_event,
    serialize,
)
from container.bridge import create_app, uvicorn_config
from container.config import BridgeConfig, health_url_for
from container.frames import (
    STREAM_PATH,
    binary_as_text,
    client_close_for,
    resolve_route,
    truncate_reason,
    upstream_close_for,
)
from tests.support_metrics import value
from tests.support_realtime import (
    WAIT,
    closed_with,
    held_together,
    next_event,
    open_stream,
    session,
)

# --------------------------------------------------------------------------- harness


class LoopThread:
    """An event loop on a daemon thread, for the servers under test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run[T](self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class StandInUpstream:
    """Stand-in for the engine server (the real one needs a model): a Realtime echo server.

    It sends ``session.created``, answers a commit with a delta (and a ``done`` when final)
    naming the audio bytes it received, and obeys commands given as the model name:
    ``close:<code>:<reason>``, ``abort`` (drop TCP without a close frame), ``binary`` (send a
    binary frame), ``auth`` / ``path`` (echo the Authorization header / request path).
    ``/health`` answers 200 (or 503 when ``healthy`` is false); ``/busy`` refuses with 503.
    """

    def __init__(self) -> None:
        self.healthy = True
        self.frames: queue.Queue[str | bytes] = queue.Queue()
        self.closed: queue.Queue[int | None] = queue.Queue()
        self.server: Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            max_size=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            return connection.respond(200 if self.healthy else 503, "ok\n")
        if request.path.startswith("/busy"):
            return connection.respond(503, "busy\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        received = 0
        try:
            await ws.send(serialize(SessionCreated()))
            async for frame in ws:
                self.frames.put(frame)
                if isinstance(frame, bytes):
                    await ws.send(error_frame(ErrorCode.INVALID_FRAME, "binary frame"))
                    continue
                try:
                    event = parse_client_event(frame)
                except ProtocolError as exc:
                    await ws.send(error_frame(exc.code, exc.message))
                    continue
                match event:
                    case SessionUpdate(model=model) if model:
                        await self._command(ws, model)
                    case InputAudioBufferAppend(audio=audio):
                        received += len(audio)
                    case InputAudioBufferCommit(final=final):
                        await ws.send(serialize(TranscriptionDelta(f"{received} bytes")))
                        if final:
                            await ws.send(serialize(TranscriptionDone(f"{received} bytes")))
        except ConnectionClosed:
            pass
        finally:
            self.closed.put(ws.close_code)

    async def _command(self, ws: ServerConnection, model: str) -> None:
        assert ws.request is not None
        if model.startswith("close:"):
            _, code, reason = model.split(":", 2)
            await ws.close(int(code), reason)
        elif model == "abort":
            ws.transport.abort()
        elif model == "binary":
            await ws.send(b"\x00\xffbinary")
        elif model == "auth":
            auth = ws.request.headers.get("Authorization", "")
            await ws.send(serialize(TranscriptionDelta(auth)))
        elif model == "path":
            await ws.send(serialize(TranscriptionDelta(ws.request.path)))


class RunningBridge:
    """A real uvicorn serving the bridge app on a free loopback port."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.server = uvicorn.Server(uvicorn_config(create_app(config), config, "127.0.0.1", 0))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def ws_url(self, path: str = STREAM_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def active(self) -> int:
        return self.server.config.loaded_app.app.state.bridge.active  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[StandInUpstream]:
    up = StandInUpstream()
    loop_thread.run(up.start())
    yield up
    loop_thread.run(up.stop())


class BridgeFactory:
    def __init__(self, loop_thread: LoopThread) -> None:
        self.loop_thread = loop_thread
        self.started: list[RunningBridge] = []

    def __call__(self, **config: Any) -> RunningBridge:
        bridge = RunningBridge(BridgeConfig(**config))
        self.loop_thread.run(bridge.start())
        self.started.append(bridge)
        return bridge


@pytest.fixture(scope="module")
def make_bridge(loop_thread: LoopThread) -> Iterator[BridgeFactory]:
    factory = BridgeFactory(loop_thread)
    yield factory
    for bridge in factory.started:
        loop_thread.run(bridge.stop())


@pytest.fixture(scope="module")
def bridge(make_bridge: BridgeFactory, upstream: StandInUpstream) -> RunningBridge:
    return make_bridge(upstream_url=upstream.url, api_key="s3cret")


async def take[T](q: queue.Queue[T]) -> T:
    """Wait for the next item the upstream's thread put, without blocking this event loop."""
    return await asyncio.to_thread(q.get, timeout=WAIT)


def drain(q: queue.Queue[Any]) -> None:
    while not q.empty():
        q.get_nowait()


async def wait_until(condition: Any) -> None:
    """Poll state owned by the bridge's thread (no event crosses the threads) until it holds."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def pcm(seconds: float) -> bytes:
    return b"\x01\x00" * int(16_000 * seconds)


# --------------------------------------------------------------------------- pure helpers


def test_binary_as_text_accepts_only_utf8_json_objects() -> None:
    frame = serialize(InputAudioBufferCommit(final=True))
    assert binary_as_text(frame.encode()) == frame
    assert binary_as_text(b'  {"type": "x"}\n') == '  {"type": "x"}\n'
    assert binary_as_text(b"\x00\xff\xfe") is None
    assert binary_as_text(b"hello") is None
    assert binary_as_text(b"") is None


def test_close_codes_map_to_what_a_client_can_receive() -> None:
    assert client_close_for(1000, "") == (1000, "")
    assert client_close_for(1013, "busy") == (1013, "busy")
    assert client_close_for(4001, "custom") == (4001, "custom")
    assert client_close_for(1005, "") == (1000, "")
    assert client_close_for(1006, "")[0] == 1011
    assert client_close_for(None, "")[0] == 1011
    assert upstream_close_for(1000) == 1000
    assert upstream_close_for(1006) == 1001
    assert upstream_close_for(None) == 1001
    long = "é" * 100
    assert len(truncate_reason(long).encode()) <= 123
    assert client_close_for(1000, long)[1] == truncate_reason(long)


def test_routes_follow_the_invocation_path_header() -> None:
    header = "x-amzn-sagemaker-model-invocation-path"
    assert resolve_route(STREAM_PATH, {}) == STREAM_PATH
    assert resolve_route("/v1/realtime/", {}) == "/v1/realtime"
    assert resolve_route(STREAM_PATH, {header: "v1/realtime"}) == "/v1/realtime"
    assert resolve_route(STREAM_PATH, {header: "/nope"}) is None
    assert resolve_route("/other", {}) is None


def test_config_reads_the_environment() -> None:
    config = BridgeConfig.from_env(
        {"UPSTREAM_PORT": "9001", "VLLM_API_KEY": "k", "BRIDGE_MAX_CONNECTIONS": "7"}
    )
    assert config.upstream_url == "ws://127.0.0.1:9001/v1/realtime"
    assert config.health_url == "http://127.0.0.1:9001/health"
    assert config.upstream_headers() == {"Authorization": "Bearer k"}
    assert config.max_connections == 7
    assert config.keepalive_interval is None
    assert config.idle_timeout is None
    assert BridgeConfig.from_env({"BRIDGE_IDLE_TIMEOUT": "90"}).idle_timeout == 90.0
    assert health_url_for("wss://h:1/v1/realtime?x=1") == "https://h:1/health"
    with pytest.raises(ValueError, match="BRIDGE_MAX_CONNECTIONS"):
        BridgeConfig.from_env({"BRIDGE_MAX_CONNECTIONS": "many"})
    with pytest.raises(ValueError, match="at least 1"):
        BridgeConfig.from_env({"BRIDGE_MAX_CONNECTIONS": "0"})


def test_the_command_line_refuses_a_bad_setting_with_its_name() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "container.bridge", "--port", "0"],
        env={**os.environ, "BRIDGE_MAX_MESSAGE_BYTES": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "BRIDGE_MAX_MESSAGE_BYTES='lots' is not a whole number" in result.stderr


# --------------------------------------------------------------------------- /ping


async def test_ping_follows_the_engine_health(
    bridge: RunningBridge, upstream: StandInUpstream
) -> None:
    async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
        assert (await http.get(bridge.http_url("/ping"))).status_code == 200
        assert (await http.post(bridge.http_url("/ping"))).status_code == 200
        upstream.healthy = False
        try:
            response = await http.get(bridge.http_url("/ping"))
        finally:
            upstream.healthy = True
        assert response.status_code == 503
        assert "503" in response.json()["detail"]


async def test_ping_is_503_when_the_engine_is_not_listening(make_bridge: BridgeFactory) -> None:
    dead = make_bridge(upstream_url="ws://127.0.0.1:9/v1/realtime")
    async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
        response = await http.post(dead.http_url("/ping"))
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]


async def test_ping_answers_within_two_seconds_when_the_engine_hangs(
    make_bridge: BridgeFactory, loop_thread: LoopThread
) -> None:
    """Stand-in for a wedged engine: a listener that accepts TCP and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async def start_listener() -> asyncio.Server:
        return await asyncio.start_server(hold, "127.0.0.1", 0)

    listener = loop_thread.run(start_listener())
    port = listener.sockets[0].getsockname()[1]
    hung = make_bridge(upstream_url=f"ws://127.0.0.1:{port}/v1/realtime")
    try:
        # The contract is an answer within 2 s; a client deadline of 2 s enforces it.
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            response = await http.get(hung.http_url("/ping"))
        assert response.status_code == 503
        assert "did not answer" in response.json()["detail"]
        assert held, "the probe never reached the hanging engine"
    finally:

        async def stop_listener() -> None:
            for writer in held:
                writer.close()
            listener.close()

        loop_thread.run(stop_listener())


# --------------------------------------------------------------------------- relaying


async def test_a_stream_is_relayed_both_ways_frame_by_frame(
    bridge: RunningBridge, upstream: StandInUpstream
) -> None:
    drain(upstream.frames)
    async with session(bridge.ws_url()) as ws:
        update = serialize(SessionUpdate(model="m"))
        append = serialize(InputAudioBufferAppend(pcm(0.25)))
        await ws.send(update)
        await ws.send(append)
        await ws.send(serialize(InputAudioBufferCommit(final=True)))
        assert await next_event(ws) == TranscriptionDelta("8000 bytes")
        assert await next_event(ws) == TranscriptionDone("8000 bytes")
        # Text frames reach the engine unchanged, as text.
        assert await take(upstream.frames) == update
        assert await take(upstream.frames) == append


async def test_in_front_of_vllm_serve_refused_options_never_reach_the_engine(
    make_bridge: BridgeFactory, upstream: StandInUpstream
) -> None:
    checking = make_bridge(upstream_url=upstream.url, session_options="voxtral")
    drain(upstream.frames)
    async with session(checking.ws_url()) as ws:
        cases = [
            ('{"type":"session.update","model":"m","language":"xx"}', "unknown_language"),
            ('{"type":"session.update","model":"m","language":"sv"}', "unsupported_language"),
            (
                '{"type":"session.update","model":"m","prompt":"Hester Prynne"}',
                "prompt_not_supported",
            ),
            (
                '{"type":"session.update","model":"m","prompt":"%s"}' % ("x" * 600),
                "prompt_too_long",
            ),
        ]
        for frame, code in cases:
            await ws.send(frame)
            event = await next_event(ws)
            assert isinstance(event, ErrorEvent) and event.code == code, (frame, event)
        assert "Swedish (sv)" in (await _refusal(ws, "sv")).error
        # A language Voxtral speaks goes through unchanged, and so does everything else.
        good = serialize(SessionUpdate(model="m", language="fr"))
        await ws.send(good)
        await ws.send(serialize(InputAudioBufferAppend(pcm(0.25))))
        await ws.send(serialize(InputAudioBufferCommit(final=True)))
        assert await next_event(ws) == TranscriptionDelta("8000 bytes")
        assert await take(upstream.frames) == good


async def _refusal(ws: ClientConnection, language: str) -> ErrorEvent:
    await ws.send(serialize(SessionUpdate(model="m", language=language)))
    event = await next_event(ws)
    assert isinstance(event, ErrorEvent)
    return event


async def test_by_default_the_bridge_leaves_options_to_the_engine(
    bridge: RunningBridge, upstream: StandInUpstream
) -> None:
    drain(upstream.frames)
    async with session(bridge.ws_url()) as ws:
        update = serialize(SessionUpdate(model="m", language="sv", prompt="Hester Prynne"))
        await ws.send(update)
        await ws.send(serialize(InputAudioBufferCommit(final=True)))
        assert await take(upstream.frames) == update


async def test_binary_json_is_forwarded_as_text(
    bridge: RunningBridge, upstream: StandInUpstream
) -> None:
    drain(upstream.frames)
    async with session(bridge.ws_url()) as ws:
        append = serialize(InputAudioBufferAppend(pcm(0.5)))
        await ws.send(append.encode())
        await ws.send(serialize(InputAudioBufferCommit()).encode())
        assert await next_event(ws) == TranscriptionDelta("16000 bytes")
        forwarded = await take(upstream.frames)
        assert isinstance(forwarded, str)
        assert forwarded == append


async def test_binary_garbage_gets_an_error_and_the_stream_goes_on(
    bridge: RunningBridge, upstream: StandInUpstream
) -> None:
    drain(upstream.frames)
    async with session(bridge.ws_url()) as ws:
        await ws.send(b"\x00\x01\xfe\xff" * 100)
        event = await next_event(ws)
        assert isinstance(event, ErrorEvent)
        assert event.code == ErrorCode.INVALID_FRAME
        await ws.send(b"not json at all")
        assert (await next_event(ws)).code == ErrorCode.INVALID_FRAME
        await ws.send(serialize(InputAudioBufferCommit()))
        assert await next_event(ws) == TranscriptionDelta("0 bytes")
        # Nothing of the garbage reached the engine.
        assert isinstance(await take(upstream.frames), str)
        assert upstream.frames.empty()


async def test_binary_frames_from_the_engine_stay_binary(bridge: RunningBridge) -> None:
    async with session(bridge.ws_url()) as ws:
        await ws.send(serialize(SessionUpdate(model="binary")))
        async with asyncio.timeout(WAIT):
            assert await ws.recv() == b"\x00\xffbinary"


async def test_websocket_pings_are_answered(bridge: RunningBridge) -> None:
    async with session(bridge.ws_url(), ping_interval=None) as ws:
        pong = await ws.ping(b"sagemaker")
        async with asyncio.timeout(WAIT):
            await pong


async def test_the_api_key_and_query_string_reach_the_engine(bridge: RunningBridge) -> None:
    async with session(bridge.ws_url() + "?lang=en") as ws:
        await ws.send(serialize(SessionUpdate(model="auth")))
        assert await next_event(ws) == TranscriptionDelta("Bearer s3cret")
        await ws.send(serialize(SessionUpdate(model="path")))
        assert await next_event(ws) == TranscriptionDelta("/v1/realtime?lang=en")


async def test_the_invocation_path_header_selects_a_route(bridge: RunningBridge) -> None:
    header = {"X-Amzn-SageMaker-Model-Invocation-Path": "/v1/realtime"}
    async with session(bridge.ws_url(), additional_headers=header):
        pass  # session.created: the route was served
    # A route the bridge does not serve is refused with a close that names the right one.
    header = {"X-Amzn-SageMaker-Model-Invocation-Path": "/v2/other"}
    ws = await open_stream(bridge.ws_url(), additional_headers=header)
    code, reason = await closed_with(ws)
    assert code == 1008
    assert STREAM_PATH in reason
    ws = await open_stream(bridge.ws_url("/somewhere"))
    assert (await closed_with(ws))[0] == 1008


# --------------------------------------------------------------------------- closes and errors


@pytest.mark.parametrize(("code", "reason"), [(4003, "session too long"), (1013, "server busy")])
async def test_the_engine_close_code_and_reason_reach_the_client(
    bridge: RunningBridge, code: int, reason: str
) -> None:
    async with session(bridge.ws_url()) as ws:
        await ws.send(serialize(SessionUpdate(model=f"close:{code}:{reason}")))
        assert await closed_with(ws) == (code, reason)


async def test_an_engine_lost_mid_stream_gives_an_error_then_1011(bridge: RunningBridge) -> None:
    async with session(bridge.ws_url()) as ws:
        await ws.send(serialize(InputAudioBufferAppend(pcm(0.1))))
        await ws.send(serialize(SessionUpdate(model="abort")))
        event = await next_event(ws)
        assert isinstance(event, ErrorEvent)
        assert event.code == ErrorCode.UPSTREAM_UNAVAILABLE
        code, reason = await closed_with(ws)
    assert code == 1011
    assert reason


async def test_an_unreachable_engine_gives_an_error_then_1011(make_bridge: BridgeFactory) -> None:
    dead = make_bridge(upstream_url="ws://127.0.0.1:9/v1/realtime")
    ws = await open_stream(dead.ws_url())
    event = await next_event(ws)
    assert isinstance(event, ErrorEvent)
    assert event.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert (await closed_with(ws))[0] == 1011


async def test_a_busy_engine_gives_server_busy_then_1013(
    make_bridge: BridgeFactory, upstream: StandInUpstream
) -> None:
    busy = make_bridge(upstream_url=f"ws://127.0.0.1:{upstream.port}/busy")
    ws = await open_stream(busy.ws_url())
    event = await next_event(ws)
    assert isinstance(event, ErrorEvent)
    assert event.code == ErrorCode.SERVER_BUSY
    assert await closed_with(ws) == (1013, "try again later")


async def test_a_client_that_leaves_closes_its_engine_stream(
    bridge: RunningBridge, upstream: StandInUpstream
) -> None:
    drain(upstream.closed)
    async with session(bridge.ws_url()) as ws:
        await ws.send(serialize(InputAudioBufferAppend(pcm(0.1))))
        await ws.close(1000)
    assert await take(upstream.closed) == 1000
    # A client that vanishes without a close frame releases its engine stream too.
    ws = await open_stream(bridge.ws_url())
    await next_event(ws)
    ws.transport.abort()
    assert await take(upstream.closed) is not None
    await wait_until(lambda: bridge.active == 0)


async def test_an_oversized_message_closes_1009_and_releases_the_engine(
    make_bridge: BridgeFactory, upstream: StandInUpstream
) -> None:
    small = make_bridge(upstream_url=upstream.url, max_message_bytes=64 * 1024)
    drain(upstream.closed)
    async with session(small.ws_url(), max_size=None) as ws:
        await ws.send(serialize(InputAudioBufferAppend(pcm(3.0))))  # ~128 KB of base64
        assert (await closed_with(ws))[0] == 1009
    assert await take(upstream.closed) is not None


async def test_an_idle_stream_is_closed_and_a_busy_one_is_not(
    make_bridge: BridgeFactory, upstream: StandInUpstream
) -> None:
    idle = make_bridge(upstream_url=upstream.url, idle_timeout=0.6)
    drain(upstream.closed)
    async with session(idle.ws_url()) as quiet, session(idle.ws_url()) as busy:
        for _ in range(8):  # 1.6 s of traffic, one frame every 0.2 s
            await busy.send(serialize(InputAudioBufferAppend(pcm(0.01))))
            await asyncio.sleep(0.2)
        event = await next_event(quiet)
        assert isinstance(event, ErrorEvent)
        assert event.code == ErrorCode.IDLE_TIMEOUT
        assert await closed_with(quiet) == (1008, "idle timeout")
        assert await take(upstream.closed) is not None  # its engine stream is released
        await busy.send(serialize(InputAudioBufferCommit()))
        assert await next_event(busy) == TranscriptionDelta("2560 bytes")


async def test_fifty_concurrent_streams_are_served_or_refused_cleanly(
    make_bridge: BridgeFactory, upstream: StandInUpstream
) -> None:
    limited = make_bridge(upstream_url=upstream.url, max_connections=10)

    async def one(ws: ClientConnection, first: Any) -> str:
        if isinstance(first, ErrorEvent):
            assert first.code == ErrorCode.SERVER_BUSY
            assert await closed_with(ws) == (1013, "try again later")
            return "refused"
        assert isinstance(first, SessionCreated)
        await ws.send(serialize(InputAudioBufferAppend(pcm(0.1))))
        await ws.send(serialize(InputAudioBufferCommit(final=True)))
        assert await next_event(ws) == TranscriptionDelta("3200 bytes")
        assert await next_event(ws) == TranscriptionDone("3200 bytes")
        return "served"

    results = await held_together(limited.ws_url(), 50, one)
    assert results.count("served") == 10
    assert results.count("refused") == 40
    await wait_until(lambda: limited.active == 0)
    # The limit frees up again: a new stream is served.
    async with session(limited.ws_url()):
        pass  # session.created: served


async def test_each_connection_is_logged_once_with_its_id_bytes_and_close(
    bridge: RunningBridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="container.bridge")
    reason = f"bye-{uuid.uuid4().hex[:8]}"  # streams of earlier tests may still be closing
    async with session(bridge.ws_url()) as ws:
        await ws.send(serialize(InputAudioBufferCommit()))
        await next_event(ws)
        await ws.close(1000, reason)
    await wait_until(lambda: any(reason in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if r.name == "container.bridge"]
    closing = [line for line in lines if reason in line]
    assert len(closing) == 1
    line = closing[0]
    assert line.startswith("conn-")
    conn_id = line.split()[0]
    assert [x for x in lines if conn_id in x] == [line]  # one line per connection
    assert "closed by client" in line and "code=1000" in line
    size = len(serialize(InputAudioBufferCommit()))
    assert f"in={size}B/1 frames" in line
    assert "s3cret" not in "\n".join(lines)


def test_error_frames_are_protocol_events() -> None:
    """The bridge's own errors parse as protocol ``error`` events (sanity for clients)."""
    frame = error_frame(ErrorCode.UPSTREAM_UNAVAILABLE, "x")
    assert json.loads(frame)["type"] == "error"
    assert parse_server_event(frame) == ErrorEvent("x", "upstream_unavailable")


async def test_metrics_count_streams_refusals_and_bytes(
    make_bridge: BridgeFactory, upstream: StandInUpstream
) -> None:
    """``/metrics``: one relayed stream, closed by its client, and one refused at the limit."""
    fresh = make_bridge(upstream_url=upstream.url, max_connections=1)
    held = await open_stream(fresh.ws_url())
    assert isinstance(await next_event(held), SessionCreated)
    refused = await open_stream(fresh.ws_url())
    assert (await next_event(refused)).code == "server_busy"
    await closed_with(refused)
    append = serialize(InputAudioBufferAppend(pcm(0.25)))
    await held.send(append)
    await held.close(1000)
    await wait_until(lambda: fresh.active == 0)
    async with httpx.AsyncClient() as http:
        text = (await http.get(fresh.http_url("/metrics"))).text
    assert value(text, "live_captions_bridge_streams_active") == 0
    assert value(text, "live_captions_bridge_refused_total") == 1
    assert value(text, "live_captions_bridge_streams_total", closed_by="client") == 1
    assert value(text, "live_captions_bridge_bytes_total", direction="in") == len(append)
