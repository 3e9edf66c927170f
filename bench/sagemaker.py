"""What the SageMaker path adds per event, against a direct WebSocket to the same server.

Processes on loopback, all real: the engine server (``components.server.app``) running a fast echo
engine — one ``transcription.delta`` per audio chunk, at once, so no model time is in the
figures — the container's bridge (``python -m container.bridge``) in front of it, the local
SageMaker front (``python -m components.aws.local_front``, the stand-in for AWS's router) in front
of the bridge, and this client. The client measures, one event in flight, the time from
``send_audio`` to that chunk's delta:

* direct:     RealtimeWSBackend -> engine server
* SageMaker:  SageMakerBackend (AWS SDK, awscrt HTTP/2, TLS, SigV4) -> front -> bridge -> server

in alternating blocks, so that load from other work on the machine falls on both alike. It also
times opening a stream on each path.

    .venv/bin/python bench/sagemaker.py                   # 1000 events per path
    .venv/bin/python bench/sagemaker.py --events 3000 --bytes 3200

Target: at most 5 ms added at p50 on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.loopback import bridge_command, free_port, percentile, stop, wait_listening  # noqa: E402
from components.core.protocol import (  # noqa: E402
    TranscriptEvent,
    TranscriptionDelta,
    TranscriptionDone,
)

MODEL = "live-captions"


# --------------------------------------------------------------------------- the echo engine


class EchoEngine:
    """A stand-in for a model: one delta per audio chunk, immediately (no model time)."""

    name = "echo (benchmark)"
    model = MODEL
    max_sessions = 64

    async def transcribe(
        self, audio: AsyncIterator[np.ndarray], *, partials: bool = False
    ) -> AsyncIterator[TranscriptEvent]:
        count = 0
        async for _chunk in audio:
            count += 1
            yield TranscriptionDelta(delta=f"{count} ")
        yield TranscriptionDone(text=f"{count} chunks")

    async def aclose(self) -> None:
        return None


def serve_echo(port: int) -> None:
    """Child process: the real Realtime server over :class:`EchoEngine`."""
    from components.server.app import serve
    from components.server.state import ServerSettings

    settings = ServerSettings(port=port, served_model_name=MODEL, idle_timeout=600.0)
    asyncio.run(serve(EchoEngine(), settings, log_level="warning"))


# --------------------------------------------------------------------------- processes


def start(command: list[str], log: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_front(bridge_port: int, log: Any) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """The local front on a free port; returns it and the environment it prints."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "components.aws.local_front",
            "--container",
            f"http://127.0.0.1:{bridge_port}",
            "--port",
            "0",
            "--endpoint",
            MODEL,
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=log,
    )
    exports: dict[str, str] = {}
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.decode().rstrip("\n")
        if m := re.match(r"^export (\w+)=(.*)$", line):
            exports[m[1]] = m[2]
        if line.startswith("Then, for example"):
            break
    if "SAGEMAKER_ENDPOINT_URL" not in exports:
        stop(process)
        raise SystemExit("the local SageMaker front did not start")
    return process, exports


# --------------------------------------------------------------------------- measurements


class Path_:
    """One open stream and its iterator, measured one event at a time."""

    def __init__(self, name: str, backend: Any) -> None:
        self.name = name
        self.backend = backend
        self.stream: Any = None
        self.events: Any = None
        self.samples: list[float] = []
        self.opens: list[float] = []

    async def open(self) -> None:
        started = time.perf_counter()
        self.stream = await self.backend.open()
        self.opens.append(time.perf_counter() - started)
        self.events = aiter(self.stream)

    async def round_trips(self, chunk: bytes, count: int, *, record: bool = True) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await self.stream.send_audio(chunk)
            while not isinstance(await anext(self.events), TranscriptionDelta):
                pass
            if record:
                self.samples.append(time.perf_counter() - started)

    async def close(self) -> None:
        await self.stream.finish()
        async for event in self.events:
            if isinstance(event, TranscriptionDone):
                break
        await self.stream.cancel()

    async def time_opens(self, count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            stream = await self.backend.open()
            self.opens.append(time.perf_counter() - started)
            await stream.cancel()


async def measure(args: argparse.Namespace, server_port: int, env: dict[str, str]) -> None:
    from components.backends.sagemaker.client import SageMakerBackend
    from components.backends.websocket import RealtimeWSBackend

    os.environ.update(env)
    os.environ.update(AWS_EC2_METADATA_DISABLED="true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    direct = Path_("direct WebSocket", RealtimeWSBackend(f"ws://127.0.0.1:{server_port}"))
    sagemaker = Path_("SageMaker path", SageMakerBackend(MODEL))
    chunk = (np.sin(np.arange(args.bytes // 2)) * 3000).astype("<i2").tobytes()
    for path in (direct, sagemaker):
        await path.open()
        await path.round_trips(chunk, 100, record=False)  # warm up
    blocks = 10
    per_block = max(1, args.events // blocks)
    for _ in range(blocks):
        await direct.round_trips(chunk, per_block)
        await sagemaker.round_trips(chunk, per_block)
    await direct.close()
    await sagemaker.close()
    await direct.time_opens(args.opens)
    await sagemaker.time_opens(args.opens)

    def ms(value: float) -> str:
        return f"{value * 1000:7.3f} ms"

    d50, d99 = percentile(direct.samples, 50), percentile(direct.samples, 99)
    s50, s99 = percentile(sagemaker.samples, 50), percentile(sagemaker.samples, 99)
    print(
        f"event: input_audio_buffer.append of {args.bytes} bytes of PCM16 -> its "
        "transcription.delta, one in flight"
    )
    print(f"events: {len(direct.samples)} per path, in {blocks} alternating blocks")
    for path, p50, p99 in ((direct, d50, d99), (sagemaker, s50, s99)):
        mean = statistics.mean(path.samples)
        print(f"  {path.name:18} p50 {ms(p50)}  p99 {ms(p99)}  mean {ms(mean)}")
    print(f"  {'added':18} p50 {ms(s50 - d50)}  p99 {ms(s99 - d99)}")
    print(f"  {'ratio':18} p50 {s50 / d50:7.2f}x    p99 {s99 / d99:7.2f}x")
    print(f"stream open (first, then median of {args.opens}):")
    for path in (direct, sagemaker):
        rest = statistics.median(path.opens[1:]) if len(path.opens) > 1 else float("nan")
        print(f"  {path.name:18} first {ms(path.opens[0])}  then {ms(rest)}")
    verdict = "met" if (s50 - d50) <= 0.005 else "NOT met"
    print(f"target (added p50 <= 5 ms): {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000, help="events per path")
    parser.add_argument("--bytes", type=int, default=3200, help="PCM16 bytes per append")
    parser.add_argument("--opens", type=int, default=10, help="stream opens timed per path")
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    server_port, bridge_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryFile() as log:
        try:
            processes.append(
                start([sys.executable, __file__, "--serve-echo", str(server_port)], log)
            )
            wait_listening(server_port, processes[-1], timeout=60.0)
            upstream = f"ws://127.0.0.1:{server_port}/v1/realtime"
            processes.append(start(bridge_command(bridge_port, upstream), log))
            wait_listening(bridge_port, processes[-1], timeout=60.0)
            front, env = start_front(bridge_port, log)
            processes.append(front)
            asyncio.run(measure(args, server_port, env))
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            for process in reversed(processes):
                stop(process)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
