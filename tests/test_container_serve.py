"""``container/serve``, the image's entrypoint, as real processes on loopback.

Two groups. With ``ENGINE=whisper`` the real engine server and the real bridge run under the
real supervisor (one ``container/serve`` for the group), and real speech goes through
``/invocations-bidirectional-stream``. With ``ENGINE=vllm`` a stand-in replaces ``vllm`` on
PATH, because vLLM needs a GPU: it records its command line, answers ``/health`` only once the
test allows it, and keeps a helper process that ignores SIGTERM, as vLLM's engine processes
may — so the supervisor's start order, deadlines, signals and clean-up are all observable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection

from components.core.audio import float_to_pcm16, load_file
from components.core.evaluation import Clip, wer
from components.core.protocol import (
    ErrorCode,
    ErrorEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    SessionCreated,
    SessionUpdate,
    TranscriptionDelta,
    TranscriptionDone,
    serialize,
)
from container.entrypoint import (
    DEFAULT_SERVED_MODEL_NAME,
    DEFAULT_VLLM_MODEL,
    ServeConfig,
    SetupError,
    engine_command,
    main,
    sm_vllm_flags,
    vllm_command,
)
from tests.support_realtime import closed_with, held_together, next_event, session
from tests.support_server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE = REPO_ROOT / "container" / "serve"
WAIT = 20.0
"""Bound for single waits on a live process (a hang fails instead of blocking CI)."""
START = 180.0
"""Bound for the Whisper engine to load on a busy 2-core machine."""
MODEL_NAME = "test-whisper"
IDLE_TIMEOUT = 5.0
BRIDGE_LIMIT = 20


# --------------------------------------------------------------------------- processes


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it runs no code and holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class Serve:
    """One ``container/serve`` on free ports, its output in a log file."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.bridge_port = free_port()
        self.upstream_port = free_port()
        self.log_path = workdir / "serve.log"
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(self.bridge_port),
            "UPSTREAM_PORT": str(self.upstream_port),
            **env,
        }
        with self.log_path.open("wb") as log:
            # From another directory, as in the image: the script must find its project itself.
            self.process = subprocess.Popen(
                [sys.executable, str(SERVE), "serve"],
                cwd=workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.bridge_pid: int | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ws_url(self, path: str = "/invocations-bidirectional-stream") -> str:
        return f"ws://127.0.0.1:{self.bridge_port}{path}"

    def ping(self) -> int | None:
        """``/ping``'s status, or None while nothing listens."""
        try:
            return httpx.get(
                f"http://127.0.0.1:{self.bridge_port}/ping", timeout=5.0, trust_env=False
            ).status_code
        except httpx.TransportError:
            return None

    def wait_ping(self, wanted: int, timeout: float = WAIT) -> list[int]:
        """Poll ``/ping`` until it answers ``wanted``; return every answer seen on the way."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited early:\n{self.log_text()[-3000:]}"
            status = self.ping()
            if status is not None:
                seen.append(status)
                if status == wanted:
                    self.bridge_pid = self.bridge_pid or self._bridge_pid()
                    return seen
            time.sleep(0.05)
        raise AssertionError(f"/ping never answered {wanted} (saw {seen[-5:]}):\n{self.log_text()}")

    def _bridge_pid(self) -> int | None:
        for pid in children_of(self.process.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"container.bridge" in cmdline:
                return pid
        return None

    def wait_log(self, text: str) -> None:
        deadline = time.monotonic() + WAIT
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log_text()}"
            time.sleep(0.05)

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                # The supervisor is stuck: take down its children's groups, then itself.
                for pid in children_of(self.process.pid):
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait()


async def wait_gone(*pids: int | None) -> None:
    """Wait until every process is gone (bounded)."""
    async with asyncio.timeout(WAIT):
        while any(pid is not None and alive(pid) for pid in pids):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- stand-in vLLM

STAND_IN_VLLM = '''#!{python}
"""Stand-in for `vllm serve` (no GPU here): records argv, /health 200 once allowed, a helper."""
import http.server, json, os, pathlib, subprocess, sys

out = pathlib.Path(os.environ["STAND_IN_DIR"])
port = int(sys.argv[sys.argv.index("--port") + 1])
helper = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
(out / "vllm.json").write_text(json.dumps(
    {{"argv": sys.argv[1:], "pid": os.getpid(), "helper": helper.pid}}))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health" and (out / "healthy").exists()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


@pytest.fixture
def stand_in(tmp_path: Path) -> dict[str, str]:
    """A directory holding the stand-in ``vllm``, and the env that puts it first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vllm"
    script.write_text(STAND_IN_VLLM.format(python=sys.executable))
    script.chmod(0o755)
    return {
        "ENGINE": "vllm",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "STAND_IN_DIR": str(tmp_path),
        "SERVE_STOP_TIMEOUT": "2",
    }


def stand_in_record(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "vllm.json"
    deadline = time.monotonic() + WAIT
    while not path.exists():
        assert time.monotonic() < deadline, "the stand-in vllm never started"
        time.sleep(0.05)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_sm_vllm_variables_become_vllm_flags(tmp_path: Path) -> None:
    env = {
        "SM_VLLM_MAX_MODEL_LEN": "45000",
        "SM_VLLM_COMPILATION_CONFIG": '{"cudagraph_mode": "PIECEWISE"}',
        "SM_VLLM_ENFORCE_EAGER": "true",
        "SM_VLLM_DISABLE_LOG_STATS": "false",
        "SM_VLLM_TOKENIZER_MODE": "mistral",
        "SM_VLLM_HOST": "0.0.0.0",
        "SM_VLLM_PORT": "9999",
        "SM_VLLM_": "x",
        "OTHER": "y",
    }
    assert sm_vllm_flags(env) == [
        "--compilation-config",
        '{"cudagraph_mode": "PIECEWISE"}',
        "--enforce-eager",
        "--max-model-len",
        "45000",
        "--tokenizer-mode",
        "mistral",
    ]
    config = ServeConfig.from_env({"SM_MODEL_DIR": str(tmp_path / "none")})
    command = vllm_command(config, env)
    assert command[:3] == ["vllm", "serve", DEFAULT_VLLM_MODEL]
    assert command[3:8] == ["--host", "127.0.0.1", "--port", "8081", "--served-model-name"]
    assert command[8] == DEFAULT_SERVED_MODEL_NAME
    assert command[9:] == sm_vllm_flags(env)
    assert "0.0.0.0" not in command and "9999" not in command


def test_weights_in_the_model_directory_win_over_the_model_name(tmp_path: Path) -> None:
    env = {"SM_MODEL_DIR": str(tmp_path), "SM_VLLM_MODEL": "org/named"}
    config = ServeConfig.from_env(env)
    assert vllm_command(config, env)[2] == "org/named"  # empty directory: by name
    (tmp_path / "params.json").write_text("{}")
    command = vllm_command(config, env)
    assert command[2] == str(tmp_path)
    assert command[command.index("--served-model-name") + 1] == DEFAULT_SERVED_MODEL_NAME
    env["SERVED_MODEL_NAME"] = "captions"
    command = vllm_command(ServeConfig.from_env(env), env)
    assert command[command.index("--served-model-name") + 1] == "captions"


def test_the_default_model_name_is_the_sagemaker_clients() -> None:
    from components.backends.sagemaker.client import DEFAULT_MODEL

    assert DEFAULT_SERVED_MODEL_NAME == DEFAULT_MODEL


def test_bad_settings_are_refused_with_a_reason() -> None:
    with pytest.raises(SetupError, match="ENGINE"):
        ServeConfig.from_env({"ENGINE": "gpu"})
    with pytest.raises(SetupError, match="BRIDGE_PORT"):
        ServeConfig.from_env({"BRIDGE_PORT": "http"})
    with pytest.raises(SetupError, match="must differ"):
        ServeConfig.from_env({"BRIDGE_PORT": "8081"})
    with pytest.raises(SetupError, match="UPSTREAM_STARTUP_TIMEOUT"):
        ServeConfig.from_env({"UPSTREAM_STARTUP_TIMEOUT": "-1"})
    assert main(["--dry-run"], {"ENGINE": "vllm", "PATH": "/nonexistent"}) == 2


SUBREAPER = """
import ctypes, subprocess, sys, time
from container.entrypoint import reap_orphans

# Stand in for PID 1 in a container: orphans of our descendants are reparented to us.
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
leaver = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'pass'])"
subprocess.run([sys.executable, "-c", leaver], check=True)  # leaves an orphan behind
reaped, deadline = 0, time.monotonic() + 20
while not reaped and time.monotonic() < deadline:
    reaped = reap_orphans({ours.pid})
    time.sleep(0.05)
print(reaped, ours.poll())
ours.kill()
ours.wait()
"""


def test_orphans_are_reaped_and_our_children_left_alone() -> None:
    """As PID 1 the supervisor must collect orphans, or they stay zombies."""
    result = subprocess.run(
        [sys.executable, "-c", SUBREAPER],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=True,
    )
    assert result.stdout.split() == ["1", "None"]


def test_the_script_runs_as_an_executable(tmp_path: Path) -> None:
    """``container/serve`` itself (shebang, executable bit, stdlib-only supervisor)."""
    result = subprocess.run(
        [str(SERVE), "serve", "--dry-run"],
        cwd=tmp_path,
        env={**os.environ, "ENGINE": "whisper", "SERVED_MODEL_NAME": "m"},
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    engine, bridge = result.stdout.splitlines()
    assert "-m components serve --host 127.0.0.1 --port 8081 --served-model-name m" in engine
    assert engine.endswith("--engine whisper")
    assert "-m container.bridge --host 127.0.0.1 --port 8080" in bridge


async def test_ping_is_503_until_the_engine_is_healthy_and_sigterm_ends_everything(
    tmp_path: Path, stand_in: dict[str, str]
) -> None:
    serve = Serve(tmp_path, {**stand_in, "SM_VLLM_MAX_MODEL_LEN": "45000"})
    try:
        assert serve.wait_ping(503)[0] == 503  # the bridge answers before the engine is up
        record = stand_in_record(tmp_path)
        assert record["argv"][:2] == ["serve", DEFAULT_VLLM_MODEL]
        assert record["argv"][-2:] == ["--max-model-len", "45000"]
        assert str(serve.upstream_port) in record["argv"]
        assert serve.ping() == 503
        (tmp_path / "healthy").touch()
        serve.wait_ping(200)
        serve.wait_log("engine healthy")
        pids = (serve.bridge_pid, record["pid"], record["helper"])
        assert serve.bridge_pid is not None and all(alive(p) for p in pids if p)
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait_exit() == 0
        # Both children and the engine's helper (which ignores SIGTERM) are gone.
        await wait_gone(*pids)
    finally:
        serve.stop()


async def test_a_dead_engine_stops_the_container_non_zero(
    tmp_path: Path, stand_in: dict[str, str]
) -> None:
    (tmp_path / "healthy").touch()
    serve = Serve(tmp_path, stand_in)
    try:
        serve.wait_ping(200)
        record = stand_in_record(tmp_path)
        os.kill(record["pid"], signal.SIGKILL)
        assert serve.wait_exit() != 0
        assert "exited with code" in serve.log_text()
        await wait_gone(serve.bridge_pid, record["helper"])
    finally:
        serve.stop()


async def test_an_engine_that_never_gets_healthy_hits_the_startup_deadline(
    tmp_path: Path, stand_in: dict[str, str]
) -> None:
    serve = Serve(tmp_path, {**stand_in, "UPSTREAM_STARTUP_TIMEOUT": "1"})
    try:
        assert serve.wait_exit() == 1
        assert "UPSTREAM_STARTUP_TIMEOUT" in serve.log_text()
        record = stand_in_record(tmp_path)
        await wait_gone(record["pid"], record["helper"], *children_of(serve.process.pid))
    finally:
        serve.stop()


# --------------------------------------------------------------------------- ENGINE=whisper


class WhisperServe:
    def __init__(self, serve: Serve, pings: list[int]) -> None:
        self.serve = serve
        self.pings = pings


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhisperServe]:
    env = {
        "ENGINE": "whisper",
        "SERVED_MODEL_NAME": MODEL_NAME,
        "LIVE_CAPTIONS_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "BRIDGE_MAX_CONNECTIONS": str(BRIDGE_LIMIT),
    }
    for attempt in (1, 2):
        serve = Serve(tmp_path_factory.mktemp("whisper-serve"), env)
        try:
            pings = serve.wait_ping(200, timeout=START)
        except AssertionError:
            serve.stop()
            # A free port taken by another process between the pick and the bind: try again.
            if attempt == 1 and "address already in use" in serve.log_text().lower():
                continue
            raise
        try:
            yield WhisperServe(serve, pings)
        finally:
            serve.stop()
        return


async def until_done(ws: ClientConnection) -> tuple[str, str]:
    """Collect deltas up to ``transcription.done``; return (deltas joined, done text)."""
    deltas = []
    while True:
        event = await next_event(ws, within=120.0)
        if isinstance(event, TranscriptionDelta):
            deltas.append(event.delta)
        elif isinstance(event, TranscriptionDone):
            return "".join(deltas), event.text
        elif isinstance(event, ErrorEvent):
            raise AssertionError(f"error from the engine: {event}")


def speech(clip: Clip) -> bytes:
    return float_to_pcm16(np.asarray(load_file(str(clip.path))))


def test_ping_is_503_while_the_engine_loads_then_200(whisper: WhisperServe) -> None:
    assert whisper.pings[0] == 503
    assert whisper.pings[-1] == 200
    assert whisper.serve.ping() == 200


async def test_a_clip_is_transcribed_through_the_container(
    whisper: WhisperServe, clips: dict[str, Clip]
) -> None:
    clip = clips["jfk"]
    audio = speech(clip)
    async with session(whisper.serve.ws_url()) as ws:
        await ws.send(serialize(SessionUpdate(model=MODEL_NAME)))
        await ws.send(serialize(InputAudioBufferCommit()))
        step = 3200  # 100 ms of PCM16 per append, as a live client sends it
        for start in range(0, len(audio), step):
            await ws.send(serialize(InputAudioBufferAppend(audio[start : start + step])))
        await ws.send(serialize(InputAudioBufferCommit(final=True)))
        joined, text = await until_done(ws)
    assert joined.strip() == text.strip()
    assert wer(clip.text, text) <= 0.25, text


async def test_a_realtime_client_finds_the_served_model_through_the_bridge(
    whisper: WhisperServe,
) -> None:
    from components.backends.websocket import RealtimeWSBackend

    backend = RealtimeWSBackend(whisper.serve.ws_url())
    assert await backend.resolve_model() == MODEL_NAME


async def test_text_binary_json_and_garbage_frames(whisper: WhisperServe) -> None:
    async with session(whisper.serve.ws_url()) as ws:
        await ws.send(serialize(SessionUpdate(model="no-such-model")).encode())  # binary JSON
        event = await next_event(ws)
        assert isinstance(event, ErrorEvent) and event.code == ErrorCode.MODEL_NOT_FOUND
        await ws.send(b"\x00\x9f\x92\x96 not json")  # garbage
        event = await next_event(ws)
        assert isinstance(event, ErrorEvent) and event.code == ErrorCode.INVALID_FRAME
        await ws.send(serialize(SessionUpdate(model=MODEL_NAME)))  # text
        await ws.send(serialize(InputAudioBufferCommit()).encode())
        await ws.send(serialize(InputAudioBufferAppend(b"\x00\x00" * 8000)))
        await ws.send(serialize(InputAudioBufferCommit(final=True)).encode())
        await until_done(ws)


async def test_fifty_concurrent_streams_are_served_or_refused_cleanly(
    whisper: WhisperServe,
) -> None:
    async def refused(ws: ClientConnection, event: Any) -> str:
        assert isinstance(event, ErrorEvent) and event.code == ErrorCode.SERVER_BUSY, event
        assert (await closed_with(ws))[0] == 1013
        return "refused"

    async def one(ws: ClientConnection, first: Any) -> str:
        if isinstance(first, ErrorEvent):  # the bridge's connection limit
            return await refused(ws, first)
        assert isinstance(first, SessionCreated)
        await ws.send(serialize(SessionUpdate(model=MODEL_NAME)))
        await ws.send(serialize(InputAudioBufferCommit()))
        await ws.send(serialize(InputAudioBufferAppend(b"\x00\x00" * 8000)))
        await ws.send(serialize(InputAudioBufferCommit(final=True)))
        event = await next_event(ws, within=120.0)
        if isinstance(event, ErrorEvent):  # the engine's own session limit
            return await refused(ws, event)
        while not isinstance(event, TranscriptionDone):
            assert isinstance(event, TranscriptionDelta)
            event = await next_event(ws, within=120.0)
        return "served"

    results = await held_together(whisper.serve.ws_url(), 50, one)
    assert results.count("served") >= 1
    assert results.count("refused") >= 50 - BRIDGE_LIMIT
    assert results.count("served") + results.count("refused") == 50
    assert whisper.serve.process.poll() is None
    assert whisper.serve.ping() == 200


async def test_an_idle_client_is_closed_after_the_idle_timeout(whisper: WhisperServe) -> None:
    async with session(whisper.serve.ws_url()) as ws:
        await ws.send(serialize(SessionUpdate(model=MODEL_NAME)))
        event = await next_event(ws, within=IDLE_TIMEOUT + WAIT)
        assert isinstance(event, ErrorEvent)
        assert event.code == ErrorCode.IDLE_TIMEOUT
        code, _reason = await closed_with(ws)
    assert code == 1008


async def test_an_engine_killed_mid_stream_gives_an_error_and_a_close(
    whisper: WhisperServe, clips: dict[str, Clip]
) -> None:
    """Last in the module: it ends the container."""
    serve = whisper.serve
    engine_pid = next(p for p in children_of(serve.process.pid) if p != serve.bridge_pid)
    async with session(serve.ws_url()) as ws:
        await ws.send(serialize(SessionUpdate(model=MODEL_NAME)))
        await ws.send(serialize(InputAudioBufferCommit()))
        await ws.send(serialize(InputAudioBufferAppend(speech(clips["jfk"])[:32000])))
        os.kill(engine_pid, signal.SIGKILL)
        event = await next_event(ws)
        while isinstance(event, TranscriptionDelta):
            event = await next_event(ws)
        assert isinstance(event, ErrorEvent)
        assert event.code == ErrorCode.UPSTREAM_UNAVAILABLE
        assert (await closed_with(ws))[0] == 1011
    assert serve.wait_exit() != 0
    await wait_gone(serve.bridge_pid, engine_pid)


def test_vllm_command_replaces_vllm_serve(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    env = {
        "SM_MODEL_DIR": str(tmp_path / "none"),
        "VLLM_COMMAND": f"{python} -m vllm.entrypoints.openai.api_server",
        "SM_VLLM_ENFORCE_EAGER": "true",
    }
    command = engine_command(ServeConfig.from_env(env), env)
    assert command[:5] == [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        DEFAULT_VLLM_MODEL,
    ]
    assert command[5:9] == ["--host", "127.0.0.1", "--port", "8081"]
    assert command[-1] == "--enforce-eager"
    env["VLLM_COMMAND"] = str(tmp_path / "missing") + " -m vllm"
    with pytest.raises(SetupError, match="VLLM_COMMAND"):
        engine_command(ServeConfig.from_env(env), env)
