"""The realtime server (``components.server.app``) over the real vLLM engine, on real sockets.

The protocol behaviour and limits ``tests/test_server.py`` checks with the Whisper engine, here
with ``VllmEngine`` on vLLM's CPU build: event order and usage, a new request after done,
concurrent sessions as separate vLLM requests, every error code, a vanished client releasing
its vLLM request, the session limit, idle and length timeouts, the bounded audio buffer, and
the engine's own ``server_busy`` and ``session_too_long`` reaching the client as error events.
The servers run in this process (on the engine's loop) so the tests can read their counters
and vLLM's. ``tests/test_vllm_server.py`` runs ``python -m components serve --engine vllm``
itself as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from components.core.audio import float_to_pcm16
from components.core.evaluation import Clip
from components.core.protocol import InputAudioBufferAppend, InputAudioBufferCommit, serialize
from tests.test_server import (
    CHUNK,
    Server,
    _server,
    deltas,
    open_session,
    recv,
    refused_as_busy,
    refused_frames_then_a_request,
    server_with,
    stream_audio,
    transcribe,
    two_requests,
    wait_until,
)
from tests.vllm_cpu.conftest import MAX_MODEL_LEN, unfinished

CLIP = "librispeech-1089-134686-0001"  # 3.3 s
OTHER = "librispeech-1089-134691-0000"  # 2.1 s


server = server_with(max_sessions=4, idle_timeout=30)


@pytest.fixture(scope="module")
def pcm(clips: dict[str, Clip]) -> dict[str, bytes]:
    audio = {cid: sf.read(clips[cid].path, dtype="float32")[0] for cid in (CLIP, OTHER)}
    return {cid: float_to_pcm16(samples) for cid, samples in audio.items()}


def test_event_order_text_and_usage(bg: Any, server: Server, pcm: dict[str, bytes]) -> None:
    events = bg.run(transcribe(server, pcm[CLIP]))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "transcription.done" and set(kinds[:-1]) == {"transcription.delta"}
    done = events[-1]
    assert done["text"] == deltas(events) != ""
    usage = done["usage"]
    assert usage["completion_tokens"] == len(events) - 1  # one token per delta
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert server.state.requests_active == 0 and unfinished(server.state.engine) == 0


def test_a_new_request_after_done_on_the_same_socket(
    bg: Any, server: Server, pcm: dict[str, bytes]
) -> None:
    one, two = bg.run(two_requests(server, pcm[CLIP], pcm[OTHER]))
    # The second request starts from scratch: its prompt is that of the shorter clip alone.
    assert two[-1]["usage"]["prompt_tokens"] < one[-1]["usage"]["prompt_tokens"]
    assert two[-1]["usage"]["completion_tokens"] == len(two) - 1


def test_concurrent_sessions_are_separate_requests(
    bg: Any, server: Server, pcm: dict[str, bytes]
) -> None:
    async def both() -> list[list[Any]]:
        return await asyncio.gather(
            transcribe(server, pcm[CLIP], pace=0.01), transcribe(server, pcm[OTHER], pace=0.01)
        )

    long_one, short_one = bg.run(both())
    assert long_one[-1]["usage"]["prompt_tokens"] > short_one[-1]["usage"]["prompt_tokens"]
    assert server.state.requests_active == 0 and unfinished(server.state.engine) == 0


def test_every_protocol_error_code(bg: Any, server: Server) -> None:
    events = bg.run(refused_frames_then_a_request(server))
    assert events[-1]["type"] == "transcription.done"


def test_a_vanished_client_releases_its_vllm_request(
    bg: Any, server: Server, pcm: dict[str, bytes]
) -> None:
    state = server.state

    async def vanish() -> int:
        ws = await open_session(server)
        await ws.send(serialize(InputAudioBufferCommit()))
        audio = pcm[CLIP]
        for i in range(0, len(audio) // 2, CHUNK):
            await ws.send(serialize(InputAudioBufferAppend(audio[i : i + CHUNK])))
        assert await wait_until(lambda: unfinished(state.engine) == 1, 60)
        running = unfinished(state.engine)
        ws.transport.abort()
        assert await wait_until(lambda: state.slots.active == 0 and state.requests_active == 0)
        assert await wait_until(lambda: unfinished(state.engine) == 0)
        return running

    assert bg.run(vanish()) == 1
    assert state.engine.active_sessions == 0


def test_the_engines_session_limit_reaches_the_client(
    bg: Any, server: Server, pcm: dict[str, bytes]
) -> None:
    """Three sessions on a server of four, over an engine of two: the third is told why."""
    engine = server.state.engine

    async def crowd() -> dict[str, Any]:
        holders = [await open_session(server) for _ in range(engine.max_sessions)]
        for ws in holders:
            await ws.send(serialize(InputAudioBufferCommit()))
            await ws.send(serialize(InputAudioBufferAppend(pcm[CLIP][:32_000])))
        assert await wait_until(lambda: unfinished(engine) == engine.max_sessions, 60)
        third = await open_session(server)
        async with third:
            await ws_commit_and_append(third, pcm[OTHER])
            event = await recv(third, 30)
        for ws in holders:
            await ws.close()
        return event

    event = bg.run(crowd())
    assert event["type"] == "error" and event["code"] == "server_busy", event
    assert "try again" in event["error"]
    assert bg.run(wait_until(lambda: unfinished(engine) == 0))


async def ws_commit_and_append(ws: Any, audio: bytes) -> None:
    await ws.send(serialize(InputAudioBufferCommit()))
    await ws.send(serialize(InputAudioBufferAppend(audio[:CHUNK])))


def test_session_too_long_from_the_engine_reaches_the_client(
    bg: Any, server: Server, pcm: dict[str, bytes]
) -> None:
    engine = server.state.engine
    seconds = engine.spec.max_audio_seconds(MAX_MODEL_LEN)
    audio = pcm[CLIP] * (int(seconds // 3.2) + 4)  # past the model's length

    async def overlong() -> list[Any]:
        ws = await open_session(server)
        events: list[Any] = []
        async with ws:
            sender = asyncio.create_task(stream_audio(ws, audio))
            with contextlib.suppress(ConnectionClosed):
                while not events or events[-1]["type"] not in ("error", "transcription.done"):
                    events.append(await recv(ws, 120))
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return events

    events = bg.run(overlong(), timeout=300)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "session_too_long", events[-1]
    assert "new session" in events[-1]["error"]
    assert len(events) > 100  # the text up to the limit arrived first
    assert bg.run(wait_until(lambda: unfinished(engine) == 0))


def test_server_limits_hold_over_the_vllm_engine(bg: Any, engine: Any) -> None:
    """Session limit (1013), idle timeout and wall-clock length (1008), bounded buffer."""

    async def limits(single: Server, hasty: Server, small: Server) -> None:
        holder = await open_session(single)
        await refused_as_busy(single)
        await holder.close()

        async with connect(hasty.ws) as idle:
            await recv(idle)
            event = await recv(idle, 10)
            assert event["code"] == "idle_timeout"

        ws = await open_session(small)
        async with ws:
            chunk = serialize(InputAudioBufferAppend(bytes(CHUNK)))
            with contextlib.suppress(ConnectionClosed):
                for _ in range(15):  # 1.5 s without a commit into a 1 s buffer
                    await ws.send(chunk)
            event = await recv(ws, 10)
            assert event["code"] == "audio_buffer_full"

    with (
        _server(bg, engine, max_sessions=1) as single,
        _server(bg, engine, idle_timeout=0.5) as hasty,
        _server(bg, engine, audio_buffer_seconds=1.0) as small,
    ):
        bg.run(limits(single, hasty, small))
    assert unfinished(engine) == 0
