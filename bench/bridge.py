"""What the SageMaker bridge costs per message: latency added and messages per second.

Three real processes on loopback: an echo upstream (sends ``session.created``, then returns
every frame as it came, so no model time is in the figures), one bridge process
(``python -m container.bridge``), and this client. The same client measures round trips to the
upstream directly and through the bridge, interleaved in blocks so that load from other work on
the machine falls on both alike; the difference is the bridge's hop.

    .venv/bin/python bench/bridge.py                 # defaults: 3000 round trips, 8 clients
    .venv/bin/python bench/bridge.py --bytes 3200    # PCM16 per append (3200 = 100 ms)

Targets: at most 1 ms added at p99 on loopback; at least 3000 messages/s through one bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402
from websockets.http11 import Request, Response  # noqa: E402

from bench.loopback import bridge_command, free_port, percentile, stop, wait_listening  # noqa: E402
from components.core.protocol import InputAudioBufferAppend, SessionCreated, serialize  # noqa: E402


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --------------------------------------------------------------------------- echo upstream


async def run_echo_upstream(port: int) -> None:
    """Stand-in engine: ``session.created``, then each frame straight back; ``/health`` 200."""

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            return connection.respond(200, "")
        return None

    async def echo(ws: ServerConnection) -> None:
        await ws.send(serialize(SessionCreated()))
        async for frame in ws:
            await ws.send(frame)

    async with serve(
        echo, "127.0.0.1", port, process_request=health, compression=None, max_size=None
    ):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()


# --------------------------------------------------------------------------- measurements


async def open_ws(url: str) -> Any:
    ws = await connect(url, compression=None, proxy=None, max_size=None, ping_interval=None)
    await ws.recv()  # session.created
    return ws


async def round_trips(url: str, payload: str, count: int) -> list[float]:
    """Seconds per send -> echo, one message in flight."""
    ws = await open_ws(url)
    try:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        await ws.close()


async def throughput(url: str, payload: str, clients: int, per_client: int, window: int) -> float:
    """Round trips per second with ``clients`` streams, each keeping ``window`` in flight."""

    async def one(ws: Any) -> None:
        credit = asyncio.Semaphore(window)

        async def reader() -> None:
            for _ in range(per_client):
                await ws.recv()
                credit.release()

        reading = asyncio.create_task(reader())
        for _ in range(per_client):
            await credit.acquire()
            await ws.send(payload)
        await reading

    sockets = [await open_ws(url) for _ in range(clients)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(ws) for ws in sockets))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    return clients * per_client / elapsed


async def measure(args: argparse.Namespace, direct: str, bridged: str) -> None:
    payload = serialize(InputAudioBufferAppend(b"\x01\x00" * (args.bytes // 2)))
    await round_trips(direct, payload, 200)  # warm both paths
    await round_trips(bridged, payload, 200)
    blocks = 10
    per_block = max(1, args.messages // blocks)
    direct_samples: list[float] = []
    bridged_samples: list[float] = []
    for _ in range(blocks):
        direct_samples += await round_trips(direct, payload, per_block)
        bridged_samples += await round_trips(bridged, payload, per_block)

    def ms(value: float) -> str:
        return f"{value * 1000:.3f} ms"

    d50, d99 = percentile(direct_samples, 50), percentile(direct_samples, 99)
    b50, b99 = percentile(bridged_samples, 50), percentile(bridged_samples, 99)
    print(f"message: input_audio_buffer.append, {len(payload)} bytes of JSON")
    print(f"round trips: {len(direct_samples)} direct, {len(bridged_samples)} through the bridge")
    print(
        f"  direct        p50 {ms(d50)}  p99 {ms(d99)}  mean {ms(statistics.mean(direct_samples))}"
    )
    print(
        f"  via bridge    p50 {ms(b50)}  p99 {ms(b99)}  mean {ms(statistics.mean(bridged_samples))}"
    )
    print(f"  added         p50 {ms(b50 - d50)}  p99 {ms(b99 - d99)}")
    print(f"  ratio         p50 {b50 / d50:.2f}x  p99 {b99 / d99:.2f}x")
    rate_direct = await throughput(direct, payload, args.clients, args.per_client, args.window)
    rate_bridge = await throughput(bridged, payload, args.clients, args.per_client, args.window)
    print(f"throughput, {args.clients} streams x {args.per_client} messages, window {args.window}:")
    print(f"  direct        {rate_direct:8.0f} round trips/s")
    print(
        f"  via bridge    {rate_bridge:8.0f} round trips/s "
        f"= {2 * rate_bridge:.0f} frames/s relayed by one bridge process"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="round trips per path")
    parser.add_argument("--bytes", type=int, default=3200, help="PCM16 bytes per append")
    parser.add_argument("--clients", type=int, default=8, help="streams for the throughput run")
    parser.add_argument("--per-client", type=int, default=2000, help="messages per stream")
    parser.add_argument("--window", type=int, default=16, help="messages in flight per stream")
    parser.add_argument("--echo-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_upstream:
        asyncio.run(run_echo_upstream(args.echo_upstream), loop_factory=_loop_factory())
        return 0

    up_port, bridge_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    up_url = f"ws://127.0.0.1:{up_port}/v1/realtime"
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--echo-upstream", str(up_port)], env=env, cwd=ROOT
    )
    bridge = subprocess.Popen(bridge_command(bridge_port, up_url), env=env, cwd=ROOT)
    try:
        wait_listening(up_port, upstream)
        wait_listening(bridge_port, bridge)
        load = os.getloadavg()
        cpus = os.cpu_count()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({cpus} CPUs)")
        asyncio.run(
            measure(
                args,
                up_url,
                f"ws://127.0.0.1:{bridge_port}/invocations-bidirectional-stream",
            ),
            loop_factory=_loop_factory(),
        )
        load = os.getloadavg()
        print(f"load average after:  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        stop(bridge)
        stop(upstream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
